"""Build and run the C tests of the core, with no Python in the kernels.

    python tests/c/run.py              # -O2 build
    python tests/c/run.py --sanitize   # AddressSanitizer + UBSan
    python tests/c/run.py --valgrind   # under valgrind memcheck

Every tests/c/test_*.c is compiled together with the kernel sources of csrc/
(the kernels; the bindings of csrc/bind/ are not linked) and linked against the OpenBLAS and oneDNN of the current
environment, found as setup.py finds them.  Exits non-zero on any failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
import setup as build  # noqa: E402  (setup.py guards setup() under __main__)

WARN = build.WARNINGS + ["-Werror"]


def kernel_sources() -> list[str]:
    return sorted(str(p) for p in (REPO / "csrc").glob("*.c"))  # the bindings are in csrc/bind/


def variants(src: Path) -> list[list[str]]:
    """The builds of a test: the default one, and one more per line
    "variant: -DNAME ..." in its source (e.g. a portable code path)."""
    out = [[]]
    for line in src.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("* variant:"):
            out.append(line.split("variant:", 1)[1].split())
    return out


def compile_test(src: Path, out: Path, sanitize: bool, defines: list[str] = ()) -> None:
    cfg = build.native_config()
    cmd = ["gcc", "-std=c99", "-fopenmp", "-g", "-O1" if sanitize else "-O2", *defines]
    cmd += WARN + ["-I", str(REPO / "csrc"), "-I", str(REPO / "tests" / "c")]
    cmd += [f"-I{d}" for d in cfg["include_dirs"]]
    if sanitize:
        cmd += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                "-fno-sanitize-recover=undefined"]
    cmd += [str(src)] + kernel_sources() + ["-o", str(out)]
    cmd += [f"-L{d}" for d in cfg["library_dirs"]]
    cmd += [f"-Wl,-rpath,{d}" for d in cfg["library_dirs"]]
    cmd += [f"-l{lib}" for lib in cfg["libraries"]] + ["-lm"]
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sanitize", action="store_true", help="ASan + UBSan build")
    ap.add_argument("--valgrind", action="store_true", help="run under valgrind memcheck")
    ap.add_argument("tests", nargs="*", help="test sources (default: all)")
    args = ap.parse_args(argv)
    tests = [Path(t) for t in args.tests] or sorted((REPO / "tests" / "c").glob("test_*.c"))
    env = dict(os.environ)
    if args.sanitize:
        supp = REPO / "tests" / "c" / "lsan.supp"
        env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:halt_on_error=1"
        env["LSAN_OPTIONS"] = f"suppressions={supp}:print_suppressions=0"
        env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    if args.valgrind:
        env.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
        env.setdefault("OPENBLAS_CORETYPE", "Haswell")
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in tests:
            for k, defines in enumerate(variants(src)):
                exe = Path(tmp) / f"{src.stem}{'_' + str(k) if k else ''}"
                compile_test(src, exe, args.sanitize, defines)
                cmd = [str(exe)]
                if args.valgrind:
                    cmd = ["valgrind", "--error-exitcode=3", "--leak-check=full",
                           "--show-possibly-lost=no", "--errors-for-leak-kinds=definite",
                           "-q"] + cmd
                print("running", " ".join(cmd), *defines, flush=True)
                if subprocess.run(cmd, env=env).returncode != 0:
                    failed.append(" ".join([src.name, *defines]))
    if failed:
        print("FAILED:", ", ".join(failed))
        return 1
    print(f"all {len(tests)} C test programs passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
