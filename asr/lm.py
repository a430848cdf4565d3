"""``asr build-lm``: estimate a word n-gram LM with interpolated modified Kneser-Ney, write ARPA.

Follows Chen & Goodman (1998) as KenLM's lmplz does: the highest order uses raw counts, lower
orders continuation counts (how many distinct words precede the n-gram), except n-grams that
start with ``<s>``, which keep raw counts since nothing can precede them. Each order has three
discounts (for counts 1, 2, 3+) from its count-of-counts; the unigrams interpolate with a uniform
distribution over the vocabulary (``</s>`` and ``<unk>`` included), so ``<unk>`` gets only that
share. Written as a backoff ARPA file the interpolated model is exact: a seen n-gram stores its
interpolated probability and each context its interpolation weight as backoff.

No maintained pip package does this estimation here (the ``kenlm`` module only queries models;
lmplz needs a C++ build), and corpora for this toolkit are small, so it is plain Python.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

from asr.atomic import atomic_open
from asr.errors import AsrError

log = logging.getLogger(__name__)
BOS, EOS, UNK = "<s>", "</s>", "<unk>"


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


def write_arpa(probs: list[dict[tuple, float]], backoffs: list[dict[tuple, float]], path: str | os.PathLike) -> None:
    """Write ``estimate``'s tables as an ARPA file (log10), ``<s>`` with the customary -99."""
    order = len(probs)
    tables = [dict(p) for p in probs]
    tables[0][(BOS,)] = 0.0
    with atomic_open(path, "w") as f:
        f.write("\\data\\\n")
        for n, t in enumerate(tables, 1):
            f.write(f"ngram {n}={len(t)}\n")
        for n, t in enumerate(tables, 1):
            f.write(f"\n\\{n}-grams:\n")
            for g in sorted(t):
                lp = -99.0 if g == (BOS,) else math.log10(t[g])
                line = f"{lp:.7f}\t{' '.join(g)}"
                if n < order and g in backoffs[n - 1]:
                    bo = backoffs[n - 1][g]
                    line += f"\t{math.log10(bo) if bo > 0 else -99.0:.7f}"
                f.write(line + "\n")
        f.write("\n\\end\\\n")


def read_sentences(path: Path, has_ids: bool) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.split() for line in f]
    except FileNotFoundError:
        raise AsrError(f"{path}: no such text file") from None
    except UnicodeDecodeError:
        raise AsrError(f"{path}: not UTF-8 text") from None
    return [words[1:] if has_ids else words for words in lines if words[1 if has_ids else 0 :]]


def _cmd_build_lm(args: argparse.Namespace) -> int:
    src = Path(args.text)
    has_ids = {"yes": True, "no": False}.get(args.utt_ids)
    if src.is_dir():
        src = src / "text"
        has_ids = True if has_ids is None else has_ids
    if has_ids is None:  # a Kaldi data dir's text file starts each line with an utterance id
        has_ids = src.name == "text"
    sentences = read_sentences(src, has_ids)
    probs, backoffs = estimate(sentences, args.order)
    write_arpa(probs, backoffs, args.output)
    log.info(
        "wrote %s: order %d, %s n-grams from %d sentences",
        args.output,
        args.order,
        "/".join(str(len(p)) for p in probs),
        len(sentences),
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("build-lm", help="estimate a modified Kneser-Ney word n-gram LM (ARPA)")
    p.add_argument("text", help="training text: a plain file of sentences, a Kaldi 'text' file or a data dir")
    p.add_argument("--order", type=int, default=3)
    p.add_argument("-o", "--output", required=True, help="ARPA file to write")
    p.add_argument(
        "--utt-ids",
        choices=["auto", "yes", "no"],
        default="auto",
        help="whether lines start with an utterance id (auto: yes for a file named 'text')",
    )
    p.set_defaults(func=_cmd_build_lm)
