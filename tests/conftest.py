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
