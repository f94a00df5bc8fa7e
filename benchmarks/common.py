"""Shared helpers of the benchmark programs: timing, machine facts, records.

Benchmarks are programs, not tests: each runs our core and the alternative a
user would otherwise run on the same inputs in the same process, prints the
ratio and appends a JSON record to benchmarks/out/<name>.json.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import primaps

OUT = Path(__file__).resolve().parent / "out"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """The facts a reader needs to compare a record with their machine."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "primaps": primaps.build_info(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def timeit(fn, repeat: int = 5, warmup: int = 1, min_time: float = 0.0) -> list[float]:
    """Wall times of `repeat` calls of fn() after `warmup` untimed calls.
    With min_time, keep calling until that much time has been spent."""
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - t_start) < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(xs) -> float:
    return float(statistics.median(xs))


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sgemm_peak_gflops(threads: int, n: int = 2048, repeat: int = 5) -> float:
    """Measured float32 GEMM rate of this machine (NumPy's BLAS, `threads`
    threads): the roofline the kernels' FLOP rates are set against."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a test extra
        threadpool_limits = None
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if threadpool_limits is not None:
        with threadpool_limits(limits=threads, user_api="blas"):
            t = median(timeit(lambda: a @ b, repeat=repeat))
    else:
        t = median(timeit(lambda: a @ b, repeat=repeat))
    return 2.0 * n**3 / t / 1e9


def write_record(name: str, record: dict) -> Path:
    """Append one JSON record (with the machine facts) to out/<name>.json,
    atomically (write a temp file, fsync, rename)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    records = []
    if path.exists():
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError):
            records = []
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **record}
    records.append(record)
    fd, tmp = tempfile.mkstemp(dir=OUT, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(records, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    print(json.dumps(record))
    return path
