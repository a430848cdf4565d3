"""Word times from CTC posteriors: which output frames each emitted token and word spans.

A decoder names one frame per token; :func:`token_frames` widens it over the token's run of best
frames, and :func:`words_with_times` groups tokens into words (split at the word boundary symbol, at
``▁`` word starts, or at pauses longer than ``max_gap``), with start/end in seconds and a confidence.
Used by ``asr transcribe`` (JSON, CTM, SRT); forced alignment against a known text is :mod:`asr.align`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from asr.decoders import Hypothesis
from asr.decoders.hypothesis import word_starts, words_from_tokens
from asr.tokens import UNK, WORD_START


@dataclass
class Word:
    word: str
    start: float  # seconds
    end: float
    confidence: float  # mean posterior of the word's tokens at the frames that emitted them



def token_frames(hyp: Hypothesis, lp: torch.Tensor) -> list[tuple[int, int]]:
    """``(first, last)`` output frame of each emitted token of ``hyp`` in posteriors ``lp (T, V)``.

    CTC spells one emission as a run of frames on which the token is the most likely label, while
    the decoder names one frame of it (greedy: the first; beam: the one that scored best). The span
    is that frame widened over the run, without reaching into a neighbouring token's frames.
    """
    best = lp.argmax(dim=-1).tolist()
    steps = list(hyp.timesteps)
    spans: list[tuple[int, int]] = []
    for i, (tok, t) in enumerate(zip(hyp.tokens, steps, strict=True)):
        lo = spans[-1][1] + 1 if spans else 0
        hi = steps[i + 1] - 1 if i + 1 < len(steps) else len(best) - 1
        first = last = t
        while first - 1 >= lo and best[first - 1] == tok:
            first -= 1
        while last + 1 <= hi and best[last + 1] == tok:
            last += 1
        spans.append((first, last))
    return spans


T = TypeVar("T")


def join_paused(groups: list[tuple[str, T, bool]], known: Callable[[str], bool] | None,
                join: Callable[[T, T], T]) -> list[tuple[str, T]]:
    """Words ``(text, item, after_pause)`` -> ``(text, item)``, each split at a pause undone where ``known``
    knows the two texts joined and not both halves: a long vowel or a stop's closure inside one word
    (FSDD's "six": S I, 0.4 s of blanks, X) is a pause too. ``join`` merges two items."""
    out: list[tuple[str, T]] = []
    for text, item, paused in groups:
        if paused and out and known is not None:
            left, prev = out[-1]
            if known(left + text) and not (known(left) and known(text)):
                out[-1] = (left + text, join(prev, item))
                continue
        out.append((text, item))
    return out


def words_with_times(hyp: Hypothesis, lp: torch.Tensor, symbols: list[str], boundary: str, frame_s: float,
                     max_gap: int, offset: int = 0, *, lexicon: dict[str, list[str]] | None = None,
                     words_given: bool = False, known: Callable[[str], bool] | None = None) -> list[Word]:
    """Words of ``hyp`` with times in seconds, from posteriors ``lp (T, V)`` of ``frame_s`` s frames.

    Output frame ``t`` covers ``[t, t + 1) * frame_s`` seconds (``frame_s = hop / rate``: frame
    shift times subsampling), counted from frame ``offset`` of the recording. A word starts at the
    start of its first token's run of frames and ends at the end of its last token's run (see
    :func:`token_frames`); its confidence is the mean posterior of its tokens where they were emitted.

    A token starting more than ``max_gap`` frames after the previous token's run also starts a new
    word (a pause of at least ``max_gap`` frames): char models are trained on utterances
    that neither start nor end with a word boundary, so in a long recording nothing else marks the
    border between the last word of one utterance and the first of the next. Sentencepiece pieces
    mark every word's start with ``▁``, the first one's too, so for them a piece starting with ``▁``
    begins a word and pauses split nothing: the words are exactly ``hyp.words``. ``known`` (the
    decoder's vocabulary: is this a word of its LM?) undoes a pause's split where the two halves
    joined are a known word and not both halves are, so a slowly spoken word stays whole.

    Where the tokens do not spell ``hyp.words`` (a phone table; ``words_given``, the wfst decoder,
    whose words are the graph's output labels; or any other mismatch), the words are ``hyp.words``
    as they are, never split at a pause, and each takes the run of consecutive tokens that spells
    it: a phone table's word its pronunciation in ``lexicon`` (the table's), a char or piece
    table's its letters. Words no run spells are spread over the tokens left between the spelled
    ones, in order and in proportion to their length (see :func:`_word_spans`).
    """
    bid = symbols.index(boundary) if boundary in symbols else None
    starts = word_starts(symbols, bid)
    pieces = starts is not None
    phones = bid is None and not pieces
    spelled = words_from_tokens(hyp.tokens, symbols, bid, pieces)
    if phones or words_given or (hyp.words and hyp.words != spelled):
        return _given_words_with_times(hyp, lp, symbols, bid, frame_s, offset, spelled,
                                       lexicon if phones else None, phones)
    # Groups of (token, first frame, last frame, confidence), each flagged when a pause (not a boundary
    # token) started it.
    groups: list[tuple[list[tuple[int, int, int, float]], bool]] = []
    cur: list[tuple[int, int, int, float]] = []
    after_pause = False
    probs = lp.exp()
    for tok, t, (first, last) in zip(hyp.tokens, hyp.timesteps, token_frames(hyp, lp), strict=True):
        if starts is not None:
            if starts[tok]:
                groups.append((cur, after_pause))
                cur, after_pause = [], False
        elif symbols[tok] == boundary or (cur and first - cur[-1][2] > max_gap):
            groups.append((cur, after_pause))
            cur, after_pause = [], symbols[tok] != boundary
            if symbols[tok] == boundary:
                continue
        cur.append((tok, first, last, float(probs[t, tok])))
    groups.append((cur, after_pause))

    def spell(g: list[tuple[int, int, int, float]]) -> str:
        text = "".join(symbols[tok] for tok, _, _, _ in g)
        return text.replace(WORD_START, "") if starts is not None else text

    # A bare "▁" piece followed by another word start spells no word.
    texts = [(text, g, paused) for g, paused in groups if (text := spell(g))]
    words: list[Word] = []
    for text, g in join_paused(texts, known, lambda a, b: a + b):
        start, end = (g[0][1] + offset) * frame_s, (g[-1][2] + 1 + offset) * frame_s
        conf = float(np.mean([c for _, _, _, c in g]))
        words.append(Word(text, round(start, 3), round(end, 3), round(conf, 4)))
    return words


def _given_words_with_times(hyp: Hypothesis, lp: torch.Tensor, symbols: list[str], boundary: int | None,
                            frame_s: float, offset: int, spelled: list[str],
                            lexicon: dict[str, list[str]] | None, phones: bool) -> list[Word]:
    """``hyp.words`` (or, where it has none, the words its tokens spell), each timed by its tokens."""
    probs = lp.exp()
    # Boundary tokens (<space>) belong to no word: they only separate.
    runs = [(tok, first, last, float(probs[t, tok]))
            for tok, t, (first, last) in zip(hyp.tokens, hyp.timesteps, token_frames(hyp, lp), strict=True)
            if tok != boundary]
    words = hyp.words or spelled
    syms = [symbols[tok] for tok, _, _, _ in runs]
    if phones and words == syms:
        # A phone decoder without a graph names each phone a word: each is its own token, even where a
        # letter word's pronunciation (AN4's S = EH S) would also match the phones that follow.
        spans = [(i, i + 1) for i in range(len(words))]
    else:
        spans = _word_spans(words, syms, lexicon)
    out: list[Word] = []
    for word, (a, b) in zip(words, spans, strict=True):
        # A word left without tokens of its own (more words than tokens) shares its neighbour's.
        mine = runs[a:b] if b > a else runs[min(a, len(runs) - 1) :][:1]
        if not mine:
            t0 = round(offset * frame_s, 3)
            out.append(Word(word, t0, t0, 0.0))
            continue
        start, end = (mine[0][1] + offset) * frame_s, (mine[-1][2] + 1 + offset) * frame_s
        conf = float(np.mean([c for _, _, _, c in mine]))
        out.append(Word(word, round(start, 3), round(end, 3), round(conf, 4)))
    return out


def _spells(word: str, syms: list[str], lexicon: dict[str, list[str]] | None, reverse: bool = False) -> int | None:
    """How many of ``syms`` (from the start; ``reverse``: ``syms`` and ``word`` are read backwards) spell
    ``word``: its pronunciation in ``lexicon``, or without one its letters (``▁`` spells nothing)."""
    if lexicon is not None:
        pron = lexicon.get(word)
        if not pron:
            return None
        return len(pron) if syms[: len(pron)] == (pron[::-1] if reverse else pron) else None
    target = word[::-1] if reverse else word
    text = ""
    for k, sym in enumerate(syms):
        sym = sym.replace(WORD_START, "")
        text += sym[::-1] if reverse else sym
        if text == target:
            return k + 1
        if not target.startswith(text):
            return None
    return None


def _word_spans(words: list[str], syms: list[str], lexicon: dict[str, list[str]] | None) -> list[tuple[int, int]]:
    """``[a, b)`` token range of each word: runs that spell the words, matched from the front and then
    from the back; the words between (mispronounced, out of the lexicon) share the tokens between in
    proportion to their expected length (phones of their pronunciation, else letters)."""
    n, m = len(syms), len(words)
    spans: list[tuple[int, int]] = [(0, 0)] * m

    def reach(word: str) -> int:
        # No more tokens than can spell the word (a bare "▁" piece spells nothing, hence the slack): a
        # long segment then costs words x word length, not words x tokens.
        return len(lexicon[word]) if lexicon and word in lexicon else 2 * len(word) + 2

    i, j = 0, 0
    while i < m:
        k = _spells(words[i], syms[j : j + reach(words[i])], lexicon)
        if k is None:
            break
        spans[i] = (j, j + k)
        i, j = i + 1, j + k
    q, e = m, n
    while q > i:
        k = _spells(words[q - 1], syms[max(j, e - reach(words[q - 1])) : e][::-1], lexicon, reverse=True)
        if k is None:
            break
        spans[q - 1] = (e - k, e)
        q, e = q - 1, e - k
    if q > i:
        weights = [len(lexicon[w]) if lexicon and w in lexicon else 1 if w == UNK else max(1, len(w))
                   for w in words[i:q]]
        spans[i:q] = _spread(weights, j, e)
    return spans


def _spread(weights: list[int], lo: int, hi: int) -> list[tuple[int, int]]:
    """Tokens ``[lo, hi)`` cut into ``len(weights)`` consecutive ranges, each at least one token long while
    there are enough, the rest shared in proportion to ``weights`` (empty ranges where there are not)."""
    n, m = hi - lo, len(weights)
    if n < m:
        cuts = [lo + k * n // m for k in range(m + 1)]
    else:
        total, acc, cuts = sum(weights), 0, [lo]
        for k, w in enumerate(weights):
            acc += w
            cuts.append(lo + k + 1 + round((n - m) * acc / total))
    return list(zip(cuts, cuts[1:], strict=False))
