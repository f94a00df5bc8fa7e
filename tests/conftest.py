"""Shared fixtures.

Sample data (../shared/data) is found at $PRIMAPS_TEST_DATA, else at
../shared/data from the repository root.  It is read-only: tests copy what
they write next to into a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import primaps

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    env = os.environ.get("PRIMAPS_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.fail(
            f"sample data not found at {root}; set PRIMAPS_TEST_DATA to the "
            "folder that holds cityscapes/, potsdam/, ..."
        )
    return root


@pytest.fixture
def threads():
    """Set the thread count inside a test; restored afterwards."""
    before = primaps.get_num_threads()
    yield primaps.set_num_threads
    primaps.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def torch_or_skip():
    """The torch module, or a skip when the optional extra is absent."""
    return pytest.importorskip("torch", reason="torch is an optional extra")


def pytest_terminal_summary(terminalreporter):
    """Fuzz cases per function and outcome (tests/test_fuzz.py), printed and
    written to $PRIMAPS_FUZZ_REPORT (default: the temporary folder)."""
    import json
    import sys
    import tempfile

    fuzz = sys.modules.get("test_fuzz")
    report = fuzz.fuzz_report() if fuzz else {}
    if not report:
        return
    path = os.environ.get("PRIMAPS_FUZZ_REPORT") or os.path.join(
        tempfile.gettempdir(), "primaps-fuzz-report.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    tr = terminalreporter
    tr.section("fuzz cases per function")
    for name, r in report.items():
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))
        tr.write_line(f"{name:34s} {r['cases']:6d}  ({outcomes})")
    tr.write_line(f"total {sum(r['cases'] for r in report.values())} cases; written to {path}")
