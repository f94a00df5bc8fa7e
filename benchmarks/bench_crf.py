"""Dense CRF at 320 x 320, 10 iterations, 6 and 27 labels: primaps against
pydensecrf2 (when installed) in the same process, on the same inputs.

    flock /tmp/primaps-cpu.lock python benchmarks/bench_crf.py

Times (medians) for 1 and 2 threads, the contenders interleaved within each
repetition; speed-ups are medians of the per-repetition ratios:
- ``dense_crf``: one call on one image, nothing kept between calls;
- ``DenseCRF``: the same through a reused context (buffers and the
  smoothness lattice, which depends only on the image size, are kept), the
  way a dataset of same-size images is processed;
- ``batch``: a batch of 8 (B, H, W, 3) through a context, time per image;
- ``pydensecrf2``: DenseCRF2D with the same parameters (single-threaded).
Also prints the CPU time of a ``DenseCRF`` call (all threads) and its ratio
to pydensecrf2's (on a shared machine the wall time also counts the time
the threads wait for a core; the CPU time does not),
the speed-up of the batch from 1 to 2 threads (it shares no work between
threads, so it shows how much of a second core the machine gave), the
load average, the marginal differences from pydensecrf2 and the agreement
of the label maps, and appends a JSON record to benchmarks/out/crf.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median, timeit, write_record  # noqa: E402

import primaps  # noqa: E402

HERE = Path(__file__).resolve().parent


def load_image(size: int) -> tuple[np.ndarray, str]:
    """The Potsdam demo photo (320 x 320) from the sample data, else a
    synthetic scene of noisy rectangles."""
    root = Path(os.environ.get("PRIMAPS_TEST_DATA", HERE.parent.parent / "shared" / "data"))
    path = root / "primaps_demo" / "potsdam_example.png"
    if path.exists():
        from PIL import Image

        with Image.open(path) as im:
            img = np.array(im.convert("RGB").resize((size, size), Image.BILINEAR))
        return img, str(path.name)
    rng = np.random.default_rng(0)
    img = np.zeros((size, size, 3), np.float64)
    for _ in range(40):
        y0, x0 = rng.integers(0, size, 2)
        h, w = rng.integers(8, size // 3, 2)
        img[y0:y0 + h, x0:x0 + w] = rng.integers(0, 256, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), "synthetic rectangles"


def make_logits(rng, L: int, size: int) -> np.ndarray:
    """Smooth random logits: low-resolution noise, bilinearly upsampled (as
    PriMaPs' logits are)."""
    low = rng.standard_normal((L, size // 32, size // 32)).astype(np.float32) * 2
    return primaps.upsample_bilinear(low, (size, size))


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(0, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(0, keepdims=True))


def pydensecrf_runner(img: np.ndarray, logits: np.ndarray, iterations: int):
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError:
        return None
    L, H, W = logits.shape
    unary = np.ascontiguousarray(-log_softmax(logits.astype(np.float64)).reshape(L, -1), np.float32)
    rgb = np.array(img)  # pydensecrf needs a writable C-contiguous array

    def run():
        d = dcrf.DenseCRF2D(W, H, L)
        d.setUnaryEnergy(unary)
        d.addPairwiseGaussian(sxy=1, compat=3)
        d.addPairwiseBilateral(sxy=67, srgb=3, rgbim=rgb, compat=4)
        return np.array(d.inference(iterations)).reshape(L, H, W)

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--labels", type=int, nargs="+", default=[6, 27])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)

    img, source = load_image(args.size)
    rng = np.random.default_rng(0)
    before = primaps.get_num_threads()
    results = []
    for L in args.labels:
        logits = make_logits(rng, L, args.size)
        flips = [img, img[::-1], img[:, ::-1], img[::-1, ::-1]]
        imgs = np.stack([flips[b % 4] for b in range(args.batch)])
        blogits = np.stack([make_logits(rng, L, args.size) for _ in range(args.batch)])
        ref_run = pydensecrf_runner(img, logits, args.iterations)
        row = {"labels": L, "size": args.size, "iterations": args.iterations, "image": source}
        if ref_run is not None:
            ref = ref_run()
            q = primaps.dense_crf(img, logits, args.iterations)
            row["max_abs_diff"] = float(np.abs(q - ref).max())
            row["mean_abs_diff"] = float(np.abs(q - ref).mean())
            row["argmax_agreement"] = float((q.argmax(0) == ref.argmax(0)).mean())
        crfs = {}
        for n in args.threads:
            primaps.set_num_threads(n)
            crfs[n] = primaps.DenseCRF(iterations=args.iterations)
            crfs[n](img, logits)  # warm the context
            crfs[n](imgs, blogits)
        # Interleaved: every repetition times each contender once, so that
        # the load of a shared machine hits all of them alike; ratios are
        # taken within a repetition.
        times = {k: [] for k in ["pydensecrf2"] + [f"{m}@{n}" for n in args.threads
                                                   for m in ("dense_crf", "DenseCRF", "batch")]}
        cpu = {n: [] for n in args.threads}
        cpu_ref = []
        row["load_before"] = os.getloadavg()[0]
        for _ in range(args.repeat):
            if ref_run is not None:
                c0 = time.process_time()
                times["pydensecrf2"] += timeit(ref_run, repeat=1, warmup=0)
                cpu_ref.append(time.process_time() - c0)
            for n in args.threads:
                primaps.set_num_threads(n)
                times[f"dense_crf@{n}"] += timeit(lambda: primaps.dense_crf(img, logits, args.iterations),
                                                  repeat=1, warmup=0)
                c0 = time.process_time()
                times[f"DenseCRF@{n}"] += timeit(lambda: crfs[n](img, logits), repeat=1, warmup=0)
                cpu[n].append(time.process_time() - c0)
                times[f"batch@{n}"] += [t / args.batch for t in
                                        timeit(lambda: crfs[n](imgs, blogits), repeat=1, warmup=0)]
        row["load_after"] = os.getloadavg()[0]
        if ref_run is not None:
            row["pydensecrf2_s"] = median(times["pydensecrf2"])
            row["pydensecrf2_cpu_s"] = median(cpu_ref)
        for n in args.threads:
            entry = {"DenseCRF_cpu_s": median(cpu[n])}
            line = f"L={L:2d} threads={n}:"
            for m in ("dense_crf", "DenseCRF", "batch"):
                t = times[f"{m}@{n}"]
                entry[f"{m}_s"] = median(t)
                line += f" {m} {median(t) * 1e3:6.1f} ms"
                if ref_run is not None:
                    ratio = median([r / x for r, x in zip(times["pydensecrf2"], t)])
                    entry[f"{m}_speedup"] = ratio
                    line += f" (x{ratio:.1f})"
                line += ","
            row[f"threads{n}"] = entry
            line += f" DenseCRF cpu {entry['DenseCRF_cpu_s'] * 1e3:.1f} ms"
            if ref_run is not None:
                ratio = median([r / x for r, x in zip(cpu_ref, cpu[n])])
                entry["DenseCRF_cpu_ratio"] = ratio
                line += f" (x{ratio:.1f} of pydensecrf2's cpu {row['pydensecrf2_cpu_s'] * 1e3:.1f} ms),"
                line += f" pydensecrf2 {row['pydensecrf2_s'] * 1e3:.1f} ms"
            print(line.rstrip(","), flush=True)
        if 1 in args.threads and 2 in args.threads:
            par = median([a / b for a, b in zip(times["batch@1"], times["batch@2"])])
            row["batch_parallel_speedup"] = par
            print(f"L={L:2d}: batch 1 -> 2 threads x{par:.2f}; load average "
                  f"{row['load_before']:.1f} -> {row['load_after']:.1f}")
        if ref_run is not None:
            print(f"L={L:2d}: vs pydensecrf2 max|dQ| {row['max_abs_diff']:.1e}, "
                  f"mean|dQ| {row['mean_abs_diff']:.1e}, "
                  f"argmax agreement {row['argmax_agreement']:.4f}")
        else:
            print(f"L={L:2d}: pydensecrf2 is not installed (pip install pydensecrf2) - no reference")
        results.append(row)
    primaps.set_num_threads(before)
    write_record("crf", {"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
