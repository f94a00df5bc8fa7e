"""Fuzzing of every public function of primaps and every entry of
primaps._core (the registry in tests/fuzz/registry.py).

Each case is clean (a valid call in an awkward representation: it must
succeed with the right shape, dtype and values), holds one fault (it must
raise the exception that fault documents) or is chaos (any documented
exception, or a correct result).  A crash ends the run; a hang is caught by
a watchdog that dumps the stacks and exits.

    pytest tests/test_fuzz.py                           # CI size
    PRIMAPS_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py  # a long run

Cases per function and outcome are printed at the end of the run and
written to $PRIMAPS_FUZZ_REPORT (default: primaps-fuzz-report.json in the
temporary folder).
"""

from __future__ import annotations

import faulthandler
import gc
import os
import sys
import warnings
from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import primaps
from primaps import _core
from fuzz.arrays import Case
from fuzz.registry import REGISTRY, covered

# outcome counts per entry: {"ok": n, "TypeError": n, ...}; read by conftest
COUNTS: dict = defaultdict(Counter)
FAULTS: dict = defaultdict(Counter)

# A single call that runs this long has hung (the largest fuzz case takes
# well under a second): dump every thread's stack and end the process.
HANG_SECONDS = 300

NOT_FUZZED = {
    "__version__": "a string",
    "datasets": "loaders read dataset folders; their bad files are tested in test_datasets.py",
}


def n_examples(entry) -> int:
    env = os.environ.get("PRIMAPS_FUZZ_EXAMPLES")
    return int(env) if env else entry.examples


def test_registry_covers_every_entry_point():
    """Every function of _core and every public name of primaps has an entry."""
    core = {f"_core.{n}" for n in dir(_core) if not n.startswith("_") and callable(getattr(_core, n))}
    public = set(primaps.__all__) - set(NOT_FUZZED)
    missing = sorted((core | public) - covered())
    assert not missing, f"no fuzz registry entry covers {missing}"


@pytest.mark.parametrize("entry", REGISTRY, ids=[e.name for e in REGISTRY])
def test_fuzz(entry):
    @settings(max_examples=n_examples(entry), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        case = Case(data.draw)
        run, check = entry.build(case)
        allowed, may_succeed = case.expected(entry.nonfinite_raises)
        allowed = tuple(allowed) + tuple(entry.raises)
        refs = [sys.getrefcount(a) for a in case.tracked]
        faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
        try:
            with warnings.catch_warnings():
                # NumPy's own casting warnings on garbage inputs are not the subject
                warnings.simplefilter("ignore", RuntimeWarning)
                result = run()
        except allowed as exc:
            assert str(exc), f"{type(exc).__name__} without a message"
            outcome = type(exc).__name__
        except Exception as exc:
            raise AssertionError(
                f"{entry.name}: faults {case.faults} raised {type(exc).__name__}: {exc}; "
                f"documented: {[e.__name__ for e in allowed] or 'success'}") from exc
        else:
            assert may_succeed, (
                f"{entry.name}: faults {case.faults} should raise "
                f"{[e.__name__ for e in allowed]}, but the call succeeded")
            check(result)
            outcome = "ok"
            del result
        finally:
            faulthandler.cancel_dump_traceback_later()
        # no reference to an input is gained or lost, on success or error
        after = [sys.getrefcount(a) for a in case.tracked]
        if after != refs:
            gc.collect()
            after = [sys.getrefcount(a) for a in case.tracked]
        assert after == refs, f"{entry.name}: reference counts of the inputs {refs} -> {after}"
        COUNTS[entry.name][outcome] += 1
        for _, kind in case.faults:
            FAULTS[entry.name][kind] += 1

    one()
    assert sum(COUNTS[entry.name].values()) > 0


def fuzz_report() -> dict:
    """{entry: {"cases": n, "outcomes": {...}, "faults": {...}}}."""
    covers = {e.name: list(e.covers) for e in REGISTRY}
    return {name: {"cases": sum(c.values()), "outcomes": dict(c), "faults": dict(FAULTS[name]),
                   "covers": covers.get(name, [name])}
            for name, c in sorted(COUNTS.items())}

