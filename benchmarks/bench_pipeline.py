"""Pipeline benchmark: a Cityscapes-sized run through the CLI's own stages.

    flock /tmp/primaps-cpu.lock python benchmarks/bench_pipeline.py [--scale 0.1] [--epochs 50]

Data: 2975 train and 500 val images (times --scale) of (384, 40, 40) float16
DINO-shaped synthetic features (primaps.datasets.synthetic.region_features,
27 classes) in feature stores, labels at 320 x 320.  Stages, as `primaps
pseudo`, `primaps fit` and `primaps evaluate` run them (primaps.pipeline):
PriMaPs masks at 320 x 320, PCA init, 2 K-means warm-up epochs, --epochs EM
epochs (batches of 32, streamed from the store shard window by shard
window), evaluation of teacher and student.  Reports the wall time and the
peak RSS of every stage (the peak is reset between stages through
/proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_record  # noqa: E402

import primaps  # noqa: E402
from primaps import pipeline  # noqa: E402
from primaps.config import load_config  # noqa: E402
from primaps.datasets.synthetic import region_features  # noqa: E402


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_split(cfg, split: str, n: int, seed: int, shard: int = 128) -> None:
    """Features in a store and labels (class blocks upsampled 8x) beside it."""
    paths = pipeline.Paths(cfg)
    labels = np.empty((n, 320, 320), np.uint8)
    ids = [f"{split}_{i:05d}" for i in range(n)]
    with primaps.FeatureStore(paths.store(split), dtype="float16", backbone="synthetic") as st:
        for s in range(0, n, shard):
            b = min(shard, n - s)
            d = region_features((384, 40, 40), batch=b, n_classes=27, n_regions=8,
                                seed=seed * 1000 + s)
            st.append(ids[s:s + b], d.features)
            labels[s:s + b] = np.repeat(np.repeat(d.classes, 8, 1), 8, 2)
    pipeline.save_labels(paths.labels(split), ids, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the images")
    ap.add_argument("--epochs", type=int, default=50, help="EM epochs")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--keep", help="folder for the run (default: a temporary one)")
    args = ap.parse_args()
    n_train = max(32, round(2975 * args.scale))
    n_val = max(8, round(500 * args.scale))
    if args.threads:
        primaps.set_num_threads(args.threads)
    # the full size streams its 7.3 GB of float32 features from the store;
    # a scaled run takes the same path instead of holding them in memory
    pipeline.batches.IN_MEMORY_BYTES = 0
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    cfg = load_config(None, [f"run.out={str(folder)!r}", "em.n_classes=27",
                             f"em.epochs={args.epochs}", "eval.pictures=false"])
    ui = pipeline.UI(quiet=not sys.stderr.isatty())
    stages = {}
    try:
        load0 = os.getloadavg()[0]
        t, c = time.perf_counter(), time.process_time()
        make_split(cfg, "train", n_train, 1)
        make_split(cfg, "val", n_val, 2)
        stages["generate data (not a pipeline stage)"] = (time.perf_counter() - t, peak_mib(),
                                                          time.process_time() - c,
                                                          load0, os.getloadavg()[0])
        for name, fn in (("pseudo (PriMaPs masks)", lambda: pipeline.pseudo(cfg, ui)),
                         ("fit (PCA, warm-up, EM)", lambda: pipeline.fit(cfg, ui)),
                         ("evaluate", lambda: pipeline.evaluate(cfg, ui))):
            reset_peak()
            load0 = os.getloadavg()[0]
            t, c = time.perf_counter(), time.process_time()
            res = fn()
            stages[name] = (time.perf_counter() - t, peak_mib(), time.process_time() - c,
                            load0, os.getloadavg()[0])
            if name.startswith("fit"):
                fit_res = res
            if name == "evaluate":
                table = res["table"]
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    steps = fit_res["em"]["em_steps"]
    em_s = fit_res["em"]["seconds"] - fit_res["pca_seconds"]
    print(f"{n_train} train + {n_val} val images, {args.epochs} EM epochs, "
          f"threads {primaps.get_num_threads()}, load {os.getloadavg()[0]:.1f}")
    print("| stage | wall s | CPU s (all threads) | peak RSS MiB | load at start -> end |\n"
          "|---|---:|---:|---:|---|")
    for k, (s, m, c, l0, l1) in stages.items():
        print(f"| {k} | {s:.1f} | {c:.1f} | {m:.0f} | {l0:.1f} -> {l1:.1f} |")
    run = [v for k, v in stages.items() if not k.startswith("generate")]
    print(f"| **pipeline (pseudo + fit + evaluate)** | **{sum(v[0] for v in run):.1f}** | "
          f"{sum(v[2] for v in run):.1f} | {max(v[1] for v in run):.0f} | "
          f"{run[0][3]:.1f} -> {run[-1][4]:.1f} |")
    print(f"PCA init {fit_res['pca_seconds']:.1f} s; warm-up + EM {em_s:.1f} s for "
          f"{steps} EM steps and {2 * -(-n_train // 32)} K-means steps")
    print("teacher / student:", table["em_teacher"], table["em_student"])
    write_record("pipeline", {
        "n_train": n_train, "n_val": n_val, "epochs": args.epochs,
        "threads": primaps.get_num_threads(), "load": os.getloadavg(),
        "stages": {k: {"seconds": round(s, 2), "peak_rss_mib": round(m), "cpu_seconds": round(c, 2),
                       "load": [round(l0, 2), round(l1, 2)]}
                   for k, (s, m, c, l0, l1) in stages.items()},
        "fit": fit_res, "table": table})


if __name__ == "__main__":
    main()
