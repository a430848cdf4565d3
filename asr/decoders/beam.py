"""CTC prefix beam search (Hannun et al. 2014) with word n-gram shallow fusion, a word list and hotwords.

Each hypothesis is a node of a prefix tree kept in numpy arrays; per frame the beam carries, for
each prefix, log P(prefix, ending in blank) and log P(prefix, ending in a non-blank). Speed comes
from doing little per frame, not from the language:

- frames on which no non-blank token survives pruning (P(blank) > ``blank_skip``, or every
  token below ``token_min_logp``) cannot start a new prefix; whole runs of them are folded into
  the beam in closed form with cumulative sums;
- on the other frames all (beam x surviving tokens) extensions are scored at once, and only those
  that can still enter the beam are looked up (or created) in the prefix tree;
- the LM is queried only when a word is completed, once per (LM state, word), and cached.

The fused score is ``log P_ctc + alpha log P_lm(words) + beta |words|`` (+ OOV penalties and
hotword bonuses); without an LM it is the exact prefix probability, which is what the tests compare
with exhaustive search.

What words add (LM, word list, hotwords) is :mod:`asr.decoders.word_scores`; the prefixes are nodes
of a :class:`~asr.decoders.prefix_tree.PrefixTree`.

Words end at a word-boundary token (``<space>`` of char tables) or, for sentencepiece pieces,
where a piece starting with ``▁`` begins the next word; the last word of a hypothesis ends with the
utterance. Phone tables have neither: every token is a word, and only plain search applies.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from asr.decoders.hypothesis import DecodeConfig, Hypothesis, check_inputs, word_starts, words_from_tokens
from asr.decoders.prefix_tree import NEG, PrefixTree
from asr.decoders.word_scores import WordScorer
from asr.errors import AsrError
from asr.lm.backends import ArpaLM, KenLM, load_lm

FLOOR = -1e4  # log-prob of "impossible": exp() is 0, yet sums over frames stay exact to ~1e-9


class _Utterance(NamedTuple):
    """One utterance's log-probs, prepared for the search."""

    lp: np.ndarray  # (T, V), floored at FLOOR: cumulative sums can be differenced without NaNs
    lpp: np.ndarray  # (T, V + 1): column V (the empty prefix's "last token") is FLOOR
    cands: list[np.ndarray | None]  # per frame, the tokens to extend with (see ``_candidates``)
    nxt: list[int]  # the first frame >= t with candidates (T if none), to skip blank runs in one step
    blank_tail: np.ndarray  # (T + 1,) log P(blank on t..T-1)


class _Beam:
    """The beam's members: prefix tree ``nodes (B,)`` with log P(prefix, ending in blank) ``pb`` and in
    a non-blank ``pnb``, ``last`` token (V for the empty prefix), word score ``ex`` (the nodes' ``extra``;
    unused in plain search) and, within a frame, their fused ``score``."""

    __slots__ = ("nodes", "pb", "pnb", "last", "ex", "score")

    def __init__(self, vocab: int):
        self.nodes = np.zeros(1, np.int64)
        self.pb, self.pnb = np.zeros(1), np.full(1, NEG)
        self.last, self.ex = np.full(1, vocab), np.zeros(1)
        self.score = np.zeros(1)


class BeamSearchDecoder:
    """Prefix beam search; ``decode(log_probs (B, T, V), lengths (B,))`` -> n-best lists."""

    def __init__(self, symbols: list[str], config: DecodeConfig | None = None, lm: ArpaLM | KenLM | None = None):
        self.symbols = list(symbols)
        self.cfg = cfg = config or DecodeConfig()
        self.V = len(self.symbols)
        self.boundary = self.symbols.index(cfg.word_boundary) if cfg.word_boundary in self.symbols else None
        # (V,) bool of the word-start pieces of a sentencepiece table; None for chars and phones.
        self.starts = word_starts(self.symbols, self.boundary)
        if (cfg.lm or lm or cfg.words or cfg.hotwords) and self.boundary is None and self.starts is None:
            raise AsrError(
                f"an LM, word list or hotwords need the word boundary symbol {cfg.word_boundary!r} (or "
                "sentencepiece pieces) in the token table"
            )
        lm = lm if lm is not None else (load_lm(cfg.lm) if cfg.lm else None)
        self.scorer = WordScorer(self.symbols, cfg, lm, self.boundary, self.starts)
        self.plain = self.scorer.plain  # no LM, word list or hotwords: every score addend stays 0
        self.tree = PrefixTree(self.V)

    def _create(self, par: np.ndarray, tok: np.ndarray) -> np.ndarray:
        """New children of ``par (M,)`` by ``tok (M,)`` (pairs not in the tree yet) -> their ids ``(M,)``."""
        ids = self.tree.add(par, tok)
        if not self.plain:
            self.scorer.enter(self.tree, par, tok)
        return ids

    # ---- per utterance -------------------------------------------------------------------------
    def _candidates(self, lp: np.ndarray) -> list[np.ndarray | None]:
        """Per frame, the non-blank tokens worth extending with (None: none survive pruning)."""
        cfg = self.cfg
        if not cfg.token_topk and cfg.cutoff_prob >= 1.0:
            keep = lp > cfg.token_min_logp
            keep[:, 0] = False
            if cfg.blank_skip < 1.0:
                keep[lp[:, 0] > math.log(cfg.blank_skip)] = False
            rows, cols = np.nonzero(keep)
            out: list[np.ndarray | None] = [None] * len(lp)
            if len(rows):
                starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
                bounds = starts.tolist() + [len(rows)]
                for i, t in enumerate(rows[starts].tolist()):
                    out[t] = cols[bounds[i] : bounds[i + 1]]
            return out
        order = np.argsort(-lp, axis=1, kind="stable")
        srt = np.take_along_axis(lp, order, 1)
        keep = srt > cfg.token_min_logp
        if cfg.token_topk:
            keep[:, cfg.token_topk :] = False
        if cfg.cutoff_prob < 1.0:
            p = np.exp(srt)
            keep &= (np.cumsum(p, 1) - p) < cfg.cutoff_prob
        keep &= order != 0
        if cfg.blank_skip < 1.0:
            keep[lp[:, 0] > math.log(cfg.blank_skip)] = False
        active = keep.any(1)
        out = [None] * len(lp)
        for t in np.nonzero(active)[0]:
            out[t] = order[t][keep[t]]
        return out

    def _prepare(self, lp: np.ndarray) -> _Utterance:
        T = len(lp)
        lp = np.maximum(lp, FLOOR)
        lpp = np.concatenate([lp, np.full((T, 1), FLOOR)], 1)
        cands = self._candidates(lp)
        act = np.array([c is not None for c in cands] + [True])
        nxt = np.minimum.accumulate(np.where(act, np.arange(T + 1), T)[::-1])[::-1].tolist()
        blank_tail = np.concatenate([np.cumsum(lp[::-1, 0])[::-1], [0.0]])
        return _Utterance(lp, lpp, cands, nxt, blank_tail)

    def _search(self, lp: np.ndarray) -> list[Hypothesis]:
        self.tree.reset()
        self.scorer.reset()
        u = self._prepare(lp)
        beam = _Beam(self.V)
        t, T = 0, len(lp)
        while t < T:
            if u.cands[t] is None:
                e = u.nxt[t]
                self._blank_run(u, beam, t, e)
                t = e
            else:
                self._extend(u, beam, t)
                t += 1
        return self._finish(beam.nodes, np.logaddexp(beam.pb, beam.pnb))

    # ---- one step ------------------------------------------------------------------------------
    def _blank_run(self, u: _Utterance, beam: _Beam, t: int, e: int) -> None:
        """Frames ``t:e`` extend no prefix: each member emits blanks or repeats its last token."""
        pb, pnb, last = beam.pb, beam.pnb, beam.last
        if e - t == 1:
            beam.pb, beam.pnb = np.logaddexp(pb, pnb) + u.lp[t, 0], pnb + u.lpp[t, last]
            return
        # Closed form of a run of blank-only frames: a non-blank path either repeats its last token
        # throughout or leaves it at some frame k and is blank from there on.
        tail = u.blank_tail
        rl = u.lpp[t:e, last]  # (L, B)
        rc = np.cumsum(rl, 0)
        leave = (rc - rl) + (tail[t:e] - tail[e])[:, None]
        beam.pb = np.logaddexp(pb + (tail[t] - tail[e]), pnb + np.logaddexp.reduce(leave, 0))
        beam.pnb = pnb + rc[-1]

    def _extend(self, u: _Utterance, beam: _Beam, t: int) -> None:
        """Frame ``t``, which has candidate tokens: the members move on, the best extensions join them."""
        C = u.cands[t]
        ext, esc = self._advance(beam, u.lpp[t], C)
        top = esc.max()
        thr = self._threshold(beam.score, top)
        if top <= thr:  # nothing new can enter: the beam keeps its members and order
            return
        nb = self.cfg.beam
        if len(esc) > nb:
            sel = np.argpartition(-esc, nb - 1)[:nb]
            sel = sel[esc[sel] > thr]
        else:
            sel = np.flatnonzero(esc > thr)
        bi, ki = np.divmod(sel, len(C))
        par, tk, es = beam.nodes[bi], C[ki], ext[sel]
        ch, idx = self._children(beam.nodes, par, tk, es, t)
        add = None if idx is None else self._merge(beam, idx, es)
        self._admit(beam, ch, es, tk, add)

    def _advance(self, beam: _Beam, row: np.ndarray, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move the members to this frame (blank, or their last token again: ``pb``, ``pnb``, ``score``);
        return the CTC and fused scores ``(B * K,)`` of extending them by tokens ``C (K,)``."""
        pb, pnb, last = beam.pb, beam.pnb, beam.last
        ptot = np.logaddexp(pb, pnb)
        beam.pb = ptot + row[0]
        beam.pnb = pnb + row[last]
        ext = np.where(last[:, None] == C, pb[:, None], ptot[:, None])
        ext += row[C]
        ext = ext.ravel()
        beam.score = np.logaddexp(beam.pb, beam.pnb)
        if self.plain:
            return ext, ext
        beam.score += beam.ex
        tree, nodes = self.tree, beam.nodes
        return ext, ext + (tree.committed[nodes][:, None] + self.scorer.pending(tree, nodes, C)).ravel()

    def _threshold(self, score: np.ndarray, top: float) -> float:
        """The score an extension must beat: ``beam_threshold`` below the best, and the beam-th member's."""
        cfg, B = self.cfg, len(score)
        thr = max(score.max(), top) - cfg.beam_threshold
        if B >= cfg.beam:
            thr = max(thr, np.partition(score, B - cfg.beam)[B - cfg.beam])
        return thr

    def _children(
        self, members: np.ndarray, par: np.ndarray, tk: np.ndarray, es: np.ndarray, t: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The nodes of extensions ``(par, tk)`` with CTC scores ``es`` at frame ``t``, created where new,
        with their best score and its frame; and their index among ``members`` (None: all new, so none)."""
        tree = self.tree
        ch = tree.child[par, tk]
        new = ch < 0
        if new.all():  # all new: none is in the beam yet, and each gets its first best score
            ch = self._create(par, tk)
            tree.best[ch] = es
            tree.frame[ch] = t
            return ch, None
        if new.any():
            ch[new] = self._create(par[new], tk[new])
        better = es > tree.best[ch]
        cb = ch[better]
        tree.best[cb] = es[better]
        tree.frame[cb] = t
        return ch, tree.positions(members, ch)

    def _merge(self, beam: _Beam, idx: np.ndarray, es: np.ndarray) -> np.ndarray | None:
        """Extensions that are members already (``idx >= 0``) add ``es`` to their non-blank score;
        returns which extensions are not members (None: all of them)."""
        hit = idx >= 0
        if not hit.any():
            return None
        ih = idx[hit]
        beam.pnb[ih] = np.logaddexp(beam.pnb[ih], es[hit])
        # Only the members that absorbed an extension change their score.
        beam.score[ih] = np.logaddexp(beam.pb[ih], beam.pnb[ih])
        if not self.plain:
            beam.score[ih] += beam.ex[ih]
        return ~hit

    def _admit(self, beam: _Beam, ch: np.ndarray, es: np.ndarray, tk: np.ndarray, add: np.ndarray | None) -> None:
        """Nodes ``ch`` (where ``add``, and alive) join the beam, which is then pruned to ``beam`` members
        within ``beam_threshold`` of the best."""
        plain = self.plain
        if not plain:
            exc = self.tree.extra[ch]
            if self.scorer.may_die:
                alive = exc > NEG
                add = alive if add is None else add & alive
        if add is not None:
            ch, es, tk = ch[add], es[add], tk[add]
            if not plain:
                exc = exc[add]
        beam.nodes = np.concatenate([beam.nodes, ch])
        # New members have P(blank) = 0, so their CTC score is their non-blank one.
        beam.pb = np.concatenate([beam.pb, np.full(len(ch), NEG)])
        beam.pnb = np.concatenate([beam.pnb, es])
        beam.last = np.concatenate([beam.last, tk])
        if plain:
            score = np.concatenate([beam.score, es])
        else:
            beam.ex = np.concatenate([beam.ex, exc])
            score = np.concatenate([beam.score, es + exc])
        nb, width = self.cfg.beam, self.cfg.beam_threshold
        if len(score) > nb:
            keep = np.argpartition(-score, nb - 1)[:nb]
            sk = score[keep]
            keep = keep[sk >= sk.max() - width]
        else:
            keep = np.flatnonzero(score >= score.max() - width)
            if len(keep) == len(score):
                return
        beam.nodes, beam.pb, beam.pnb, beam.last = beam.nodes[keep], beam.pb[keep], beam.pnb[keep], beam.last[keep]
        if not plain:
            beam.ex = beam.ex[keep]

    # ---- results -------------------------------------------------------------------------------
    def _finish(self, nodes: np.ndarray, ctc: np.ndarray) -> list[Hypothesis]:
        fused = np.array(ctc, float) if self.plain else ctc + self.scorer.final(self.tree, nodes)
        if not np.isfinite(fused).any():  # a word list left no complete word: fall back to CTC ranking
            fused = ctc
        out = []
        for i in np.argsort(-fused, kind="stable")[: self.cfg.nbest]:
            if not np.isfinite(fused[i]) and out:
                break
            path = self.tree.path(int(nodes[i]))
            toks = self.tree.token[path].tolist()
            words = words_from_tokens(toks, self.symbols, self.boundary, self.starts is not None)
            out.append(Hypothesis(toks, words, float(fused[i]), self.tree.frame[path].tolist()))
        return out

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """``log_probs (B, T, V)``, ``lengths (B,)`` -> per utterance up to ``nbest`` hypotheses, best first."""
        lp, lens = check_inputs(log_probs, lengths, self.V)
        with np.errstate(divide="ignore", invalid="ignore"):
            return [self._search(lp[i, : lens[i]]) for i in range(len(lp))]
