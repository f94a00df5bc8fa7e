"""Repeated calls of every entry point of primaps._core, on valid input and
on each kind of refused input, leave the process's resident memory and the
reference counts of their inputs unchanged.  (tests/test_fuzz.py also
checks the reference counts of every fuzzed call.)"""

from __future__ import annotations

import gc
import sys

import numpy as np
import pytest

from primaps import _core

N, C, h, w, K, H, W = 4, 16, 16, 16, 5, 48, 48
REPEAT = 300  # a leak of the smallest converted input (16 KiB) grows RSS by 5 MiB


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _inputs():
    rng = np.random.default_rng(0)
    d = {
        "f64": rng.standard_normal((N, C, h, w)),  # float64: converted on every call
        "f32": rng.standard_normal((N, C, h, w)).astype(np.float32),
        "v": rng.standard_normal((K, C)),
        "g": np.ones(K),
        "masks": rng.integers(0, 6, (N, H, W)).astype(np.int64),  # converted
        "labels": rng.integers(0, K, (N, H, W)).astype(np.int64),
        "bad_labels": np.full((N, H, W), 7, np.int64),
        "z": rng.standard_normal((N, K, h, w)),
        "nan": np.full((N, C, h, w), np.nan),
        "index": np.array([2, 0, 1], np.int32),
        "image": rng.integers(0, 256, (12, 12, 3)).astype(np.uint8),
        "crf_logits": rng.standard_normal((3, 12, 12)),
        "pred": rng.integers(0, K, (N, H, W)).astype(np.int8),
        "bad_pred": np.full((N, H, W), -1, np.int16),
        "pf": rng.standard_normal((200, 3)),
        "pv": rng.standard_normal((200, 2)),
    }
    d["ws"] = _core.em_workspace()
    d["ctx"] = _core.crf_context()
    return d


CALLS = {
    "l2_normalize": lambda d: _core.l2_normalize(d["f64"]),
    "l2_normalize/nan": lambda d: _core.l2_normalize(d["nan"]),
    "upsample_bilinear": lambda d: _core.upsample_bilinear(d["f64"], (20, 20)),
    "upsample_bilinear/size": lambda d: _core.upsample_bilinear(d["f64"], (0, 3)),
    "upsample_bilinear_adjoint": lambda d: _core.upsample_bilinear_adjoint(d["f64"], 8),
    "weightnorm_fwd": lambda d: _core.weightnorm_fwd(d["v"], d["g"]),
    "weightnorm_bwd": lambda d: _core.weightnorm_bwd(d["v"], d["g"], d["v"]),
    "weightnorm_bwd/shape": lambda d: _core.weightnorm_bwd(d["v"], d["g"], d["v"][:, 1:]),
    "label_softmax_mean": lambda d: _core.label_softmax_mean(d["ws"], d["z"], (H, W)),
    "label_ce_bwd": lambda d: _core.label_ce_bwd(d["ws"], d["z"], d["labels"], d["g"], 1.0),
    "label_ce_fwd/labels": lambda d: _core.label_ce_fwd(d["ws"], d["z"], d["bad_labels"], d["g"], 1.0),
    "label_argmax": lambda d: _core.label_argmax(d["ws"], d["z"], (H, W)),
    "kmeans_bwd": lambda d: _core.kmeans_bwd(d["ws"], d["f64"], d["v"], index=d["index"]),
    "kmeans_fwd/nan": lambda d: _core.kmeans_fwd(d["ws"], d["nan"], d["v"]),
    "focal_bwd": lambda d: _core.focal_bwd(d["ws"], d["f64"], d["labels"], d["v"], d["g"], 2.0,
                                           student_features=d["f32"], flip=[1, 0, 1, 0]),
    "focal_fwd/labels": lambda d: _core.focal_fwd(d["ws"], d["f64"], d["bad_labels"], d["v"], d["g"], 2.0),
    "teacher_pseudo": lambda d: _core.teacher_pseudo(d["ws"], d["f64"], d["masks"], d["v"]),
    "teacher_pseudo/none": lambda d: _core.teacher_pseudo(d["ws"], d["f64"], None, d["v"]),
    "em_step": lambda d: _core.em_step(d["ws"], d["f64"], d["masks"], d["v"], d["g"], d["v"], d["g"],
                                       2.0, index=d["index"], return_pseudo=True),
    "em_step/index": lambda d: _core.em_step(d["ws"], d["f64"], d["masks"], d["v"], d["g"], d["v"],
                                             d["g"], 2.0, index=d["index"] * 10),
    "probe_bwd": lambda d: _core.probe_bwd(d["ws"], d["f64"], d["labels"], d["v"], d["g"]),
    "probe_fwd/float_index": lambda d: _core.probe_fwd(d["ws"], d["f64"], d["labels"], d["v"], d["g"],
                                                       index=d["index"] * 1.0),
    "em_predict": lambda d: _core.em_predict(d["ws"], d["f64"], d["v"], (H, W), bias=d["g"]),
    "em_predict/size": lambda d: _core.em_predict(d["ws"], d["f64"], d["v"], 2**40),
    "as_label_map": lambda d: _core.as_label_map(d["labels"], K),
    "as_label_map/values": lambda d: _core.as_label_map(d["bad_labels"], K),
    "as_mask_map": lambda d: _core.as_mask_map(d["masks"]),
    "confusion_matrix": lambda d: _core.confusion_matrix(d["pred"], d["labels"], K),
    "confusion_matrix/pred": lambda d: _core.confusion_matrix(d["bad_pred"], d["labels"], K),
    "dense_crf": lambda d: _core.dense_crf(d["image"], d["crf_logits"], 2, context=d["ctx"]),
    "dense_crf/dtype": lambda d: _core.dense_crf(d["crf_logits"], d["crf_logits"], 2),
    "permutohedral_filter": lambda d: _core.permutohedral_filter(d["pf"], d["pv"]),
    "em_workspace": lambda d: _core.em_workspace_bytes(_core.em_workspace()),
    "crf_context": lambda d: _core.crf_context(),
    "build_info": lambda d: _core.build_info(),
    "masks": lambda d: _core.masks(d["f64"], out_size=(H, W), return_soft=True),
    "masks/nan": lambda d: _core.masks(d["nan"]),
    "masks/threshold": lambda d: _core.masks(d["f64"], threshold=1.5),
}


def _call(fn, d):
    try:
        fn(d)
    except (TypeError, ValueError, MemoryError):
        pass


def test_every_core_function_has_a_leak_case():
    names = {n for n in dir(_core) if not n.startswith("_") and callable(getattr(_core, n))}
    covered = {k.split("/")[0] for k in CALLS} | {"em_workspace_bytes", "set_num_threads",
                                                  "get_num_threads"}
    assert names <= covered, sorted(names - covered)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_repeated_calls_keep_reference_counts(name):
    d = _inputs()
    fn = CALLS[name]
    _call(fn, d)
    gc.collect()
    refs = {k: sys.getrefcount(v) for k, v in d.items()}
    for _ in range(20):
        _call(fn, d)
    gc.collect()
    assert {k: sys.getrefcount(v) for k, v in d.items()} == refs


@pytest.mark.rss
@pytest.mark.parametrize("name", sorted(CALLS))
def test_repeated_calls_keep_resident_memory(name):
    d = _inputs()
    fn = CALLS[name]
    for _ in range(20):  # warm up: caches, workspaces, the allocator's arenas
        _call(fn, d)
    gc.collect()
    before = _rss()
    for _ in range(REPEAT):
        _call(fn, d)
    gc.collect()
    grown = _rss() - before
    assert grown < 3 << 20, f"{name}: resident memory grew by {grown / 2**20:.1f} MiB in {REPEAT} calls"
