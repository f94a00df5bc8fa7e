"""Run the Python test suite against an ASan + UBSan build of the extension.

    python tests/run_asan.py [pytest options] [test paths (default: tests/)]

Builds the package with PRIMAPS_SANITIZE=1 into a temporary folder (the
environment's own install is left alone), puts that folder first on
PYTHONPATH, preloads the compiler's AddressSanitizer runtime (Python itself
is not instrumented) and runs pytest on tests/ without the tests marked
``rss`` (they assert on resident memory, which ASan's quarantine and shadow
memory inflate) and ``docs`` (the README and notebooks executed, over code
the other tests cover); both run in the normal test run.  Leak detection is off:
CPython keeps its interned objects and arenas until exit, which LeakSanitizer
would report.  UBSan stops at the first error.  Exits with pytest's status.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _gcc_file(name: str) -> str:
    out = subprocess.run(["gcc", f"-print-file-name={name}"], check=True,
                         capture_output=True, text=True).stdout.strip()
    path = os.path.realpath(out)
    if not os.path.isfile(path):
        sys.exit(f"run_asan: {name} was not found (gcc says {out!r})")
    return path


def sanitizer_runtime() -> str:
    """LD_PRELOAD for the extension's libasan.  libstdc++ is preloaded with
    it: ASan's __cxa_throw interceptor must find the real one at start-up,
    or the first C++ exception of another extension (matplotlib's ft2font
    throws one on import) stops the process in a CHECK failure."""
    return " ".join([_gcc_file("libasan.so"), _gcc_file("libstdc++.so")])


def _setuptools_major() -> int:
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0])
    except Exception:
        return 0


def build(target: Path) -> None:
    env = dict(os.environ, PRIMAPS_SANITIZE="1")
    with tempfile.TemporaryDirectory() as src:
        # A copy of the sources: the build must not leave files in the repository.
        shutil.copytree(REPO, src, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".venv*", ".git", "build", "*.so", "__pycache__", ".hypothesis", "benchmarks"))
        # the environment's own build tools when they are new enough (no
        # download), else pip's isolated build
        isolation = [] if _setuptools_major() < 77 else ["--no-build-isolation"]
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation,
                        "--target", str(target), src],
                       check=True, env=env)


def main(argv: list[str]) -> int:
    runtime = sanitizer_runtime()
    with tempfile.TemporaryDirectory(prefix="primaps-asan-") as tmp:
        target = Path(tmp) / "site"
        t0 = time.time()
        build(target)
        print(f"run_asan: sanitized build in {time.time() - t0:.0f} s", flush=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(target)] + [p for p in [env.get("PYTHONPATH")] if p])
        env["LD_PRELOAD"] = runtime
        env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
        # 200 fuzz cases per entry under the sanitizers (500 in the plain run)
        env.setdefault("PRIMAPS_FUZZ_EXAMPLES", "200")
        # pytest's own script (not python -m pytest, which would put the
        # source tree, without the sanitized build, first on sys.path)
        pytest = [sys.executable, "-c", "import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))"]
        # tests that measure resident memory are deselected: ASan's
        # quarantine and shadow memory make RSS meaningless; so are the
        # executions of the README and the notebooks (documentation checks
        # over the code paths the other tests run here)
        paths = [str(Path(a).resolve()) for a in argv if not a.startswith("-") and Path(a.split("::")[0]).exists()]
        opts = [a for a in argv if a.startswith("-") or not Path(a.split("::")[0]).exists()]
        cmd = pytest + ["-p", "no:cacheprovider", "-m", "not rss and not docs"] + opts + (paths or [str(REPO / "tests")])
        t0 = time.time()
        rc = subprocess.run(cmd, env=env, cwd=tmp).returncode
        print(f"run_asan: pytest under ASan + UBSan finished in {time.time() - t0:.0f} s "
              f"with status {rc}", flush=True)
        return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
