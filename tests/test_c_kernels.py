"""The C test programs of tests/c (kernels called with no Python), built
-O2 here; .ci/run also runs them under ASan + UBSan."""

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parent / "c" / "run.py"


def test_c_programs_pass():
    res = subprocess.run([sys.executable, str(RUN)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "passed" in res.stdout
