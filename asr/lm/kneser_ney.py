"""Interpolated modified Kneser-Ney estimation of a word n-gram LM (what ``asr build-lm`` runs).

Follows Chen & Goodman (1998) as KenLM's lmplz does: the highest order uses raw counts, lower
orders continuation counts (how many distinct words precede the n-gram), except n-grams that
start with ``<s>``, which keep raw counts since nothing can precede them. Each order has three
discounts (for counts 1, 2, 3+) from its count-of-counts; the unigrams interpolate with a uniform
distribution over the vocabulary (``</s>`` and ``<unk>`` included), so ``<unk>`` gets only that
share. Written as a backoff ARPA file (:func:`asr.lm.arpa.write_arpa`) the interpolated model is
exact: a seen n-gram stores its interpolated probability and each context its interpolation
weight as backoff.

No maintained pip package does this estimation here (the ``kenlm`` module only queries models;
lmplz needs a C++ build), and corpora for this toolkit are small, so it is plain Python.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable

from asr.errors import AsrError
from asr.lm.arpa import BOS, EOS, UNK

log = logging.getLogger(__name__)


def discounts(count_of_counts: Counter) -> tuple[float, float, float]:
    """Modified KN discounts (D1, D2, D3+) from how many n-grams occur once, twice, 3 and 4 times.

    Tiny corpora can make the estimate meaningless (missing counts, D not increasing); then one
    absolute discount ``Y = n1 / (n1 + 2 n2)`` (or 0.5) is used for all three.
    """
    n1, n2, n3, n4 = (count_of_counts.get(k, 0) for k in (1, 2, 3, 4))
    if n1 and n2 and n3 and n4:
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if 0 < d[0] < 1 and 0 < d[1] < 2 and 0 < d[2] < 3:
            return d
    y = n1 / (n1 + 2 * n2) if n1 and n2 else 0.5
    return (y, y, y)


def adjusted_counts(sentences: Iterable[list[str]], order: int) -> list[dict[tuple, int]]:
    """Per order n (index n-1), the KN counts of each n-gram (see module docstring)."""
    raw: list[Counter] = [Counter() for _ in range(order)]
    for words in sentences:
        seq = [BOS, *words, EOS]
        for n in range(1, order + 1):
            for i in range(len(seq) - n + 1):
                g = tuple(seq[i : i + n])
                if g != (BOS,):
                    raw[n - 1][g] += 1
    counts = [dict() for _ in range(order)]
    counts[order - 1] = dict(raw[order - 1])
    for n in range(order - 1, 0, -1):
        left: Counter = Counter()
        for g in raw[n]:  # every (n+1)-gram adds one distinct left word to its n-word suffix
            left[g[1:]] += 1
        counts[n - 1] = {g: (c if g[0] == BOS else left[g]) for g, c in raw[n - 1].items()}
    return counts


def estimate(
    sentences: Iterable[list[str]], order: int = 3, fixed_discounts: tuple[float, float, float] | None = None
) -> tuple[list[dict[tuple, float]], list[dict[tuple, float]]]:
    """Interpolated modified KN: per order, ``{ngram: P(w | h)}`` and ``{context: backoff weight}``.

    Probabilities are plain (not log). ``fixed_discounts`` overrides the estimated (D1, D2, D3+).
    """
    if order < 1:
        raise AsrError(f"--order must be >= 1, got {order}")
    counts = adjusted_counts(sentences, order)
    if not counts[0]:
        raise AsrError("build-lm: the training text has no words")
    probs: list[dict[tuple, float]] = []
    backoffs: list[dict[tuple, float]] = [{} for _ in range(order)]
    vocab = sorted({g[0] for g in counts[0]} | {EOS, UNK})
    for n in range(1, order + 1):
        cnt = counts[n - 1]
        d = fixed_discounts or discounts(Counter(min(c, 4) for c in cnt.values()))
        log.info("order %d: %d n-grams, discounts %.3f %.3f %.3f", n, len(cnt), *d)
        by_ctx: dict[tuple, list[tuple]] = defaultdict(list)
        for g in cnt:
            by_ctx[g[:-1]].append(g)
        gamma: dict[tuple, float] = {}
        p: dict[tuple, float] = {}
        for h, grams in by_ctx.items():
            total = sum(cnt[g] for g in grams)
            gamma[h] = sum(d[min(cnt[g], 3) - 1] for g in grams) / total
            for g in grams:
                c = cnt[g]
                lower = 1.0 / len(vocab) if n == 1 else probs[n - 2][g[1:]]
                p[g] = (c - d[min(c, 3) - 1]) / total + gamma[h] * lower
        if n == 1:
            for w in vocab:
                p.setdefault((w,), gamma[()] / len(vocab))
        else:
            backoffs[n - 2] = gamma  # interpolation weights of the (n-1)-gram contexts
        probs.append(p)
    return probs, backoffs
