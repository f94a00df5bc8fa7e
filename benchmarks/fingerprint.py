"""SHA-256 fingerprints of every kernel's output on fixed inputs.

A refactoring of the C core or the Python layer must not change a bit of
any result.  This program runs each public entry on seeded inputs (the
demo's street scenes, the benchmarks' (384, 40, 40) region features and a
noise image, a generated photo for the dense CRF) with 1 and 2 threads and
prints one line per output: its name and the SHA-256 of its bytes.  Run it
before and after a change and compare:

    python benchmarks/fingerprint.py > before.txt
    ... change ...
    python benchmarks/fingerprint.py > after.txt && diff before.txt after.txt

The threads' lines must also agree with each other (the kernels are
bitwise identical for any thread count); the program exits with 1 if they
do not.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

import primaps
from primaps.datasets.street import street_scenes
from primaps.datasets.synthetic import region_features


def digest(x) -> str:
    a = np.ascontiguousarray(np.asarray(x))
    return hashlib.sha256(a.tobytes() + str((a.dtype, a.shape)).encode()).hexdigest()[:16]


def outputs() -> dict[str, str]:
    out: dict[str, str] = {}
    scenes = street_scenes(40, seed=0)
    F, L = scenes.features[:32], scenes.labels[:32]
    Fv, Lv = scenes.features[32:], scenes.labels[32:]
    big = region_features((384, 40, 40), 4, seed=1).features
    noise = np.random.default_rng(2).standard_normal((1, 384, 24, 24)).astype(np.float32)

    out["l2_normalize"] = digest(primaps.l2_normalize(big))
    out["upsample_bilinear"] = digest(primaps.upsample_bilinear(big[:, :16], (320, 320)))
    out["upsample_bilinear_adjoint"] = digest(
        primaps.upsample_bilinear_adjoint(primaps.upsample_bilinear(big[:, :16], (77, 91)), (40, 40)))
    m, soft, info = primaps.masks(big, return_soft=True, return_info=True)
    out["masks(regions)"] = digest(m)
    out["masks(regions).soft"] = digest(np.concatenate([s.ravel() for s in soft]))
    out["masks(regions, 320)"] = digest(primaps.masks(big, out_size=(320, 320)))
    out["masks(noise)"] = digest(primaps.masks(noise))
    masks = primaps.masks(F, out_size=(160, 160))
    out["masks(street, 160)"] = digest(masks)

    em = primaps.PriMaPsEM(scenes.n_classes, warmup_epochs=1, epochs=3, batch_size=8, seed=0)
    em.fit((F, masks))
    out["em.teacher"] = digest(np.concatenate([em.teacher_.v.ravel(), em.teacher_.g]))
    out["em.student"] = digest(np.concatenate([em.student_.v.ravel(), em.student_.g]))
    out["em.loss_history"] = digest(np.asarray(em.loss_history_, np.float64))
    pred = em.predict(Fv, (160, 160))
    out["em.predict"] = digest(pred)
    out["em.pseudo_labels"] = digest(em.pseudo_labels(F[:4], masks[:4]))
    nomask = primaps.PriMaPsEM(scenes.n_classes, warmup_epochs=1, epochs=2, batch_size=8, seed=0)
    nomask.fit((F, None), label_size=160)
    out["em_no_masks.teacher"] = digest(nomask.teacher_.v)

    probe = primaps.LinearProbe(scenes.n_classes, epochs=2, batch_size=8)
    probe.fit((F, L))
    out["probe.predict"] = digest(probe.predict(Fv, (160, 160)))

    ev = primaps.Evaluator(scenes.n_classes)
    ev.update(pred, Lv)
    r = ev.compute()
    out["confusion"] = digest(ev.confusion)
    out["report"] = digest(np.array([r.accuracy, r.miou, *np.nan_to_num(r.iou)]))

    rng = np.random.default_rng(3)
    image = np.repeat(np.repeat(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), 8, 0), 8, 1)
    logits = rng.standard_normal((5, 96, 128)).astype(np.float32)
    out["dense_crf"] = digest(primaps.dense_crf(image, logits))
    out["dense_crf(theta_xy=6)"] = digest(primaps.dense_crf(image, logits, smoothness_theta_xy=6.0))
    out["masks(crf)"] = digest(primaps.masks(F[:2], images=scenes.palette[L[:2]].astype(np.uint8),
                                             crf=True))
    return out


def main() -> int:
    runs = {}
    for n in (1, 2):
        primaps.set_num_threads(n)
        runs[n] = outputs()
    ok = True
    for name, h in runs[1].items():
        same = runs[2][name] == h
        ok &= same
        print(f"{name:28s} {h}" + ("" if same else f"  (2 threads: {runs[2][name]})"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
