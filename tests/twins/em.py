"""Twins of em.c in float64: weight norm, logits, the label-resolution
softmax / cross-entropy / argmax (written on explicitly upsampled logits),
cosine K-means, the focal loss, pseudo labels, the linear probe, and the
"original formulation" on upsampled features."""

from __future__ import annotations

import numpy as np

from .resample import upsample_bilinear, upsample_bilinear_adjoint

IGNORE = 255


def weightnorm(v, g):
    v = np.asarray(v, np.float64)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    u = np.divide(v, n, out=np.zeros_like(v), where=n > 0)
    return np.asarray(g, np.float64)[:, None] * u


def weightnorm_bwd(v, g, dtheta):
    """Gradients of sum(dtheta * weightnorm(v, g)) by the Jacobian, written
    out entry by entry (not by the projection formula of em.c)."""
    v = np.asarray(v, np.float64)
    g = np.asarray(g, np.float64)
    dtheta = np.asarray(dtheta, np.float64)
    K, C = v.shape
    dv = np.zeros_like(v)
    dg = np.zeros(K)
    for k in range(K):
        n = np.linalg.norm(v[k])
        if n == 0:
            continue
        # d theta_kc / d v_kd = g (delta_cd / n - v_c v_d / n^3)
        J = g[k] * (np.eye(C) / n - np.outer(v[k], v[k]) / n**3)
        dv[k] = dtheta[k] @ J
        dg[k] = dtheta[k] @ (v[k] / n)
    return dv, dg


def logits(theta, F, bias=None):
    z = np.einsum("kc,bchw->bkhw", np.asarray(theta, np.float64), np.asarray(F, np.float64))
    if bias is not None:
        z = z + np.asarray(bias, np.float64)[None, :, None, None]
    return z


def softmax(z, axis=1):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def label_softmax_mean(Z, size):
    return softmax(upsample_bilinear(Z, size)).mean(axis=(0, 2, 3))


def label_ce_upsampled(t, labels, weights, scale):
    """Loss and gradient with respect to label-resolution logits t."""
    labels = np.asarray(labels)
    K = t.shape[1]
    valid = labels != IGNORE
    y = np.where(valid, labels, 0).astype(np.int64)
    logp = t - t.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    w = np.asarray(weights, np.float64)[y] * valid
    lp_y = np.take_along_axis(logp, y[:, None], axis=1)[:, 0]
    loss = -scale * np.sum(w * lp_y)
    onehot = (np.arange(K)[None, :, None, None] == y[:, None]).astype(np.float64)
    dt = scale * w[:, None] * (np.exp(logp) - onehot)
    return loss, dt


def label_ce(Z, labels, weights, scale):
    """Weighted CE of the logits Z (B, K, h, w) upsampled to the labels' size,
    and its gradient with respect to Z (through the adjoint)."""
    labels = np.asarray(labels)
    t = upsample_bilinear(Z, labels.shape[-2:])
    loss, dt = label_ce_upsampled(t, labels, weights, scale)
    return loss, upsample_bilinear_adjoint(dt, Z.shape[-2:])


def label_argmax(Z, size):
    return upsample_bilinear(Z, size).argmax(axis=1).astype(np.int32)


def focal_weights(chi, gamma):
    return np.clip(1.0 - np.asarray(chi), 0.0, None) ** gamma


def focal(v, g, F, labels, gamma, student=None):
    """The focal loss of PriMaPs-EM with the resolution trick: loss, chi, dv, dg."""
    Fs = np.asarray(F if student is None else student, np.float64)
    theta = weightnorm(v, g)
    Z = logits(theta, Fs)
    labels = np.asarray(labels)
    H, W = labels.shape[-2:]
    chi = label_softmax_mean(Z, (H, W))
    wt = focal_weights(chi, gamma)
    loss, dZ = label_ce(Z, labels, wt, 1.0 / labels.size)
    dtheta = np.einsum("bkhw,bchw->kc", dZ, Fs)
    dv, dg = weightnorm_bwd(v, g, dtheta)
    return loss, chi, dv, dg


def focal_loss_fixed(v, g, F, labels, weights):
    """The focal loss with the class weights held fixed (for finite
    differences: chi is a constant of the gradient)."""
    Z = logits(weightnorm(v, g), F)
    labels = np.asarray(labels)
    return label_ce(Z, labels, weights, 1.0 / labels.size)[0]


def focal_original(v, g, F, labels, gamma):
    """The original formulation: features upsampled to the label size, the
    weight-normed 1x1 convolution there.  loss, chi, dtheta."""
    labels = np.asarray(labels)
    Fu = upsample_bilinear(np.asarray(F, np.float64), labels.shape[-2:])
    theta = weightnorm(v, g)
    t = logits(theta, Fu)
    chi = softmax(t).mean(axis=(0, 2, 3))
    loss, dt = label_ce_upsampled(t, labels, focal_weights(chi, gamma), 1.0 / labels.size)
    return loss, chi, np.einsum("bkhw,bchw->kc", dt, Fu)


def kmeans(v, F):
    """Cosine K-means loss -mean_p max_k cos(v_k, F_p) and d/dv."""
    v = np.asarray(v, np.float64)
    F = np.asarray(F, np.float64)
    K, C = v.shape
    u = weightnorm(v, np.ones(K))
    n = np.linalg.norm(F, axis=1, keepdims=True)
    f = np.divide(F, n, out=np.zeros_like(F), where=n > 0)
    cos = np.einsum("kc,bchw->bkhw", u, f)
    best = cos.argmax(axis=1)
    P = F.shape[0] * F.shape[2] * F.shape[3]
    loss = -np.take_along_axis(cos, best[:, None], axis=1).sum() / P
    onehot = (np.arange(K)[None, :, None, None] == best[:, None]).astype(np.float64)
    du = -np.einsum("bkhw,bchw->kc", onehot, f) / P
    dv, _ = weightnorm_bwd(v, np.ones(K), du)
    return loss, dv


def kmeans_loss_fixed(v, F, assign):
    """K-means loss with the assignment held fixed (for finite differences)."""
    v = np.asarray(v, np.float64)
    F = np.asarray(F, np.float64)
    u = weightnorm(v, np.ones(v.shape[0]))
    n = np.linalg.norm(F, axis=1, keepdims=True)
    f = np.divide(F, n, out=np.zeros_like(F), where=n > 0)
    cos = np.einsum("kc,bchw->bkhw", u, f)
    P = F.shape[0] * F.shape[2] * F.shape[3]
    return -np.take_along_axis(cos, assign[:, None], axis=1).sum() / P


def mode_labels(t, masks):
    """For each image: every mask id >= 1 gets the most frequent class of t
    over its pixels (ties: the smallest class); background 255."""
    t = np.asarray(t)
    masks = np.asarray(masks)
    out = np.full(masks.shape, IGNORE, np.uint8)
    for b in range(masks.shape[0]):
        for i in np.unique(masks[b]):
            if i == 0:
                continue
            sel = masks[b] == i
            counts = np.bincount(t[b][sel])
            out[b][sel] = np.argmax(counts)  # first maximum: the smallest class
    return out


def teacher_pseudo(theta, F, masks):
    masks = np.asarray(masks)
    t = label_argmax(logits(theta, F), masks.shape[-2:])
    return mode_labels(t, masks)


def probe(weight, bias, F, labels):
    """Linear probe: loss, dweight, dbias (mean over all pixels)."""
    F = np.asarray(F, np.float64)
    labels = np.asarray(labels)
    Z = logits(weight, F, bias)
    K = Z.shape[1]
    loss, dZ = label_ce(Z, labels, np.ones(K), 1.0 / labels.size)
    return loss, np.einsum("bkhw,bchw->kc", dZ, F), dZ.sum(axis=(0, 2, 3))


def predict(theta, F, size, bias=None):
    return label_argmax(logits(theta, F, bias), size)


def ema_decay(j, beta):
    """The warm-up schedule, as docs/method.md §1.2 states it."""
    return 0.0 if j <= 2 else min(beta, 1.0 - 1.0 / j)


class AdamRef:
    """Adam as in Kingma & Ba (2015), Algorithm 1, in float64."""

    def __init__(self, shape, lr, b1=0.9, b2=0.999, eps=1e-8):
        self.m = np.zeros(shape)
        self.v = np.zeros(shape)
        self.t = 0
        self.lr, self.b1, self.b2, self.eps = lr, b1, b2, eps

    def step(self, p, g):
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        mhat = self.m / (1 - self.b1**self.t)
        vhat = self.v / (1 - self.b2**self.t)
        return p - self.lr * mhat / (np.sqrt(vhat) + self.eps)
