"""Bootstrap confidence intervals for error rates, resampling whole utterances.

An error rate is a ratio of sums, ``sum(errors) / sum(ref_len)``, over utterances; errors inside one
utterance are correlated, so the unit of resampling is the utterance (Bisani & Ney, "Bootstrap
estimates for confidence intervals in ASR performance evaluation", ICASSP 2004). Intervals are
percentile intervals. The paired version draws the same utterances for both systems, which is what
makes a small but consistent improvement visible.
"""

from __future__ import annotations

import numpy as np

# Rows of the (resamples, utterances) index matrix drawn at once: bounds memory for big test sets.
_CHUNK_ELEMS = 4_000_000


def _resampled_sums(values: list[np.ndarray], n_resamples: int, seed: int) -> list[np.ndarray]:
    """Sum each ``values[k]`` (N,) over ``n_resamples`` resamples of N utterances with replacement.

    Returns one ``(n_resamples,)`` array per input; all inputs see the same resampled indices.
    """
    n = len(values[0])
    rng = np.random.default_rng(seed)
    out = [np.empty(n_resamples, dtype=np.float64) for _ in values]
    rows = max(1, _CHUNK_ELEMS // max(n, 1))
    for start in range(0, n_resamples, rows):
        stop = min(n_resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        for v, o in zip(values, out, strict=True):
            o[start:stop] = v[idx].sum(axis=1)
    return out


def _rate(errors: np.ndarray, totals: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = errors / totals
    # A resample with no reference words at all: 0/0 is no error, k/0 is unbounded.
    r = np.where(totals > 0, r, np.where(errors > 0, np.inf, 0.0))
    return r


def bootstrap_ci(
    errors: np.ndarray,
    ref_lens: np.ndarray,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the error rate ``sum(errors)/sum(ref_lens)``.

    ``errors`` and ``ref_lens`` are per-utterance counts, shape (N,). Returns ``(lo, hi)`` as
    fractions (not percent); ``(nan, nan)`` when N == 0.
    """
    errors = np.asarray(errors, dtype=np.float64)
    ref_lens = np.asarray(ref_lens, dtype=np.float64)
    if errors.shape != ref_lens.shape or errors.ndim != 1:
        raise ValueError(f"errors {errors.shape} and ref_lens {ref_lens.shape} must both be (N,)")
    if len(errors) == 0:
        return float("nan"), float("nan")
    e, t = _resampled_sums([errors, ref_lens], n_resamples, seed)
    rates = _rate(e, t)
    lo, hi = np.quantile(rates, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_bootstrap(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    ref_lens: np.ndarray,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Paired bootstrap of two systems scored on the same utterances, all arrays (N,).

    Returns fractions: ``rate_a``, ``rate_b``, ``delta`` (= rate_b - rate_a, negative when B is
    better), ``delta_lo``/``delta_hi`` (percentile interval of the delta) and ``p_b_better``: the
    share of resamples in which B has the lower error rate, ties counted as half, so two identical
    systems give 0.5 rather than 0.
    """
    a = np.asarray(errors_a, dtype=np.float64)
    b = np.asarray(errors_b, dtype=np.float64)
    t = np.asarray(ref_lens, dtype=np.float64)
    if not (a.shape == b.shape == t.shape) or a.ndim != 1:
        raise ValueError(f"shapes differ: {a.shape}, {b.shape}, {t.shape}; all must be (N,)")
    if len(a) == 0:
        raise ValueError("paired bootstrap needs at least one utterance")
    total = t.sum()
    rate_a = float(_rate(np.array([a.sum()]), np.array([total]))[0])
    rate_b = float(_rate(np.array([b.sum()]), np.array([total]))[0])
    ea, eb, tt = _resampled_sums([a, b, t], n_resamples, seed)
    ra, rb = _rate(ea, tt), _rate(eb, tt)
    with np.errstate(invalid="ignore"):
        delta = rb - ra
    delta = np.where(np.isnan(delta), 0.0, delta)  # inf - inf: both unbounded, call it a tie
    lo, hi = np.quantile(delta, [alpha / 2, 1 - alpha / 2])
    p = float(np.mean(rb < ra) + 0.5 * np.mean(rb == ra))
    return {
        "rate_a": rate_a,
        "rate_b": rate_b,
        "delta": rate_b - rate_a,
        "delta_lo": float(lo),
        "delta_hi": float(hi),
        "p_b_better": p,
        "n_resamples": float(n_resamples),
    }
