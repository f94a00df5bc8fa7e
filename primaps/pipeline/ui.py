"""Terminal output of the stages: messages, progress bars, the command
lines that error messages suggest, and the stage decorator."""

from __future__ import annotations

import functools
import shlex
import sys
from typing import Any, Optional, Sequence

from ..config import Config


class PipelineError(RuntimeError):
    """A stage cannot run: missing inputs, inconsistent files."""


def stage(name: str):
    """Decorate a stage: an exception leaving it records the stage's name
    (``exc.primaps_stage``, the first stage it leaves) for the message."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                if not hasattr(e, "primaps_stage"):
                    try:
                        e.primaps_stage = name  # type: ignore[attr-defined]
                    except AttributeError:  # pragma: no cover - exceptions without a dict
                        pass
                raise
        return wrapper
    return deco


class UI:
    """Messages to stderr and tqdm progress bars (images/s), or silence:
    bars only on a terminal (stderr a tty), never with `quiet`."""

    def __init__(self, quiet: bool = False, messages: bool = True,
                 options: Optional[Sequence[str]] = None):
        self.quiet = quiet
        self.messages = messages and not quiet
        # the configuration options of the command line (-c, --out, --set,
        # ...): what a suggested command repeats
        self.options = list(options) if options is not None else None

    def command(self, stage: str, cfg: Config, *extra: str) -> str:
        """The command line that runs `stage` on the same config."""
        opts = self.options if self.options is not None else ["--out", str(cfg.run.out)]
        return shlex.join(["primaps", stage, *opts, *extra])

    def info(self, msg: str) -> None:
        if self.messages:
            print(msg, file=sys.stderr, flush=True)

    @property
    def bars(self) -> bool:
        """Whether progress bars are drawn."""
        return not self.quiet and _is_tty(sys.stderr)

    def progress(self, total: Optional[int], desc: str):
        from .._training import progress_bar

        return progress_bar(total, desc, self.bars, "img")


def _is_tty(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False
