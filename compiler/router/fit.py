"""Router training (BCE toward the soft TV label) and its validation report: loss, AUC of the
predicted rejection against the real rejections, and calibration bins (predicted acceptance vs
observed acceptance and 1 - TV). The confidence baseline (M_S's top probability) is scored the
same way, so the report says whether the MLP predicts better than the signal it replaces."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from compiler.router.collect import RouterData
from compiler.router.features import init_router, p_reject, reject_logit


def split(data: RouterData, val_fraction: float, seed: int = 0) -> tuple[RouterData, RouterData]:
    n = len(data.tv)
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * val_fraction)))
    val, tr = perm[:k], perm[k:]
    return RouterData(*(f[tr] for f in data)), RouterData(*(f[val] for f in data))


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of score for the positive class (ties count half)."""
    positive = np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score)[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i : j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = np.empty(len(s))
    r[order] = ranks
    return float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def calibration(pred_accept: np.ndarray, data: RouterData, bins: int = 10) -> list[dict]:
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        m = (pred_accept >= lo) & ((pred_accept < hi) | (hi == 1.0))
        if m.any():
            out.append({
                "bin": f"{lo:.1f}-{hi:.1f}", "n": int(m.sum()),
                "predicted_accept": float(pred_accept[m].mean()),
                "observed_accept": float(1 - data.reject[m].mean()),
                "one_minus_tv": float(1 - data.tv[m].mean()),
            })  # fmt: skip
    return out


def bce(logit: np.ndarray, y: np.ndarray) -> float:
    return float(optax.sigmoid_binary_cross_entropy(jnp.asarray(logit), jnp.asarray(y)).mean())


@dataclass
class FitResult:
    router: dict
    report: dict


def evaluate(router: dict, data: RouterData, activation: str) -> dict:
    logit = np.asarray(reject_logit(router, jnp.asarray(data.x), activation))
    pred = 1 / (1 + np.exp(-logit))
    return {
        "n": len(data.tv),
        "bce": bce(logit, data.tv),
        "auc_router": auc(pred, data.reject),
        "auc_confidence": auc(-data.top_p, data.reject),  # low confidence -> rejection
        "auc_router_tv": auc(pred, data.tv > np.median(data.tv)),
        "reject_rate": float(data.reject.mean()),
        "mean_tv": float(data.tv.mean()),
        "calibration": calibration(1 - pred, data),
    }


def fit(train: RouterData, val: RouterData, hidden: int, activation: str, steps: int,
        batch: int = 512, lr: float = 3e-3, seed: int = 0, progress=None,
        init: dict | None = None, start_step: int = 0, checkpoint=None,
        every: int = 200) -> FitResult:  # fmt: skip
    """BCE toward tv; features standardized by the training split's statistics."""
    n_in = train.x.shape[1]
    router = init if init is not None else init_router(jax.random.key(seed), n_in, hidden)
    if init is None:
        router["mean"] = jnp.asarray(train.x.mean(0))
        router["std"] = jnp.asarray(train.x.std(0) + 1e-3)
    stats = {k: router[k] for k in ("mean", "std")}
    weights = {k: v for k, v in router.items() if k not in stats}
    opt = optax.adamw(optax.cosine_decay_schedule(lr, max(steps, 1)), weight_decay=1e-4)
    opt_state = opt.init(weights)
    x_all, y_all = jnp.asarray(train.x), jnp.asarray(train.tv)

    @jax.jit
    def step(weights, opt_state, idx):
        def loss(w):
            z = reject_logit({**w, **stats}, x_all[idx], activation)
            return optax.sigmoid_binary_cross_entropy(z, y_all[idx]).mean()

        val, g = jax.value_and_grad(loss)(weights)
        upd, opt_state = opt.update(g, opt_state, weights)
        return optax.apply_updates(weights, upd), opt_state, val

    rng = np.random.default_rng(seed + start_step)
    n = len(train.tv)
    loss = float("nan")
    for s in range(start_step + 1, steps + 1):
        idx = jnp.asarray(rng.integers(0, n, min(batch, n)))
        weights, opt_state, loss = step(weights, opt_state, idx)
        if progress is not None and (s % 50 == 0 or s == steps):
            progress(s, steps, float(loss))
        if checkpoint is not None and (s % every == 0 or s == steps):
            checkpoint(s, {**weights, **stats})
    router = {**weights, **stats}
    report = {
        "train": evaluate(router, train, activation),
        "val": evaluate(router, val, activation),
    }
    return FitResult(router, report)


__all__ = ["FitResult", "auc", "calibration", "evaluate", "fit", "p_reject", "split"]
