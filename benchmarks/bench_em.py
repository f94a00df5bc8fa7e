"""Training steps/s of PriMaPs-EM: our C step against PyTorch, same inputs,
same process, same thread count.

    flock /tmp/primaps-cpu.lock python benchmarks/bench_em.py

One EM step on a batch of B = 32 images of (384, 40, 40) features with
mask maps at 320 x 320 and K = 27 classes: the teacher's pseudo labels
(label-resolution argmax, mode over every mask), the student's focal loss,
its gradient, Adam, the EMA bookkeeping.

- ours:          primaps.PriMaPsEM.partial_fit (C kernels, oneDNN);
- torch original: the original step: features upsampled to 320 x 320, the
                 weight-normed 1x1 convolution there, softmax focal loss,
                 autograd, torch.optim.Adam;
- torch trick:   PyTorch with our resolution trick: logits at 40 x 40,
                 upsampled to 320 x 320.

Peak extra memory of a step: the resident-set high-water mark (reset
through /proc/self/clear_refs before each measured step) minus the resident
set before the step.  Each reference step is timed between steps of ours, so
that the ratios compare steps run under the same machine load; CPU time (all
threads) is reported too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import primaps  # noqa: E402
from primaps import _core  # noqa: E402


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_extra_mb(fn) -> float:
    """Run fn once; the rise of the resident high-water mark above the
    resident set before the call, in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # pragma: no cover - kernels without peak reset
        return float("nan")
    before = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - before) / 1024.0


def timed(fn, repeat):
    """Wall and CPU (all threads) seconds of `repeat` calls of fn."""
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def make_batch(B, C, h, w, H, W, K, seed=0):
    """Features with K-class structure (so that the EM has something to
    do) and mask maps of about 24 rectangles per image."""
    rng = np.random.default_rng(seed)
    protos = rng.standard_normal((K, C)).astype(np.float32)
    lab = rng.integers(0, K, (B, h // 5, w // 5)).repeat(5, 1).repeat(5, 2)
    F = protos[lab].transpose(0, 3, 1, 2) + rng.standard_normal((B, C, h, w)).astype(np.float32)
    F = np.ascontiguousarray(F, dtype=np.float32)
    masks = np.zeros((B, H, W), np.int32)
    for b in range(B):
        ys = np.sort(rng.choice(np.arange(1, H), 3, replace=False))
        xs = np.sort(rng.choice(np.arange(1, W), 5, replace=False))
        ry = np.searchsorted(ys, np.arange(H), side="right")
        rx = np.searchsorted(xs, np.arange(W), side="right")
        masks[b] = ry[:, None] * 6 + rx[None, :] + 1
        masks[b, : H // 8] = 0  # background
    init = rng.standard_normal((K, C)).astype(np.float32)
    return F, masks, init


def breakdown(em, F, masks, H, W, repeat):
    """Where a step's time goes: its kernels called one by one on the step's
    inputs (teacher pseudo labels, the student's logits and the two passes
    at label resolution, the weight gradient), medians in seconds."""
    ws, t, s = em._ws, em.teacher_, em.student_
    theta_t, theta_s = t.theta(), s.theta()
    labels = _core.teacher_pseudo(ws, F, masks, theta_t)
    Z = np.ascontiguousarray(np.einsum("kc,bchw->bkhw", theta_s, F), dtype=np.float32)
    chi = _core.label_softmax_mean(ws, Z, (H, W))
    wt = np.power(np.clip(1.0 - chi, 0.0, None), em.focal_gamma).astype(np.float32)
    scale = 1.0 / (F.shape[0] * H * W)
    parts = {
        "teacher pseudo labels (logits, label-resolution argmax, mode per mask)":
            lambda: _core.teacher_pseudo(ws, F, masks, theta_t),
        "  of which the label-resolution argmax": lambda: _core.label_argmax(ws, Z, (H, W)),
        "student focal loss and gradient": lambda: _core.focal_bwd(
            ws, F, labels, s.v, s.g, em.focal_gamma),
        "  of which pass 1: class confidences (softmax at label resolution)":
            lambda: _core.label_softmax_mean(ws, Z, (H, W)),
        "  of which pass 2: loss and gradient (softmax, adjoint)":
            lambda: _core.label_ce_bwd(ws, Z, labels, wt, scale),
    }
    out = {}
    for name, fn in parts.items():
        fn()
        out[name] = float(np.median(timed(fn, repeat)[0]))
    out["  of which the rest: logits, weight gradient (oneDNN), weight norm"] = (
        out["student focal loss and gradient"]
        - out["  of which pass 1: class confidences (softmax at label resolution)"]
        - out["  of which pass 2: loss and gradient (softmax, adjoint)"])
    return out


# --------------------------------------------------------------------- torch


class TorchEM:
    """The EM step in PyTorch; `trick` computes the logits at feature
    resolution and upsamples them, otherwise the features are upsampled."""

    def __init__(self, torch, init, K, size, trick, ema_every=10):
        self.torch, self.K, self.size, self.trick = torch, K, size, trick
        nn = torch.nn

        def head():
            conv = nn.Conv2d(init.shape[1], K, 1, bias=False)
            conv = nn.utils.parametrizations.weight_norm(conv, dim=0)
            with torch.no_grad():
                conv.parametrizations.weight.original0.fill_(1.0)
                conv.parametrizations.weight.original1.copy_(
                    torch.from_numpy(init)[:, :, None, None])
            return conv

        self.student, self.teacher = head(), head()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.opt = torch.optim.Adam(self.student.parameters(), lr=5e-3, betas=(0.9, 0.999),
                                    eps=1e-8)
        self.steps, self.updates, self.ema_every = 0, 0, ema_every

    def logits(self, conv, feats):
        F = self.torch.nn.functional
        if self.trick:
            return F.interpolate(conv(feats), self.size, mode="bilinear", align_corners=False)
        return conv(F.interpolate(feats, self.size, mode="bilinear", align_corners=False))

    def pseudo(self, t, masks):
        """Mode of t over every mask (ties: the smallest class), 255 on the
        background: one scatter-add of (mask, class) pairs per batch."""
        torch, K = self.torch, self.K
        B = masks.shape[0]
        top = int(masks.max()) + 1
        key = (torch.arange(B)[:, None, None] * top + masks.long()) * K + t
        counts = torch.zeros(B * top * K, dtype=torch.long)
        counts.scatter_add_(0, key.reshape(-1), torch.ones(key.numel(), dtype=torch.long))
        mode = counts.view(B, top, K).argmax(-1)  # first maximum
        out = torch.gather(mode, 1, masks.long().reshape(B, -1)).view_as(masks.long())
        out[masks == 0] = 255
        return out

    def step(self, feats, masks):
        torch = self.torch
        F = torch.nn.functional
        with torch.no_grad():
            target = self.pseudo(self.logits(self.teacher, feats).argmax(1), masks)
        self.opt.zero_grad()
        logits = self.logits(self.student, feats)
        chi = logits.detach().softmax(1).permute(1, 0, 2, 3).reshape(self.K, -1).mean(1)
        loss = F.cross_entropy(logits, target, weight=(1 - chi) ** 2, ignore_index=255,
                               reduction="none").mean()
        loss.backward()
        self.opt.step()
        self.steps += 1
        if self.steps % self.ema_every == 0:
            self.updates += 1
            j = self.updates
            d = 0.0 if j <= 2 else min(0.98, 1 - 1 / j)
            with torch.no_grad():
                for pt, ps in zip(self.teacher.parameters(), self.student.parameters()):
                    pt.lerp_(ps, 1 - d)
        return loss.item()


# ---------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--channels", type=int, default=384)
    ap.add_argument("--classes", type=int, default=27)
    ap.add_argument("--feature-size", type=int, default=40)
    ap.add_argument("--label-size", type=int, default=320)
    ap.add_argument("--repeat", type=int, default=10, help="timed steps of ours")
    ap.add_argument("--torch-repeat", type=int, default=3, help="timed steps of torch")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)

    B, C, K = args.batch, args.channels, args.classes
    h = w = args.feature_size
    H = W = args.label_size
    threads = primaps.get_num_threads()
    F, masks, init = make_batch(B, C, h, w, H, W, K)
    print(f"batch {B} x ({C}, {h}, {w}) features, {H} x {W} mask maps, K = {K}, "
          f"{threads} threads")

    em = primaps.PriMaPsEM(K, hflip=True, seed=0).init_from(init)
    ours = lambda: em.partial_fit((F, masks))  # noqa: E731
    ours()  # primitives and workspaces are created here
    mem_ours = peak_extra_mb(ours)
    wall, cpu = timed(ours, args.repeat)
    ws_mb = _core.em_workspace_bytes(em._ws) / 2**20
    print(f"ours            {np.median(wall) * 1e3:9.1f} ms/step  "
          f"{1 / np.median(wall):8.2f} steps/s  cpu {np.median(cpu) * 1e3:8.1f} ms/step  "
          f"peak extra {mem_ours:7.1f} MiB (workspace {ws_mb:.1f} MiB)")

    # the batch as a float16 store holds it: widened in C, or (what the
    # pipeline did before) converted in NumPy first
    F16 = F.astype(np.float16)
    F16_32 = F16.astype(np.float32)
    step16 = lambda: em.partial_fit((F16, masks))  # noqa: E731
    step16_numpy = lambda: em.partial_fit((F16.astype(np.float32), masks))  # noqa: E731
    step16()
    w16, _ = timed(step16, args.repeat)
    w16n, _ = timed(step16_numpy, args.repeat)
    w32, _ = timed(lambda: em.partial_fit((F16_32, masks)), args.repeat)
    print(f"ours, float16   {np.median(w16) * 1e3:9.1f} ms/step (widened in C; "
          f"{np.median(w16n) * 1e3:.1f} ms converting in NumPy first, "
          f"{np.median(w32) * 1e3:.1f} ms on its float32 copy)")
    parts = breakdown(em, F, masks, H, W, args.repeat)
    step = float(np.median(wall))
    print("where a step's time goes (kernels alone, same inputs):")
    for name, sec in parts.items():
        print(f"  {name:72s} {sec * 1e3:7.1f} ms  {100 * sec / step:5.1f} %")

    record = {"batch": B, "channels": C, "classes": K, "feature_size": h, "label_size": H,
              "ours_float16_s_per_step": float(np.median(w16)),
              "ours_float16_numpy_s_per_step": float(np.median(w16n)),
              "breakdown_s": parts,
              "threads": threads, "ours_s_per_step": float(np.median(wall)),
              "ours_cpu_s_per_step": float(np.median(cpu)),
              "ours_steps_per_s": float(1 / np.median(wall)),
              "ours_peak_extra_mib": mem_ours, "ours_workspace_mib": ws_mb}
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
            print("torch is not installed: only our timing is reported")
        if torch is not None:
            torch.set_num_threads(threads)
            ft = torch.from_numpy(F)
            mt = torch.from_numpy(masks)
            for name, trick in (("torch_trick", True), ("torch_original", False)):
                ref = TorchEM(torch, init, K, (H, W), trick)
                ref.step(ft, mt)
                mem = peak_extra_mb(lambda: ref.step(ft, mt))
                # Interleaved with ours, so that both meet the same machine
                # load: one reference step, then three of ours, repeated.
                tw, tc, ow, oc = [], [], [], []
                for _ in range(args.torch_repeat):
                    a, b = timed(lambda: ref.step(ft, mt), 1)
                    tw += a
                    tc += b
                    a, b = timed(ours, 3)
                    ow += a
                    oc += b
                t, o = float(np.median(tw)), float(np.median(ow))
                tcpu, ocpu = float(np.median(tc)), float(np.median(oc))
                print(f"{name:15s} {t * 1e3:9.1f} ms/step  {1 / t:8.2f} steps/s  "
                      f"cpu {tcpu * 1e3:8.1f} ms/step  peak extra {mem:7.1f} MiB")
                print(f"{'':15s} ours alongside: {o * 1e3:.1f} ms/step -> ours is "
                      f"{t / o:.1f}x faster (cpu time: {tcpu / ocpu:.1f}x)")
                record.update({f"{name}_s_per_step": t, f"{name}_cpu_s_per_step": tcpu,
                               f"{name}_peak_extra_mib": mem,
                               f"ours_alongside_{name}_s_per_step": o,
                               f"speedup_vs_{name}": t / o,
                               f"cpu_speedup_vs_{name}": tcpu / ocpu})
    common.write_record("em", record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
