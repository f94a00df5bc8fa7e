"""The ``primaps`` command (also ``python -m primaps``).

Subcommands: demo, extract, pseudo, fit, evaluate, run, config.  Exit codes:
0 success; 2 usage errors (bad arguments; a config that cannot be read,
parsed or used; a run folder whose checkpoint belongs to another config);
1 failures of a stage (missing, unreadable or inconsistent inputs, a run
folder another process is writing, a disk that is full or read-only);
130 interrupted (Ctrl-C).  Each with one line on stderr naming the stage
and the file (the traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .config import Config, ConfigError, dumps, load_config, packaged_configs

__all__ = ["main"]

PROG = "primaps"


class UsageError(Exception):
    """Exit code 2."""


def _common(p: argparse.ArgumentParser, out_default: Optional[str] = None) -> None:
    g = p.add_argument_group("configuration")
    g.add_argument("-c", "--config", metavar="NAME|FILE",
                   help="a packaged config (see 'primaps config --list') or a TOML file")
    g.add_argument("-s", "--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE",
                   help="override one config field (repeatable; applied after the file, "
                        "in order), e.g. --set em.epochs=20")
    g.add_argument("-o", "--out", help="run folder (run.out)"
                   + (f"; default {out_default}" if out_default else ""))
    g.add_argument("--features", metavar="RUN",
                   help="run.features: use the features, masks and labels of the run folder "
                        "RUN (train again with another seed or config without extracting)")
    g.add_argument("--seed", type=int, help="run.seed")
    g.add_argument("--threads", type=int, help="run.threads (0: all cores)")


def _output_flags(p: argparse.ArgumentParser, top: bool) -> None:
    d = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bars or messages",
                   **d)
    g.add_argument("--json", action="store_true",
                   help="print the result as one JSON document on stdout", **d)
    g.add_argument("--debug", action="store_true", help="show tracebacks of failures", **d)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="PriMaPs pseudo labels, PriMaPs-EM prototypes and Hungarian-matched "
                    "evaluation (unsupervised semantic segmentation).",
        epilog="Run 'primaps demo' for the whole pipeline on generated data.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"primaps {__version__}")
    _output_flags(p, top=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    specs = [
        ("demo", "the whole pipeline on generated street scenes (no download)"),
        ("extract", "data set folders -> feature stores (through the backbone)"),
        ("pseudo", "feature store -> PriMaPs masks stored beside it"),
        ("fit", "PCA init, K-means warm-up and EM -> checkpoint"),
        ("evaluate", "checkpoint + validation features and labels -> report"),
        ("run", "extract, pseudo, fit and evaluate from one config"),
        ("config", "print the effective config (--dump) or the packaged ones (--list)"),
    ]
    for name, help_ in specs:
        sp = sub.add_parser(name, help=help_, description=help_)
        _output_flags(sp, top=False)
        if name == "config":
            sp.add_argument("--list", action="store_true", help="list the packaged configs")
            sp.add_argument("--dump", action="store_true",
                            help="print the effective config as TOML (the default)")
        _common(sp, "primaps-demo" if name == "demo" else None)
        if name in ("fit", "run", "demo"):
            sp.add_argument("--restart", action="store_true",
                            help="train again from scratch, replacing the checkpoint of an "
                                 "earlier run (by default a run of the same config resumes "
                                 "from it, and a different config is an error)")
        if name == "evaluate":
            sp.add_argument("--checkpoint",
                            help="score this checkpoint only (default: the models of RUN.OUT "
                                 "trained on the current config); the report goes into RUN.OUT")
            sp.add_argument("--probe", action="store_true",
                            help="also train and score the linear probe (eval.probe)")
    return p


def effective_config(args: argparse.Namespace) -> Config:
    """Defaults < config file (demo: the packaged demo) < flags < --set."""
    name = args.config or ("demo" if args.command == "demo" else None)
    flags: List[str] = []
    if args.out is not None:
        flags.append(f"run.out={json.dumps(args.out)}")
    elif args.command == "demo" and args.seed and not args.config:
        # the demo's data depend on the seed: each seed gets its own folder
        flags.append(f"run.out={json.dumps(f'primaps-demo-seed{args.seed}')}")
    if getattr(args, "features", None) is not None:
        flags.append(f"run.features={json.dumps(args.features)}")
    if args.seed is not None:
        flags.append(f"run.seed={args.seed}")
    if args.threads is not None:
        flags.append(f"run.threads={args.threads}")
    if getattr(args, "probe", False):
        flags.append("eval.probe=true")
    return load_config(name, flags + list(args.overrides))


def rerun_options(args: argparse.Namespace) -> List[str]:
    """The configuration options of this command line, for the commands
    that messages suggest."""
    opts: List[str] = []
    name = args.config or ("demo" if args.command == "demo" else None)
    if name:
        opts += ["-c", name]
    for flag, value in (("--out", args.out), ("--features", args.features),
                        ("--seed", args.seed), ("--threads", args.threads)):
        if value is not None:
            opts += [flag, str(value)]
    for o in args.overrides:
        opts += ["--set", o]
    return opts


# ------------------------------------------------------------------- words


def _points(a: float, b: float) -> str:
    d = a - b
    return f"{abs(d):.1f} points {'higher' if d >= 0 else 'lower'}"


def demo_words(cfg: Config, res: Dict[str, Any]) -> str:
    """What the demo's numbers show, and no more."""
    t = res["evaluate"]["table"]
    em, km = t["em_teacher"], t["kmeans"]
    lines = [
        "",
        f"PriMaPs-EM (teacher) against the K-means baseline trained for the same "
        f"{cfg.em.warmup_epochs + cfg.em.epochs} epochs: Acc {_points(em['acc'], km['acc'])}, "
        f"mIoU {_points(em['miou'], km['miou'])}.",
    ]
    if "nomask_teacher" in t:
        nm = t["nomask_teacher"]
        d = em["miou"] - nm["miou"]
        if abs(d) < 1.0 and abs(em["acc"] - nm["acc"]) < 1.0:
            lines.append("EM without masks (pseudo label = the teacher's own argmax) does about "
                         "as well here, so these numbers show that PriMaPs-EM beats K-means, "
                         "not that the masks cause the gain.")
        else:
            lines.append(
                f"EM without masks (pseudo label = the teacher's own argmax) scores "
                f"{nm['acc']:.1f} / {nm['miou']:.1f}: with PriMaPs masks the teacher is "
                f"Acc {_points(em['acc'], nm['acc'])}, mIoU {_points(em['miou'], nm['miou'])} "
                f"on this seed.")
    rep = res["evaluate"]["reports"]["em_teacher"]
    low = [n for n, v in zip(rep["class_names"], rep["iou"]) if v is not None and v < 20]
    if low:
        lines.append(f"Classes below 20 % IoU for the teacher: {', '.join(low)}.")
    if "probe" in t:
        lines.append(f"The supervised linear probe on the same features, an upper bound, "
                     f"scores {t['probe']['acc']:.1f} / {t['probe']['miou']:.1f}.")
    d = cfg.data
    shape = " x ".join(map(str, res["extract"]["train"]["feature_shape"]))
    lines += [
        "",
        f"Data: generated street scenes (synthetic, seed {cfg.run.seed}), {d.n_train} train / "
        f"{d.n_val} val images, features {shape}, labels "
        f"{d.size} x {d.size}. Scores: Acc / mIoU in %, one Hungarian matching over the "
        f"validation set at label resolution, without CRF (there are no images).",
    ]
    return "\n".join(lines)


def _files(folder: Path, names: Sequence[str]) -> str:
    return "\n".join(f"  {folder / n}" for n in names if (folder / n).exists())


# ----------------------------------------------------------------- commands


def cmd_config(args: argparse.Namespace, cfg: Optional[Config]) -> Any:
    if args.list:
        names = packaged_configs()
        if args.json:
            return names
        width = max(len(n) for n in names)
        return "\n".join(f"{n:<{width}}  {d}" for n, d in names.items())
    assert cfg is not None
    return cfg.to_dict() if args.json else dumps(cfg).rstrip("\n")


def dispatch(args: argparse.Namespace) -> Any:
    from . import pipeline
    from ._runtime import set_num_threads

    if args.command == "config" and args.list:
        return cmd_config(args, None)
    cfg = effective_config(args)
    if args.command == "config":
        return cmd_config(args, cfg)
    if cfg.run.threads:
        set_num_threads(cfg.run.threads)
    ui = pipeline.UI(quiet=args.quiet, messages=not args.json, options=rerun_options(args))
    cfg_dir = Path(args.config).expanduser().resolve().parent \
        if args.config and Path(args.config).expanduser().is_file() else None
    t = time.perf_counter()
    if args.command == "demo":
        if cfg.data.dataset != "street":
            raise ConfigError("the demo runs on data.dataset = \"street\"; use 'primaps run' "
                              "for other data")
        res = pipeline.run(cfg, ui, restart=args.restart)
    elif args.command == "run":
        res = pipeline.run(cfg, ui, cfg_dir, restart=args.restart)
    elif args.command == "extract":
        res = pipeline.extract(cfg, ui, cfg_dir)
    elif args.command == "pseudo":
        res = pipeline.pseudo(cfg, ui)
    elif args.command == "fit":
        res = pipeline.fit(cfg, ui, restart=args.restart)
    else:
        res = pipeline.evaluate(cfg, ui, Path(args.checkpoint) if args.checkpoint else None)
    res = dict(res)
    res["seconds_total"] = round(time.perf_counter() - t, 3)
    res["out"] = str(Path(cfg.run.out))
    if args.json:
        return res
    if args.quiet and args.command in ("extract", "pseudo", "fit"):
        return None  # the files are the result; -q prints nothing
    return _text(args.command, cfg, res)


def _text(command: str, cfg: Config, res: Dict[str, Any]) -> str:
    from .pipeline import format_table
    from .metrics import EvaluationReport

    out = Path(cfg.run.out)
    ev = res.get("evaluate", res if command == "evaluate" else None)
    lines: List[str] = []
    if ev is not None:
        reports = {k: EvaluationReport.from_dict(v) for k, v in ev["reports"].items()}
        lines.append(format_table(reports))
        if command == "demo":
            lines.append(demo_words(cfg, res))
        lines += ["", f"Files in {out}:",
                  _files(out, ["report.txt", "metrics.json", "panels.png", "confusion.png",
                               "em.npz", "kmeans.npz", "em_no_masks.npz", "config.toml",
                               "build_info.json"])]
    else:
        lines += _summary_lines(command, res, out)
    lines.append(f"Done in {res['seconds_total']:.1f} s.")
    return "\n".join(lines)


def _summary_lines(command: str, res: Dict[str, Any], out: Path) -> List[str]:
    """What extract, pseudo and fit did, in a few lines (--json has it all)."""
    if command == "extract":
        lines = []
        for split in ("train", "val"):
            r = res.get(split)
            if r:
                shape = " x ".join(map(str, r.get("feature_shape", [])))
                lines.append(f"extract: {split}: {r['images']} images, features {shape}")
        return lines + [f"Feature stores in {out / 'features'}."]
    if command == "pseudo":
        return [f"pseudo: masks of {res['images']} images ({res['reused']} reused), "
                f"{res['masks_per_image']} masks per image at {res['label_size'][0]} x "
                f"{res['label_size'][1]}; {res['refinement']}.",
                f"Masks in {out / 'features' / 'train'}."]
    lines = []
    for key, name, fname in (("em", "PriMaPs-EM", "em.npz"), ("kmeans", "K-means baseline",
                                                              "kmeans.npz"),
                             ("em_no_masks", "EM without masks", "em_no_masks.npz")):
        r = res.get(key)
        if not r:
            continue
        loss = (f", focal loss {r['focal_loss_first']:.4f} -> {r['focal_loss_last']:.4f}"
                if "focal_loss_last" in r else
                f", K-means loss {r['kmeans_loss_last']:.4f}" if "kmeans_loss_last" in r else "")
        lines.append(f"fit: {name}: {r['warmup_epochs']} K-means + {r['em_epochs']} EM epochs "
                     f"({r['em_steps']} EM steps){loss} -> {out / fname}")
    if res.get("resumed_from_epoch"):
        lines.append(f"(resumed from epoch {res['resumed_from_epoch']})")
    return lines


def _fail(msg: str, code: int) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit with 2 here
    for flag in ("quiet", "json", "debug"):
        if not hasattr(args, flag):
            setattr(args, flag, False)
    try:
        result = dispatch(args)
    except ConfigError as e:
        if args.debug:
            raise
        stage = getattr(e, "primaps_stage", None)
        return _fail(f"{stage}: {e}" if stage else str(e), 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Exception as e:  # one clear line; the traceback with --debug
        if args.debug:
            raise
        msg = str(e) or type(e).__name__
        if isinstance(e, (KeyError,)) and e.args:
            msg = str(e.args[0])
        elif isinstance(e, OSError) and e.strerror:
            msg = e.strerror
            if e.filename and str(e.filename) not in msg:
                msg += f": {e.filename}"
        stage = getattr(e, "primaps_stage", None)
        return _fail(f"{stage}: {msg}" if stage else msg, 1)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif isinstance(result, str):
        print(result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
