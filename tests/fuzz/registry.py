"""The registry of fuzzed entry points.

Each ``Entry`` names what it covers (public names of ``primaps`` and entries
of ``primaps._core``) and has a ``build(case)`` that draws the arguments of
one call through a ``Case`` (tests/fuzz/arrays.py) and returns
``(run, check)``: ``run()`` makes the call, ``check(result)`` asserts the
shape, dtype and (where a NumPy twin is cheap) the values of a result.
tests/test_fuzz.py runs every entry and decides from the case's faults
which outcomes are acceptable.  A new entry point is one more ``Entry``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Tuple

import numpy as np
from hypothesis import strategies as st

import primaps
from primaps import _core
from twins import em as em_twin
from twins import metrics as metrics_twin
from twins import resample as resample_twin

from .arrays import Case

Build = Callable[[Case], Tuple[Callable[[], Any], Callable[[Any], None]]]


@dataclass
class Entry:
    name: str
    build: Build
    covers: Tuple[str, ...]
    examples: int = 300  # per CI run; PRIMAPS_FUZZ_EXAMPLES sets them all
    nonfinite_raises: bool = True  # NaN / inf in a float argument is a ValueError
    raises: Tuple[type, ...] = ()  # documented exceptions beyond Type/Value/MemoryError


REGISTRY: list[Entry] = []


def entry(*covers: str, **kw):
    def deco(fn: Build) -> Build:
        REGISTRY.append(Entry(covers[0], fn, tuple(covers), **kw))
        return fn

    return deco


# -------------------------------------------------------------- helpers

_WS = None


def ws():
    global _WS
    if _WS is None:
        _WS = _core.em_workspace()
    return _WS


def f32(x: Any) -> np.ndarray:
    """What the bindings compute on: the argument as float32, in float64."""
    return np.asarray(x).astype(np.float32).astype(np.float64)


def close(got, want, rtol=1e-4, what="values"):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(got - want).max(initial=0.0))
    assert err <= rtol * scale, f"{what}: max error {err:.3g} against the twin (scale {scale:.3g})"


def shaped(out, shape, dtype):
    assert isinstance(out, np.ndarray), type(out)
    assert out.shape == tuple(shape), f"shape {out.shape}, expected {tuple(shape)}"
    assert out.dtype == np.dtype(dtype), f"dtype {out.dtype}, expected {np.dtype(dtype)}"


def maybe(case: Case, name: str) -> bool:
    """Whether a size that must match another argument is made to differ."""
    return case.fault(name, ["mismatch"]) is not None


def ws_arg(case: Case):
    if case.fault("ws", ["wrong_type"]):
        return case.draw(st.sampled_from([None, 3, "ws", _core.crf_context()]))
    return ws()


def extra_arg(case: Case) -> tuple:
    """An unexpected positional argument (a TypeError) or none."""
    return (1,) if case.fault("args", ["wrong_type"]) else ()


# -------------------------------------------------------------- runtime


@entry("_core.set_num_threads", "set_num_threads", "get_num_threads", "_core.get_num_threads")
def _set_num_threads(case: Case):
    n = case.number("n", 1, 4, integer=True, bad=[0, -1, 1025, 2**70], wrong=[1.5, "2", None, True])
    use_core = case.draw(st.booleans())
    fn = _core.set_num_threads if use_core else primaps.set_num_threads

    def run():
        before = primaps.get_num_threads()
        try:
            fn(n)
            return primaps.get_num_threads()
        finally:
            primaps.set_num_threads(before)

    def check(got):
        assert got == int(n)

    return run, check


@entry("_core.build_info", "build_info")
def _build_info(case: Case):
    extra = extra_arg(case)
    fn = case.draw(st.sampled_from([_core.build_info, primaps.build_info]))

    def check(info):
        assert isinstance(info, dict) and info["threads"] == primaps.get_num_threads()

    return (lambda: fn(*extra)), check


@entry("_core.em_workspace", "_core.em_workspace_bytes")
def _workspace(case: Case):
    extra = extra_arg(case)
    target = ws_arg(case)

    def run():
        w = _core.em_workspace(*extra)
        return w, _core.em_workspace_bytes(target)

    def check(out):
        assert isinstance(out[1], int) and out[1] >= 0

    return run, check


@entry("_core.crf_context")
def _crf_context(case: Case):
    extra = extra_arg(case)

    def check(ctx):
        assert type(ctx).__name__ == "PyCapsule"

    return (lambda: _core.crf_context(*extra)), check


# ------------------------------------------------- normalise and resample


@entry("_core.l2_normalize", "l2_normalize")
def _l2_normalize(case: Case):
    nd = case.draw(st.sampled_from([3, 4]))
    shape = [case.dim(1, 3), case.dim(1, 6), case.dim(1, 5), case.dim(1, 5)][4 - nd:]
    x = case.floats("features", shape, ndims=(3, 4))

    def check(out):
        shaped(out, np.shape(np.asarray(x)), np.float32)
        assert np.isfinite(out).all(), "l2_normalize returned NaN or inf"
        if case.clean:
            close(out, resample_twin.l2_normalize(f32(x)), 1e-5)

    return (lambda: primaps.l2_normalize(x)), check


def _resample(case: Case, adjoint: bool):
    nd = case.draw(st.sampled_from([2, 3, 4]))
    shape = [case.dim(1, 2), case.dim(1, 3), case.dim(1, 9), case.dim(1, 9)][4 - nd:]
    x = case.floats("y" if adjoint else "x", shape, ndims=(2, 3, 4))
    size = case.size2("in_size" if adjoint else "size", 1, 20)
    fn = primaps.upsample_bilinear_adjoint if adjoint else primaps.upsample_bilinear
    twin = resample_twin.upsample_bilinear_adjoint if adjoint else resample_twin.upsample_bilinear

    def check(out):
        s = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(v) for v in size)
        xs = np.shape(np.asarray(x))
        shaped(out, xs[:-2] + s, np.float32)
        if case.clean:
            close(out, twin(f32(x), s), 1e-4)

    return (lambda: fn(x, size)), check


@entry("_core.upsample_bilinear", "upsample_bilinear", nonfinite_raises=False)
def _upsample(case: Case):
    return _resample(case, adjoint=False)


@entry("_core.upsample_bilinear_adjoint", "upsample_bilinear_adjoint", nonfinite_raises=False)
def _upsample_adjoint(case: Case):
    return _resample(case, adjoint=True)


# ----------------------------------------------------------- EM kernels


def _protos(case: Case, name: str, K: int, C: int):
    return case.floats(name, [K, C], ndims=(2,))


@entry("_core.weightnorm_fwd", "Prototypes")
def _weightnorm_fwd(case: Case):
    K, C = case.dim(1, 5), case.dim(1, 6)
    v = _protos(case, "v", K, C)
    g = case.floats("g", [K + 1 if maybe(case, "g") else K], ndims=(1,))
    use_cls = case.draw(st.booleans())

    def run():
        if use_cls:
            return primaps.Prototypes(v, g).theta()
        return _core.weightnorm_fwd(v, g)

    def check(out):
        shaped(out, (K, C), np.float32)
        if case.clean:
            close(out, em_twin.weightnorm(f32(v), f32(g)), 1e-5)

    return run, check


@entry("_core.weightnorm_bwd")
def _weightnorm_bwd(case: Case):
    K, C = case.dim(1, 5), case.dim(1, 6)
    v = _protos(case, "v", K, C)
    g = case.floats("g", [K], ndims=(1,))
    dt = case.floats("dtheta", [K, C + 1 if maybe(case, "dtheta") else C], ndims=(2,))

    def check(out):
        dv, dg = out
        shaped(dv, (K, C), np.float32)
        shaped(dg, (K,), np.float32)
        if case.clean:
            # rows of v far below float32's range lose their direction in the twin too
            n = np.linalg.norm(f32(v), axis=1)
            if (n > 1e-3).all():
                wdv, wdg = em_twin.weightnorm_bwd(f32(v), f32(g), f32(dt))
                close(dv, wdv, 1e-3, "dv")
                close(dg, wdg, 1e-4, "dg")

    return (lambda: _core.weightnorm_bwd(v, g, dt)), check


def _logits(case: Case, K=None):
    B, h, w = case.dim(1, 2), case.dim(1, 4), case.dim(1, 4)
    K = K or case.dim(1, 4)
    z = case.floats("logits", [B, K, h, w], ndims=(4,), scale=3.0)
    return z, (B, K, h, w)


@entry("_core.label_softmax_mean")
def _label_softmax_mean(case: Case):
    z, (B, K, h, w) = _logits(case)
    size = case.size2("size", 1, 10)
    w_ = ws_arg(case)

    def check(chi):
        shaped(chi, (K,), np.float64)
        if case.clean:
            s = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(v) for v in size)
            close(chi, em_twin.label_softmax_mean(f32(z), s), 1e-5)

    return (lambda: _core.label_softmax_mean(w_, z, size)), check


def _label_ce(case: Case, grad: bool):
    z, (B, K, h, w) = _logits(case)
    H, W = case.dim(1, 8), case.dim(1, 8)
    labels = case.ids("labels", [B + 1 if maybe(case, "labels") else B, H, W], 0, K - 1,
                      also=(255,), ndims=(3,))
    weights = case.floats("weights", [K], ndims=(1,))
    scale = case.number("scale", 0.0, 2.0, wrong=["x", None])
    w_ = ws_arg(case)
    fn = _core.label_ce_bwd if grad else _core.label_ce_fwd

    def check(out):
        loss = out[0] if grad else out
        assert isinstance(loss, float)
        if grad:
            shaped(out[1], (B, K, h, w), np.float32)
        if case.clean:
            want, dz = em_twin.label_ce(f32(z), np.asarray(labels), f32(weights), float(scale))
            close(loss, want, 1e-4, "loss")
            if grad:
                close(out[1], dz, 1e-4, "dlogits")

    return (lambda: fn(w_, z, labels, weights, scale)), check


@entry("_core.label_ce_fwd")
def _label_ce_fwd(case: Case):
    return _label_ce(case, False)


@entry("_core.label_ce_bwd")
def _label_ce_bwd(case: Case):
    return _label_ce(case, True)


@entry("_core.label_argmax")
def _label_argmax(case: Case):
    z, (B, K, h, w) = _logits(case)
    size = case.size2("size", 1, 10)
    w_ = ws_arg(case)

    def check(out):
        s = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(v) for v in size)
        shaped(out, (B,) + s, np.int32)
        assert out.min() >= 0 and out.max() < K

    return (lambda: _core.label_argmax(w_, z, size)), check


def _batch(case: Case, C=None):
    """features (n, C, h, w) and an optional index (B,) into them."""
    n, h, w = case.dim(1, 3), case.dim(1, 4), case.dim(1, 4)
    C = C or case.dim(1, 5)
    feats = case.floats("features", [n, C, h, w], ndims=(4,))
    index = None
    if case.draw(st.booleans()):
        index = case.ids("index", [case.dim(1, 4)], 0, n - 1, ndims=(1,), optional=True,
                         kinds=("wrong_type", "ndim", "bad_value", "empty", "float_ids"))
        case.loosen("features")  # a NaN may sit in an image the index leaves out
    return feats, index, (n, C, h, w), None


def _b(index, n):
    """Images in the batch (n without an index); n for an unreadable index."""
    try:
        return n if index is None else len(np.asarray(index).reshape(-1))
    except Exception:
        return n


def _kmeans(case: Case, grad: bool):
    feats, index, (n, C, h, w), _ = _batch(case)
    K = case.dim(1, 4)
    v = _protos(case, "v", K, C + 1 if maybe(case, "v") else C)
    w_ = ws_arg(case)
    fn = _core.kmeans_bwd if grad else _core.kmeans_fwd

    def check(out):
        loss = out[0] if grad else out
        assert isinstance(loss, float) and -1.0 - 1e-5 <= loss <= 1.0 + 1e-5
        if grad:
            shaped(out[1], (K, C), np.float32)
        if case.clean:
            F = f32(feats)
            if index is not None:
                F = F[np.asarray(index).astype(np.int64)]
            want, _ = em_twin.kmeans(f32(v), F)
            close(loss, want, 1e-4, "loss")

    return (lambda: fn(w_, feats, v, index=index)), check


@entry("_core.kmeans_fwd")
def _kmeans_fwd(case: Case):
    return _kmeans(case, False)


@entry("_core.kmeans_bwd")
def _kmeans_bwd(case: Case):
    return _kmeans(case, True)


def _flip(case: Case, B: int):
    if not case.draw(st.booleans()):
        return None
    return case.ids("flip", [B + 1 if maybe(case, "flip") else B], 0, 1, ndims=(1,),
                    kinds=("wrong_type", "ndim"), optional=True)


def _focal(case: Case, grad: bool):
    feats, index, (n, C, h, w), _ = _batch(case)
    K = case.dim(1, 4)
    H, W = case.dim(1, 6), case.dim(1, 6)
    labels = case.ids("labels", [n + 1 if maybe(case, "labels") else n, H, W], 0, K - 1,
                      also=(255,), ndims=(3,))
    if index is not None:
        case.loosen("labels")
    v = _protos(case, "v", K, C)
    g = case.floats("g", [K], ndims=(1,))
    gamma = case.number("gamma", 0.0, 3.0, bad=[-1.0, float("nan"), float("inf")], wrong=["x", None])
    student = None
    if case.draw(st.booleans()):
        student = case.floats("student_features", [n, C, h, w + 1 if maybe(case, "student") else w],
                              ndims=(4,), optional=True)
        case.loosen("features")  # the focal loss reads the student's view only
    Bn = _b(index, n)
    flip = _flip(case, Bn)
    w_ = ws_arg(case)
    fn = _core.focal_bwd if grad else _core.focal_fwd

    def check(out):
        assert isinstance(out[0], float)
        shaped(out[1], (K,), np.float64)
        if grad:
            shaped(out[2], (K, C), np.float32)
            shaped(out[3], (K,), np.float32)
        if case.clean:
            assert np.isfinite(out[0])

    return (lambda: fn(w_, feats, labels, v, g, gamma, student_features=student, index=index,
                       flip=flip)), check


@entry("_core.focal_fwd")
def _focal_fwd(case: Case):
    return _focal(case, False)


@entry("_core.focal_bwd")
def _focal_bwd(case: Case):
    return _focal(case, True)


def _masks(case: Case, n: int, H: int, W: int):
    return case.ids("masks", [n + 1 if maybe(case, "masks") else n, H, W], 0, 65535, ndims=(3,))


@entry("_core.teacher_pseudo")
def _teacher_pseudo(case: Case):
    feats, index, (n, C, h, w), _ = _batch(case)
    H, W = case.dim(1, 6), case.dim(1, 6)
    masks = _masks(case, n, H, W)
    if index is not None:
        case.loosen("masks")  # a bad id may sit in an image the index leaves out
    K = case.dim(1, 4)
    theta = _protos(case, "theta", K, C)
    Bn = _b(index, n)
    flip = _flip(case, Bn)
    w_ = ws_arg(case)

    def check(out):
        shaped(out, (Bn, H, W), np.uint8)
        assert ((out < K) | (out == 255)).all()
        # (values against the twin: test_em_kernels.py; near-ties of float16
        # and constant inputs make a per-case comparison meaningless here)

    return (lambda: _core.teacher_pseudo(w_, feats, masks, theta, index=index, flip=flip)), check


@entry("_core.em_step")
def _em_step(case: Case):
    feats, index, (n, C, h, w), _ = _batch(case)
    H, W = case.dim(1, 6), case.dim(1, 6)
    masks = _masks(case, n, H, W)
    if index is not None:
        case.loosen("masks")
    K = case.dim(1, 4)
    tv = _protos(case, "teacher_v", K, C)
    tg = case.floats("teacher_g", [K], ndims=(1,))
    sv = _protos(case, "student_v", K + 1 if maybe(case, "student_v") else K, C)
    sg = case.floats("student_g", [K], ndims=(1,))
    gamma = case.number("gamma", 0.0, 3.0, bad=[-0.5, float("nan")], wrong=["x", None])
    want_pseudo = case.draw(st.booleans())
    Bn = _b(index, n)
    flip = _flip(case, Bn)
    w_ = ws_arg(case)

    def check(out):
        assert len(out) == (5 if want_pseudo else 4)
        assert isinstance(out[0], float)
        shaped(out[1], (K,), np.float64)
        shaped(out[2], (K, C), np.float32)
        shaped(out[3], (K,), np.float32)
        if want_pseudo:
            shaped(out[4], (Bn, H, W), np.uint8)

    return (lambda: _core.em_step(w_, feats, masks, tv, tg, sv, sg, gamma, index=index, flip=flip,
                                  return_pseudo=want_pseudo)), check


def _probe(case: Case, grad: bool):
    feats, index, (n, C, h, w), _ = _batch(case)
    K = case.dim(1, 4)
    H, W = case.dim(1, 6), case.dim(1, 6)
    labels = case.ids("labels", [n, H, W], 0, K - 1, also=(255,), ndims=(3,))
    if index is not None:
        case.loosen("labels")
    weight = _protos(case, "weight", K, C)
    bias = case.floats("bias", [K + 1 if maybe(case, "bias") else K], ndims=(1,))
    w_ = ws_arg(case)
    fn = _core.probe_bwd if grad else _core.probe_fwd

    def check(out):
        loss = out[0] if grad else out
        assert isinstance(loss, float) and loss >= -1e-6
        if grad:
            shaped(out[1], (K, C), np.float32)
            shaped(out[2], (K,), np.float32)

    return (lambda: fn(w_, feats, labels, weight, bias, index=index)), check


@entry("_core.probe_fwd")
def _probe_fwd(case: Case):
    return _probe(case, False)


@entry("_core.probe_bwd")
def _probe_bwd(case: Case):
    return _probe(case, True)


@entry("_core.em_predict")
def _em_predict(case: Case):
    feats, index, (n, C, h, w), _ = _batch(case)
    K = case.dim(1, 4)
    theta = _protos(case, "theta", K, C)
    bias = None
    if case.draw(st.booleans()):
        bias = case.floats("bias", [K], ndims=(1,), optional=True)
    size = case.size2("size", 1, 10)
    w_ = ws_arg(case)

    def check(out):
        s = (int(size), int(size)) if np.ndim(size) == 0 else tuple(int(v) for v in size)
        Bn = _b(index, n)
        shaped(out, (Bn,) + s, np.int32)
        assert out.min() >= 0 and out.max() < K

    return (lambda: _core.em_predict(w_, feats, theta, size, bias=bias, index=index)), check


@entry("_core.as_label_map")
def _as_label_map(case: Case):
    K = case.number("n_classes", 1, 255, integer=True, bad=[0, 256, -1], wrong=[2.0, "3", None, True])
    k = int(K) if isinstance(K, (int, np.integer)) and not isinstance(K, bool) and 1 <= K <= 255 else 3
    shape = [case.dim(0, 3), case.dim(1, 5), case.dim(1, 5)]
    labels = case.ids("labels", shape, 0, k - 1, also=(255,))

    def check(out):
        shaped(out, np.shape(np.asarray(labels)), np.uint8)
        assert (out.astype(np.int64) == np.asarray(labels).astype(np.int64)).all()

    return (lambda: _core.as_label_map(labels, K)), check


@entry("_core.as_mask_map")
def _as_mask_map(case: Case):
    shape = [case.dim(0, 3), case.dim(1, 5), case.dim(1, 5)]
    masks = case.ids("masks", shape, 0, 65535)

    def check(out):
        shaped(out, np.shape(np.asarray(masks)), np.int32)
        assert (out.astype(np.int64) == np.asarray(masks).astype(np.int64)).all()

    return (lambda: _core.as_mask_map(masks)), check


# ----------------------------------------------------------- evaluation


def _pred_gt(case: Case, K: int, E: int):
    nd = case.draw(st.sampled_from([1, 2, 3]))
    shape = [case.dim(1, 3), case.dim(1, 6), case.dim(1, 6)][3 - nd:]
    pred = case.ids("pred", shape, 0, K + E - 1, kinds=("wrong_type", "bad_dtype", "float_ids", "bad_value"))
    gshape = list(shape)
    if maybe(case, "gt"):
        gshape[-1] += 1
    gt = case.ids("gt", gshape, 0, K - 1, also=(255, -1, K + 7),
                  kinds=("wrong_type", "bad_dtype", "float_ids"))
    return pred, gt


def _int_param(case, name, lo, hi, bad):
    return case.number(name, lo, hi, integer=True, bad=bad, wrong=[1.5, "2", None, True])


@entry("_core.confusion_matrix")
def _confusion_matrix(case: Case):
    K = _int_param(case, "n_classes", 1, 6, [0, -2, 2**40])
    E = _int_param(case, "extra_clusters", 0, 3, [-1, 2**40])
    k = int(K) if case.clean or isinstance(K, (int, np.integer)) and 1 <= K <= 6 else 3
    e = int(E) if isinstance(E, (int, np.integer)) and not isinstance(E, bool) and 0 <= E <= 3 else 0
    pred, gt = _pred_gt(case, k, e)

    def check(out):
        conf, skipped = out
        shaped(conf, (k + e, k), np.int64)
        p = np.asarray(pred).astype(np.int64)
        g = np.asarray(gt).astype(np.int64)
        want = metrics_twin.confusion_bincount(p, g, k, e)
        assert (conf == want).all()
        assert skipped == int(((g < 0) | (g >= k)).sum())

    return (lambda: _core.confusion_matrix(pred, gt, K, E)), check


@entry("evaluate", "Evaluator", "EvaluationReport")
def _evaluate(case: Case):
    K = _int_param(case, "n_classes", 1, 5, [0, -2])
    E = _int_param(case, "extra_clusters", 0, 2, [-1])
    k = int(K) if isinstance(K, (int, np.integer)) and not isinstance(K, bool) and 1 <= K <= 5 else 3
    e = int(E) if isinstance(E, (int, np.integer)) and not isinstance(E, bool) and 0 <= E <= 2 else 0
    pred, gt = _pred_gt(case, k, e)
    g = np.asarray(gt)
    if g.dtype.kind in "iu" and not ((g >= 0) & (g < k)).any():
        case.faults.append(("gt", "loose"))  # nothing to count: a documented ValueError
    how = case.draw(st.sampled_from(["evaluate", "evaluator", "lists"]))
    if how == "lists" and not (isinstance(pred, np.ndarray) and isinstance(gt, np.ndarray)):
        how = "evaluate"  # a list of nested lists is not a list of arrays

    def run():
        if how == "evaluate":
            return primaps.evaluate(pred, gt, K, extra_clusters=E)
        if how == "lists":
            return primaps.evaluate([pred, pred], [gt, gt], K, extra_clusters=E)
        ev = primaps.Evaluator(K, E)
        ev.update(pred, gt)
        ev.merge(ev)
        report = ev.compute()
        report.map_clusters(pred)
        return primaps.EvaluationReport.from_dict(report.to_dict())

    def check(report):
        assert isinstance(report, primaps.EvaluationReport)
        assert report.confusion.shape == (k + e, k)
        g = np.asarray(gt).astype(np.int64)
        p = np.asarray(pred).astype(np.int64)
        want = metrics_twin.confusion_bincount(p, g, k, e)
        assert report.n_pixels == int(want.sum()) * (1 if how == "evaluate" else 2)
        assert 0.0 <= report.accuracy <= 100.0

    # no counted pixel at all (every gt ignored) is a documented ValueError
    return run, check


# -------------------------------------------------------------- dense CRF


@entry("_core.dense_crf", "dense_crf", "DenseCRF")
def _dense_crf(case: Case):
    batched = case.draw(st.booleans())
    B, H, W, L = case.dim(1, 2), case.dim(1, 7), case.dim(1, 7), case.dim(1, 3)
    ishape = ([B] if batched else []) + [H, W, 3 + (1 if maybe(case, "image") else 0)]
    image = case.ids("image", ishape, 0, 255, dtypes=[np.uint8], ndims=(3, 4), lists=False,
                     kinds=("wrong_type", "bad_dtype", "float_ids", "ndim", "empty"))
    lshape = ([B] if batched else []) + [L, H, W + (1 if maybe(case, "logits") else 0)]
    logits = case.floats("logits", lshape, ndims=(3, 4) if not batched else (4,), scale=2.0)
    params = {}
    for name, strict in (("appearance_weight", False), ("appearance_theta_xy", True),
                         ("appearance_theta_rgb", True), ("smoothness_weight", False),
                         ("smoothness_theta_xy", True)):
        if case.draw(st.booleans()):
            params[name] = case.number(name, 0.5 if strict else 0.0, 80.0,
                                       bad=[-1.0, float("nan"), float("inf")] + ([0.0] if strict else []),
                                       wrong=["x", None])
    if case.draw(st.booleans()):
        params["min_prob"] = case.number("min_prob", 0.0, 0.5, bad=[1.0, -0.1, float("nan")], wrong=["x"])
    it = case.number("iterations", 0, 3, integer=True, bad=[-1, 10**7], wrong=[1.5, True, "3", None])
    how = case.draw(st.sampled_from(["core", "function", "class", "context"]))

    def run():
        if how == "core":
            return _core.dense_crf(image, logits, it, **params)
        if how == "function":
            return primaps.dense_crf(image, logits, it, **params)
        if how == "class":
            return primaps.DenseCRF(it, **params)(image, logits)
        return _core.dense_crf(image, logits, it, context=_core.crf_context(), **params)

    def check(q):
        shaped(q, np.shape(np.asarray(logits)), np.float32)
        assert np.isfinite(q).all()
        close(q.sum(axis=-3), np.ones(q.shape[:-3] + q.shape[-2:]), 1e-4, "sum over labels")

    return run, check


@entry("_core.permutohedral_filter", nonfinite_raises=False)
def _permutohedral(case: Case):
    N, d, V = case.dim(1, 30), case.dim(1, 6), case.dim(1, 3)
    feats = case.floats("features", [N, d + (1 if d == 6 and maybe(case, "d") else 0)], ndims=(2,),
                        scale=2.0)
    values = case.floats("values", [N + 1 if maybe(case, "values") else N, V], ndims=(2,))

    def check(out):
        shaped(out, (N, V), np.float32)
        if case.clean:
            assert np.isfinite(out).all()

    return (lambda: _core.permutohedral_filter(feats, values)), check


# ------------------------------------------------------------ estimators


def _em_data(case: Case):
    n, C, h, w = case.dim(1, 4), case.dim(2, 5), case.dim(1, 4), case.dim(1, 4)
    feats = case.floats("features", [n, C, h, w], ndims=(3, 4), lists=False,
                        kinds=("wrong_type", "bad_dtype", "nonfinite", "ndim"))
    H, W = case.dim(1, 6), case.dim(1, 6)
    # (features, None) is its own documented ValueError ("must be (features, masks...)")
    masks = case.ids("masks", [n, H, W], 0, 65535, ndims=(3,), lists=False, optional=True,
                     kinds=("wrong_type", "bad_dtype", "float_ids", "bad_value"))
    K = case.dim(1, 2)
    return feats, masks, (n, C, h, w, H, W, K)


@entry("PriMaPsEM", "PriMaPsEM.fit", "PriMaPsEM.predict", "PriMaPsEM.prototypes", examples=100)
def _em_fit(case: Case):
    feats, masks, (n, C, h, w, H, W, K) = _em_data(case)
    params = dict(
        n_classes=_int_param(case, "n_classes", 1, K, [0, 256, -1]),
        epochs=_int_param(case, "epochs", 0, 2, [-1]),
        warmup_epochs=_int_param(case, "warmup_epochs", 0, 1, [-1]),
        batch_size=_int_param(case, "batch_size", 1, 3, [0]),
        lr=case.number("lr", 1e-4, 0.1, bad=[0.0, -1.0, float("nan")], wrong=["x", None]),
        hflip=case.draw(st.booleans()),
        seed=case.draw(st.integers(0, 5)),
    )

    def run():
        em = primaps.PriMaPsEM(**params)
        em.fit((feats, masks), verbose=False)
        return em, em.predict(feats, (H, W)), em.prototypes("student")

    def check(out):
        em, pred, theta = out
        k = int(params["n_classes"])
        nn = np.shape(np.asarray(feats))
        shaped(theta, (k, nn[-3]), np.float32)
        assert np.isfinite(theta).all()
        assert pred.shape[-2:] == (H, W) and pred.dtype == np.int32
        assert pred.min() >= 0 and pred.max() < k

    return run, check


_FITTED = {}


def _fitted(K: int, C: int):
    if (K, C) not in _FITTED:
        v = np.random.default_rng(K * 10 + C).standard_normal((K, C)).astype(np.float32)
        _FITTED[K, C] = primaps.PriMaPsEM(K).init_from(v)
    return _FITTED[K, C]


@entry("PriMaPsEM.partial_fit", "PriMaPsEM.pseudo_labels", "PriMaPsEM.init_from", examples=200)
def _em_inference(case: Case):
    K, C = case.dim(1, 3), case.dim(1, 5)
    n, h, w, H, W = case.dim(1, 3), case.dim(1, 4), case.dim(1, 4), case.dim(1, 6), case.dim(1, 6)
    what = case.draw(st.sampled_from(["partial_fit", "pseudo_labels", "init_from"]))
    if what == "init_from":
        feats = masks = None
        protos = case.floats("prototypes", [K, C], ndims=(2,), lists=False)
    else:
        feats = case.floats("features", [n, C + 1 if maybe(case, "channels") else C, h, w],
                            ndims=(3, 4), lists=False)
        # (None: the EM without masks, a valid call)
        masks = case.ids("masks", [n, H, W], 0, 65535, ndims=(3,), lists=False, optional=True)

    def run():
        em = _fitted(K, C)
        if what == "pseudo_labels":
            return em.pseudo_labels(feats, masks)
        if what == "init_from":
            return primaps.PriMaPsEM(K).init_from(protos).prototypes()
        import copy

        em = copy.deepcopy(em)
        em.partial_fit((feats, masks))
        return em.prototypes("student")

    def check(out):
        if what == "pseudo_labels":
            shaped(out, (np.shape(np.asarray(feats))[0] if np.ndim(np.asarray(feats)) == 4 else 1, H, W),
                   np.uint8)
            assert ((out < K) | (out == 255)).all()
        else:
            shaped(out, (K, C), np.float32)
            assert np.isfinite(out).all()

    return run, check


@entry("LinearProbe", "LinearProbe.fit", "LinearProbe.predict", "LinearProbe.partial_fit", examples=100)
def _probe_fit(case: Case):
    n, C, h, w = case.dim(1, 4), case.dim(1, 5), case.dim(1, 4), case.dim(1, 4)
    K = case.dim(1, 3)
    feats = case.floats("features", [n, C, h, w], ndims=(3, 4), lists=False,
                        kinds=("wrong_type", "bad_dtype", "nonfinite", "ndim"))
    H, W = case.dim(1, 6), case.dim(1, 6)
    # (features, None) is its own documented ValueError, as for PriMaPsEM
    labels = case.ids("labels", [n, H, W], 0, K - 1, also=(255,), ndims=(3,), lists=False,
                      optional=True, kinds=("wrong_type", "bad_dtype", "float_ids", "bad_value"))
    epochs = _int_param(case, "epochs", 1, 2, [-1])
    partial = case.draw(st.booleans())

    def run():
        probe = primaps.LinearProbe(K, epochs=epochs, batch_size=2)
        if partial:
            probe.partial_fit((feats, labels))
        else:
            probe.fit((feats, labels), verbose=False)
        return probe.predict(feats, (H, W))

    def check(pred):
        assert pred.shape[-2:] == (H, W) and pred.dtype == np.int32
        assert pred.min() >= 0 and pred.max() < K

    return run, check


# ---------------------------------------------------------- feature store


@entry("FeatureStore", "FeatureStoreError", "FeatureStore.append", "FeatureStore.write_masks",
       "FeatureStore.read_masks", "FeatureStore.batches", examples=120)
def _feature_store(case: Case):
    n, C, h, w = case.dim(1, 3), case.dim(1, 4), case.dim(1, 3), case.dim(1, 3)
    feats = case.floats("features", [n, C, h, w], ndims=(4,),
                        kinds=("wrong_type", "bad_dtype", "ndim", "nonfinite", "huge", "empty"),
                        scale=10.0)
    ids = [f"img{i}" for i in range(n)]
    if case.fault("ids", ["wrong_type", "bad_value"]):
        ids = case.draw(st.sampled_from(["img0", [1] * n, ids[:-1] + ids[:1], ids + ["x"]]))
        if ids == "img0":
            case.faults[-1] = ("ids", "wrong_type")
        elif ids == [1] * n:
            case.faults[-1] = ("ids", "wrong_type")
        else:
            case.faults[-1] = ("ids", "bad_value")
        if n == 1 and ids == ["img0"]:  # a list of one id duplicated is the same list
            case.unfault("ids", "bad_value")
    H, W = case.dim(1, 5), case.dim(1, 5)
    masks = case.ids("masks", [n, H, W], 0, 70000, ndims=(3,),
                     kinds=("wrong_type", "bad_dtype", "float_ids", "ndim", "empty"))
    dtype = case.draw(st.sampled_from(["float16", "float32"]))

    def run():
        with tempfile.TemporaryDirectory() as tmp:
            store = primaps.FeatureStore(os.path.join(tmp, "s"), dtype=dtype)
            try:
                store.append(ids, feats)
                store.write_masks(ids[: len(ids)], masks)
                batches = list(store.batches(2, seed=0, masks=True))
                again = primaps.FeatureStore(os.path.join(tmp, "s"), mode="r")
                again.verify()
                got = np.stack([again.read_masks(i) for i in ids])
                return batches, got, again[ids[0]]
            finally:
                store.close()

    def check(out):
        batches, got, first = out
        assert sum(len(b[0]) for b in batches) == n
        want = np.asarray(masks).astype(np.int64)
        assert (got.astype(np.int64) == want).all()
        assert first.shape == (C, h, w) and first.dtype == np.dtype(dtype)

    return run, check


# ----------------------------------------------------------------- viz


@entry("viz.colorize", "viz.default_palette")
def _colorize(case: Case):
    K = case.dim(1, 12)
    labels = case.ids("labels", [case.dim(1, 5), case.dim(1, 5)], 0, K - 1, also=(255,),
                      kinds=("wrong_type", "bad_dtype", "float_ids"))
    from primaps import viz

    def run():
        return viz.colorize(labels, viz.default_palette(K))

    def check(rgb):
        shaped(rgb, np.shape(np.asarray(labels)) + (3,), np.uint8)

    return run, check



# ------------------------------------------------------------ mask proposals


@entry("_core.masks", "masks")
def _masks_entry(case: Case):
    batched = case.draw(st.booleans())
    B, C, h, w = case.dim(1, 3), case.dim(1, 6), case.dim(1, 6), case.dim(1, 6)
    shape = ([B] if batched else []) + [C, h, w]
    feats = case.floats("features", shape, ndims=(3, 4))
    kw = {}
    if case.draw(st.booleans()):
        kw["threshold"] = case.number("threshold", 0.05, 0.95, bad=[0.0, 1.0, -0.5, float("nan")],
                                      wrong=["x", None])
    if case.draw(st.booleans()):
        kw["stop_fraction"] = case.number("stop_fraction", 0.05, 1.0, bad=[0.0, 1.5, float("nan")],
                                          wrong=["x", None])
    if case.draw(st.booleans()):
        kw["gain"] = case.number("gain", 0.5, 20.0, bad=[0.0, -1.0, float("inf")], wrong=["x", None])
    if case.draw(st.booleans()):
        kw["median_size"] = case.number("median_size", 0, 2, integer=True, bad=[-1, 2, 64],
                                        wrong=[1.5, "3", True])
        if isinstance(kw["median_size"], (int, np.integer)) and not isinstance(kw["median_size"], bool) \
                and 0 <= kw["median_size"] <= 2 and ("median_size", "bad_value") not in case.faults:
            kw["median_size"] = 2 * int(kw["median_size"]) + 1  # 1, 3, 5
    if case.draw(st.booleans()):
        kw["max_masks"] = case.number("max_masks", 1, 5, integer=True, bad=[0, -2], wrong=[1.5, "2"])
    out_size = None
    if case.draw(st.booleans()):
        out_size = case.size2("out_size", 1, 12, optional=True)
        kw["out_size"] = out_size
    kw["return_info"] = case.draw(st.booleans())
    fn = case.draw(st.sampled_from(["python", "core"]))
    crf_size = None
    if fn == "python" and case.draw(st.integers(0, 3)) == 0:  # refined by a dense CRF
        kw.pop("out_size", None)
        out_size = None
        for kind in ("wrong_type", "bad_value"):
            case.unfault("out_size", kind)
        crf_size = (case.dim(1, 9), case.dim(1, 9))
        ishape = ([B] if batched else []) + list(crf_size) + [3]
        # (crf without images is its own documented ValueError)
        kw["images"] = case.ids("images", ishape, 0, 255, dtypes=[np.uint8], ndims=(3, 4), lists=False,
                                optional=True, kinds=("wrong_type", "bad_dtype", "float_ids", "ndim"))
        kw["crf"] = case.draw(st.sampled_from([True, "dense"]))
        if kw["crf"] == "dense":
            kw["crf"] = primaps.DenseCRF(iterations=2)

    def run():
        if fn == "core":
            return _core.masks(feats, **{k: v for k, v in kw.items() if k != "return_info"})
        return primaps.masks(feats, **kw)

    def check(out):
        fs = np.shape(np.asarray(feats))
        size = crf_size if crf_size else fs[-2:] if out_size is None else (
            (int(out_size), int(out_size)) if np.ndim(out_size) == 0 else tuple(int(v) for v in out_size))
        if fn == "core":
            maps = out[0]
            shaped(maps, ((fs[0],) if len(fs) == 4 else (1,)) + tuple(size), np.int32)
        else:
            maps = out[0] if kw["return_info"] else out
            shaped(maps, (fs[:1] if len(fs) == 4 else ()) + tuple(size), np.int32)
        m = maps.reshape((-1,) + maps.shape[-2:])
        for img in m:  # 0 = background, 1..n consecutive
            ids = np.unique(img)
            assert ids.min() >= 0
            nz = ids[ids > 0]
            assert np.array_equal(nz, np.arange(1, nz.size + 1)), ids

    return run, check


def covered() -> set:
    return {name for e in REGISTRY for name in e.covers}
