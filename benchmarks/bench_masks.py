"""Images/s of PriMaPs mask proposals: our C core against a PyTorch
implementation of the original algorithm, same inputs, same process, same
thread count (2 by default).

    flock /tmp/primaps-cpu.lock python benchmarks/bench_masks.py

Inputs: primaps.datasets.synthetic.region_features, DINO-shaped features of
8 coherent regions per image (class prototypes with a shared direction,
log-normal channel scales, prototype norm 40) plus Gaussian noise whose norm
is `noise` times the prototype norm:

- clean: noise 0.5, a handful of masks per image (one per region);
- hard:  noise 2.0, so noisy that each mask catches a few pixels and the
         loop runs hundreds to a thousand iterations per image.  The
         original needs about a second per iteration here, so by default it
         is timed over its first 10 iterations on one image and its images/s
         is estimated as 1 / (seconds per iteration x the iterations the
         image needs); --hard-torch-full runs whole images instead.

Shapes (C, h, w): (384, 40, 40) ViT-S/8 at 320 px, (768, 40, 40) ViT-B/8,
(384, 23, 23) ViT-S/14 at 322 px.

- ours:  primaps.masks on a batch (images in parallel on the pool, BLAS
         single-threaded inside);
- torch: the original loop, one image at a time with torch's intra-op
         threads: torch.pca_lowrank(q=3, niter=100) on the unassigned pixels,
         the same seed, refinement, threshold and stops, the same median
         filter, gain, background and argmax (no CRF).

The kernel's FLOP rate counts the dense linear algebra whose size is known
from the masks alone: the covariance (SSYRK over all pixels, then the
down-dates or rebuilds), and the two similarity products per mask; the
Lanczos matrix-vector products come on top (so the rate is a lower bound).
It is printed beside this machine's measured SGEMM rate.  Reference images
are timed between runs of ours, so that the ratio compares runs under the
same machine load.  The machine may be shared: besides wall-clock images/s,
ours is reported in CPU time (all threads) per image, and the images/s that
CPU time allows on `threads` otherwise idle cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import primaps  # noqa: E402
from primaps.datasets import synthetic  # noqa: E402

SHAPES = [(384, 40, 40), (768, 40, 40), (384, 23, 23)]
CASES = {"clean": 0.5, "hard": 2.0}


def torch_masks(torch, F, threshold=0.4, stop_fraction=0.95, gain=10.0, max_iterations=None):
    """The original algorithm (docs/method.md §1.1) in PyTorch on one image
    (C, h, w); returns the int32 mask map and the number of iterations.
    With max_iterations, stops the loop there and returns (None, n)."""
    nnf = torch.nn.functional
    C, h, w = F.shape
    N = h * w
    X = F.reshape(C, N).T
    Fh = nnf.normalize(X, dim=1)
    U = torch.ones(N, dtype=torch.bool)
    masks, states = [], [U.clone()]
    while (N - int(U.sum())) / N < stop_fraction and bool(U.any()):
        if max_iterations is not None and len(masks) >= max_iterations:
            return None, len(masks)
        _, _, V = torch.pca_lowrank(X[U], q=3, niter=100)  # centres X[U]
        v = V[:, 0]
        s = Fh[U] @ v
        if s.max() < -s.min():
            v, s = -v, -s
        p = torch.nonzero(U).squeeze(1)[torch.argmax(s)]
        m = torch.zeros(N)
        m[U] = Fh[U] @ Fh[p]
        mx = m.max()
        if mx <= 0:
            m = torch.zeros(N)
            m[p] = 1.0
        else:
            m[m < threshold * mx] = 0.0
            m = m / mx
        masks.append(m)
        U = U & ~(m > 0)
        states.append(U.clone())
        if len(states) >= 3 and torch.equal(states[-1], states[-2]) and torch.equal(
            states[-2], states[-3]
        ):
            break
    M = torch.stack(masks).reshape(len(masks), 1, h, w)
    P = nnf.pad(M, (1, 1, 1, 1), mode="reflect")
    M = P.unfold(2, 3, 1).unfold(3, 3, 1).reshape(len(masks), h, w, 9).median(-1).values
    M = torch.clamp(M * gain, 0, 1)
    nz = M[M != 0]
    level = nz.mean() if nz.numel() else torch.tensor(0.0)
    b = torch.clamp(level - M.sum(0), 0, 1)
    raw = torch.argmax(torch.cat([b[None], M]), dim=0).numpy()
    used = np.unique(raw[raw > 0])
    lut = np.zeros(len(masks) + 1, np.int32)
    lut[used] = np.arange(1, len(used) + 1)
    return lut[raw], len(masks)


def flops(F, threshold=0.4, stop_fraction=0.95):
    """Dense FLOPs of our kernel for one image whose loop removes k_t pixels
    at iteration t (read from the raw masks: median_size=1, gain=1)."""
    C, h, w = F.shape
    N = h * w
    _, soft = primaps.masks(F, threshold, stop_fraction, gain=1.0, median_size=1,
                            return_soft=True)
    k = (soft[1:].reshape(len(soft) - 1, N) > 0).sum(axis=1)
    total = N * C * (C + 1)  # SSYRK of all pixels
    n = N
    for t, kt in enumerate(k):
        total += 2 * 2 * n * C  # s = F^_U v, m = F^_U u
        n -= kt
        if t + 1 < len(k) and n > 0:
            total += min(kt, n) * C * (C + 1)  # down-date or rebuild
    return float(total)


def agreement(a, b):
    from scipy.optimize import linear_sum_assignment

    M = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(M, (a.ravel(), b.ravel()), 1)
    r, c = linear_sum_assignment(-M)
    return M[r, c].sum() / a.size


def run_case(shape, case, args, torch, peak):
    C, h, w = shape
    noise = CASES[case]
    B = args.batch if case == "clean" else args.hard_batch
    F = synthetic.region_features(shape, batch=B, noise=noise, seed=0).features
    ours = lambda: primaps.masks(F, return_info=True)  # noqa: E731
    maps, info = ours()
    wall, cpu = [], []
    for _ in range(args.repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        ours()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    t_ours = common.median(wall) / B
    c_ours = common.median(cpu) / B
    fl = sum(flops(F[b]) for b in range(min(B, 4))) / min(B, 4)
    rec = {
        "shape": list(shape), "case": case, "noise": noise, "batch": B,
        "threads": args.threads,
        "ours_images_per_s": 1.0 / t_ours,
        "ours_cpu_s_per_image": c_ours,
        "ours_images_per_s_idle_estimate": args.threads / c_ours,
        "ours_masks_per_image": float(info["n_masks"].mean()),
        "ours_iterations_per_image": float(info["iterations"].mean()),
        "ours_gflops_lower_bound": fl / t_ours / 1e9,
        "sgemm_peak_gflops": peak,
    }
    line = (f"{str(shape):15s} {case:5s} noise {noise:3.1f}  ours {1 / t_ours:9.1f} img/s  "
            f"(cpu {c_ours * 1e3:.2f} ms/img -> {args.threads / c_ours:.0f} img/s on idle cores)  "
            f"masks/img {info['n_masks'].mean():5.1f}  iterations/img "
            f"{info['iterations'].mean():7.1f}  >= {fl / t_ours / 1e9:5.1f} GFLOP/s "
            f"(SGEMM peak {peak:.0f})")
    print(line, flush=True)
    n_ref = args.torch_images if case == "clean" else args.hard_torch_images
    partial = case == "hard" and not args.hard_torch_full
    if torch is not None and n_ref > 0:
        tt, to, agree, tmasks, titer = [], [], [], [], []
        for b in range(n_ref):
            ft = torch.from_numpy(F[b])
            t0 = time.perf_counter()
            ref, iters = torch_masks(torch, ft, max_iterations=10 if partial else None)
            dt = time.perf_counter() - t0
            if partial:  # seconds per iteration x the iterations of the image
                dt = dt / iters * info["iterations"][b]
                iters = int(info["iterations"][b])
            else:
                agree.append(agreement(maps[b], ref))
                tmasks.append(ref.max())
            tt.append(dt)
            titer.append(iters)
            to.append(common.median(common.timeit(lambda: ours(), repeat=1, warmup=0)) / B)
        t_ref, t_alongside = float(np.mean(tt)), float(np.median(to))
        rec.update({
            "torch_images": n_ref,
            "torch_estimated_from_10_iterations": partial,
            "torch_images_per_s": 1.0 / t_ref,
            "torch_iterations_per_image": float(np.mean(titer)),
            "ours_alongside_images_per_s": 1.0 / t_alongside,
            "speedup": t_ref / t_alongside,
        })
        if not partial:
            rec["torch_masks_per_image"] = float(np.mean(tmasks))
            rec["pixel_agreement_with_torch"] = float(np.mean(agree))
            extra = (f"masks/img {np.mean(tmasks):5.1f}  pixel agreement with ours "
                     f"{np.mean(agree) * 100:.1f} %")
        else:
            extra = "estimated from 10 timed iterations"
        print(f"{'':15s} {'':5s} torch {1 / t_ref:9.4f} img/s  iterations/img "
              f"{np.mean(titer):7.1f}  {extra}  ({n_ref} images; ours alongside "
              f"{1 / t_alongside:.1f} img/s) -> ours is {t_ref / t_alongside:.0f}x faster",
              flush=True)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="clean images per run of ours")
    ap.add_argument("--hard-batch", type=int, default=4, help="hard images per run of ours")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs of ours")
    ap.add_argument("--torch-images", type=int, default=3, help="clean images for torch")
    ap.add_argument("--hard-torch-images", type=int, default=1, help="hard images for torch")
    ap.add_argument("--hard-torch-full", action="store_true",
                    help="run whole hard images in torch (many minutes each)")
    ap.add_argument("--shapes", default="all", help="all, or e.g. 384x40x40,384x23x23")
    ap.add_argument("--cases", default="clean,hard")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    shapes = SHAPES if args.shapes == "all" else [
        tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    primaps.set_num_threads(args.threads)
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed: only our timings are reported")
        else:
            torch.set_num_threads(args.threads)
    peak = common.sgemm_peak_gflops(args.threads)
    print(f"{args.threads} threads, load {os.getloadavg()[0]:.2f}, "
          f"SGEMM peak {peak:.0f} GFLOP/s, {common.cpu_model()}", flush=True)
    records = []
    for case in args.cases.split(","):
        for shape in shapes:
            records.append(run_case(shape, case, args, torch, peak))
    common.write_record("masks", {"threads": args.threads, "load": os.getloadavg(),
                                  "results": records})
    return 0


if __name__ == "__main__":
    sys.exit(main())
