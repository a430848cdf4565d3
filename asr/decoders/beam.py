"""CTC prefix beam search (Hannun et al. 2014) with word n-gram shallow fusion, a word list and hotwords.

Each hypothesis is a node of a prefix tree kept in numpy arrays; per frame the beam carries, for
each prefix, log P(prefix, ending in blank) and log P(prefix, ending in a non-blank). Speed comes
from doing little per frame, and from doing it for all utterances of a batch at once:

- frames on which no non-blank token survives pruning (P(blank) > ``blank_skip``, or every
  token below ``token_min_logp``) cannot start a new prefix; whole runs of them are folded into
  the beam in closed form with cumulative sums;
- the utterances of a ``decode`` call are searched together, each at its own k-th active frame
  (frame with candidates) at step k, their beams padded to one ``(utterances, members)`` array: the
  per-step numpy work (a few dozen calls on small arrays, which is what a frame costs) is shared
  by the batch. Each utterance's result is exactly what it gives alone; a call with one utterance
  runs the same step on 1-D arrays (:mod:`asr.decoders.beam_one`), without the padding's cost;
- on an active frame, tokens whose best possible extension (an upper bound) cannot beat the
  beam are dropped, then all (member x token) extensions are scored at once, and only those that
  can still enter the beam are looked up (or created) in the prefix tree;
- the LM is queried only when a word is completed, once per (LM state, word), and cached.

The fused score is ``log P_ctc + alpha log P_lm(words) + beta |words|`` (+ OOV penalties and
hotword bonuses); without an LM it is the exact prefix probability, which is what the tests compare
with exhaustive search.

What words add (LM, word list, hotwords) is :mod:`asr.decoders.word_scores`; the prefixes are nodes
of a :class:`~asr.decoders.prefix_tree.PrefixTree` (one root per utterance).

Words end at a word-boundary token (``<space>`` of char tables) or, for sentencepiece pieces,
where a piece starting with ``▁`` begins the next word; the last word of a hypothesis ends with the
utterance. Phone tables have neither: every token is a word, and only plain search applies.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from asr.decoders.beam_one import OneUtterance
from asr.decoders.hypothesis import DecodeConfig, Hypothesis, check_inputs, word_starts, words_from_tokens
from asr.decoders.prefix_tree import NEG, PrefixTree
from asr.decoders.word_scores import WordScorer
from asr.errors import AsrError
from asr.lm.backends import ArpaLM, KenLM, load_lm

FLOOR = -1e4  # log-prob of "impossible": exp() is 0, yet sums over frames stay exact to ~1e-9


class _Batch(NamedTuple):
    """The utterances of one ``decode`` call, prepared for the search. Rows are the utterances by
    decreasing number of active frames (frames with candidate tokens), so the rows still searching at
    step ``k`` (the k-th active frame of each) are always the first ones."""

    lp: np.ndarray  # (B, T, V + 1) log-probs, floored at FLOOR, 0 past each length; column V (the
    # empty prefix's "last token") is FLOOR
    c0: np.ndarray  # (B, T + 1) log P(blank on frames 0..x-1): blank runs are differences of it
    order: np.ndarray  # (U,) the utterance of each row
    act: np.ndarray  # (U, N) the active frames of each row, in order (padded)
    cand: np.ndarray  # (U, N, K) their candidate tokens (padded with 0)
    cnt: np.ndarray  # (U, N) how many candidates
    clp: np.ndarray  # (U, N, K) their log-probs (-inf as padding)
    blank: np.ndarray  # (U, N) log P(blank) on each active frame
    nact: np.ndarray  # (U,) how many active frames (decreasing)
    lens: np.ndarray  # (U,) frames
    rows: np.ndarray  # (U, 1) arange: row indices for fancy indexing


class _Beams:
    """The beams of rows ``0 .. m-1``, ``(m, W)`` each, W the largest beam among them: prefix tree
    ``nodes`` with log P(prefix, ending in blank) ``pb`` and in a non-blank ``pnb``, ``last`` token (V for
    the empty prefix), word score ``ex`` (the nodes' ``extra``; 0 in plain search), within a frame their
    fused ``score``; and ``t``, the next frame of each row. Padding: node 0 (a root, which no extension
    reaches), ``pb = pnb = score = -inf``."""

    __slots__ = ("nodes", "pb", "pnb", "last", "ex", "score", "t")

    def __init__(self, rows: int, vocab: int):
        self.nodes = np.arange(rows)[:, None]  # each row's root
        self.pb, self.pnb = np.zeros((rows, 1)), np.full((rows, 1), NEG)
        self.last, self.ex = np.full((rows, 1), vocab), np.zeros((rows, 1))
        self.score = np.zeros((rows, 1))
        self.t = np.zeros(rows, np.int64)

    def keep_rows(self, m: int) -> None:
        for k in self.__slots__:
            setattr(self, k, getattr(self, k)[:m])


class BeamSearchDecoder(OneUtterance):
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

    # ---- per batch -----------------------------------------------------------------------------
    def _candidates(self, lp: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(b, t, token)`` of every (utterance, frame, token) worth extending with, by utterance,
        frame and then token id (or rank, with ``token_topk`` / ``cutoff_prob``)."""
        cfg = self.cfg
        B, T, _ = lp.shape
        inside = np.arange(T)[None, :] < lens[:, None]
        if cfg.blank_skip < 1.0:
            inside &= lp[:, :, 0] <= math.log(cfg.blank_skip)
        if not cfg.token_topk and cfg.cutoff_prob >= 1.0:
            keep = lp > cfg.token_min_logp
            keep[:, :, 0] = False
            keep &= inside[:, :, None]
            return np.nonzero(keep)
        order = np.argsort(-lp, axis=2, kind="stable")
        srt = np.take_along_axis(lp, order, 2)
        keep = srt > cfg.token_min_logp
        if cfg.token_topk:
            keep[:, :, cfg.token_topk :] = False
        if cfg.cutoff_prob < 1.0:
            p = np.exp(srt)
            keep &= (np.cumsum(p, 2) - p) < cfg.cutoff_prob
        keep &= (order != 0) & inside[:, :, None]
        b, t, r = np.nonzero(keep)
        return b, t, order[b, t, r]

    def _prepare(self, lp: np.ndarray, lens: np.ndarray) -> _Batch:
        B, T, V = lp.shape
        lp = np.maximum(lp, FLOOR, out=np.empty((B, T, V + 1))[:, :, :V])
        lp[np.arange(T)[None, :] >= lens[:, None]] = 0.0  # past the end: finite, never used
        lp = lp.base
        lp[:, :, V] = FLOOR
        c0 = np.zeros((B, T + 1))
        np.cumsum(lp[:, :, 0], 1, out=c0[:, 1:])
        b, t, tok = self._candidates(lp[:, :, :V], lens)
        # One group per active (utterance, frame); entries are sorted by utterance and frame.
        first = np.flatnonzero(np.r_[True, (b[1:] != b[:-1]) | (t[1:] != t[:-1])]) if len(b) else np.zeros(0, int)
        gb, gt = b[first], t[first]
        cnt = np.diff(np.r_[first, len(b)])
        nact = np.bincount(gb, minlength=B)
        order = np.argsort(-nact, kind="stable")
        row = np.empty(B, np.int64)
        row[order] = np.arange(B)
        gi = np.arange(len(first)) - np.r_[0, np.cumsum(nact)][gb]  # index among its utterance's active frames
        N, K = int(nact.max(initial=0)), int(cnt.max(initial=0))
        act = np.zeros((B, N), np.int64)
        act[row[gb], gi] = gt
        ccnt = np.zeros((B, N), np.int64)
        ccnt[row[gb], gi] = cnt
        cand = np.zeros((B, N, K), np.int64)
        g = np.repeat(np.arange(len(first)), cnt)
        cand[row[gb][g], gi[g], np.arange(len(b)) - first[g]] = tok
        clp = np.where(np.arange(K) < ccnt[:, :, None], lp[order[:, None, None], act[:, :, None], cand], NEG)
        blank = lp[order[:, None], act, 0]
        return _Batch(lp, c0, order, act, cand, ccnt, clp, blank, nact[order], lens[order], np.arange(B)[:, None])

    def _search(self, lp: np.ndarray, lens: np.ndarray) -> list[list[Hypothesis]]:
        B = len(lp)
        self.tree.reset(B)
        self.scorer.reset()
        P = self._prepare(lp, lens)
        if B == 1:  # the same search without the batch's padding (asr.decoders.beam_one)
            return [self._finish(*self._search_one(P))]
        S = _Beams(B, self.V)
        out: list[list[Hypothesis]] = [[] for _ in range(B)]
        m = B
        N = len(P.act[0]) if B else 0
        for k, live in enumerate((P.nact > np.arange(N)[:, None]).sum(1).tolist()):
            if live < m:
                self._retire(P, S, live, m, out)
                S.keep_rows(live)
                m = live
            a = P.act[:m, k]
            self._blank_run(P, S, 0, m, a)
            self._extend(P, S, k, a)
            S.t = a + 1
        self._retire(P, S, 0, m, out)
        return out

    def _retire(self, P: _Batch, S: _Beams, lo: int, hi: int, out: list[list[Hypothesis]]) -> None:
        """Rows ``lo:hi`` have no active frame left: blank run to the end, then their n-best lists."""
        if lo == hi:
            return
        self._blank_run(P, S, lo, hi, P.lens[lo:hi])
        ctc = np.logaddexp(S.pb[lo:hi], S.pnb[lo:hi])
        for r in range(lo, hi):
            ok = ctc[r - lo] > NEG  # the members, not the padding
            out[P.order[r]] = self._finish(S.nodes[r][ok], ctc[r - lo][ok])

    # ---- one step ------------------------------------------------------------------------------
    def _blank_run(self, P: _Batch, S: _Beams, lo: int, hi: int, e: np.ndarray) -> None:
        """Rows ``lo:hi`` go from their frame ``S.t`` to ``e`` (excluded) over frames that extend no
        prefix: each member emits blanks or repeats its last token (closed form, any length)."""
        t = S.t[lo:hi]
        L = e - t
        Lmax = int(L.max(initial=0))
        if Lmax == 0:
            return
        uid, T = P.order[lo:hi], P.lp.shape[1]
        pb, pnb, last = S.pb[lo:hi], S.pnb[lo:hi], S.last[lo:hi]
        if Lmax == 1:  # the same numbers as below with one frame, in fewer steps
            d = (P.c0[uid, e] - P.c0[uid, t])[:, None]
            rl = P.lp[uid[:, None], np.minimum(t, T - 1)[:, None], last]
            one = (L == 1)[:, None]
            S.pb[lo:hi] = np.where(one, np.logaddexp(pb + d, pnb + d), pb)
            S.pnb[lo:hi] = np.where(one, pnb + rl, pnb)
            return
        fr = t[:, None] + np.arange(Lmax)  # (R, L)
        valid = fr < e[:, None]
        rl = P.lp[uid[:, None, None], np.minimum(fr, T - 1)[:, :, None], last[:, None, :]]
        rl = np.where(valid[:, :, None], rl, 0.0)  # (R, L, W)
        # A non-blank path either repeats its last token throughout or leaves it at some frame k of
        # the run and is blank from there on.
        rc = np.cumsum(rl, 1)
        ce = P.c0[uid, e]
        tail = np.where(valid, ce[:, None] - P.c0[uid[:, None], np.minimum(fr, T)], NEG)
        x = (rc - rl) + tail[:, :, None]
        mx = x.max(1)
        mx[mx == NEG] = 0.0  # an empty run (or padding): every term is -inf
        leave = mx + np.log(np.exp(x - mx[:, None, :]).sum(1))
        S.pb[lo:hi] = np.logaddexp(pb + (ce - P.c0[uid, t])[:, None], pnb + leave)
        S.pnb[lo:hi] = pnb + rc[:, -1]

    def _extend(self, P: _Batch, S: _Beams, k: int, a: np.ndarray) -> None:
        """Active frame ``k`` of the rows (frame ``a`` of each): the members move on, the best
        extensions join them."""
        m, W = S.nodes.shape
        K = int(P.cnt[:m, k].max())
        rows = P.rows[:m]
        ext, esc, thr, C = self._advance(P, S, a, P.cand[:m, k, :K], P.clp[:m, k, :K], P.blank[:m, k])
        if ext is None:  # no extension can enter any beam
            return
        K = C.shape[1]
        ext, esc = ext.reshape(m, -1), esc.reshape(m, -1)
        top = esc.max(1)
        thr = np.maximum(thr, top - self.cfg.beam_threshold)
        go = top > thr
        if not go.any():  # nothing new can enter: the beams keep their members
            return
        nb = self.cfg.beam
        if W * K > nb:
            sel = np.argpartition(-esc, nb - 1, axis=1)[:, :nb]
        else:
            sel = np.broadcast_to(np.arange(W * K), (m, W * K))
        rr, cc = np.nonzero(esc[rows, sel] > thr[:, None])
        s = sel[rr, cc]
        bi, ki = np.divmod(s, K)
        par, tk, es = S.nodes[rr, bi], C[rr, ki], ext[rr, s]
        ch, idx = self._children(S, par, tk, es, a[rr])
        add = None if idx is None else self._merge(S, idx, es)
        self._admit(S, rows, rr, ch, es, tk, add, go)

    def _advance(
        self, P: _Batch, S: _Beams, a: np.ndarray, C: np.ndarray, lc: np.ndarray, blank: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray, np.ndarray]:
        """Move the members to frame ``a`` (blank: log-probs ``blank (m,)``, or their last token again:
        ``pb``, ``pnb``, ``score``); of tokens ``C (m, K)`` (log-probs ``lc``, -inf as padding) keep those
        ``C' (m, K')`` that may enter;
        return the CTC and fused scores ``(m, W, K')`` of extending the members by them, the score
        ``(m,)`` an extension must beat whatever the others do, and ``C'`` (``ext`` None: none can enter)."""
        uid, pb, pnb, last = P.order[: len(a)], S.pb, S.pnb, S.last
        rows, W = P.rows[: len(a)], pb.shape[1]
        ptot = np.logaddexp(pb, pnb)
        S.pb = ptot + blank[:, None]
        S.pnb = pnb + P.lp[uid[:, None], a[:, None], last]
        S.score = score = np.logaddexp(S.pb, S.pnb)
        if not self.plain:
            score += S.ex
        thr = score.max(1) - self.cfg.beam_threshold
        if W >= self.cfg.beam:  # full beams: an extension must beat the beam-th member too
            thr = np.maximum(thr, score.min(1))
        # An upper bound of each token's best extension (P(blank) <= P(total), the largest word score
        # a member can get next): tokens below ``thr`` with it are dropped before any (W, K) work.
        tree, nodes = self.tree, S.nodes
        com = None if self.plain else tree.committed[nodes]
        hi = ptot if self.plain else ptot + com + self.scorer.most(tree, nodes)
        ok = (hi.max(1)[:, None] + lc) > thr[:, None]
        n = ok.sum(1)
        K = int(n.max())
        if K == 0:
            return None, None, thr, C
        if K < C.shape[1]:
            kept = np.argsort(~ok, axis=1, kind="stable")[:, :K]
            C, lc = C[rows, kept], np.where(ok[rows, kept], lc[rows, kept], NEG)
        ext = np.where(last[:, :, None] == C[:, None, :], pb[:, :, None], ptot[:, :, None])
        ext += lc[:, None, :]
        if self.plain:
            return ext, ext, thr, C
        return ext, ext + (com[:, :, None] + self.scorer.pending(tree, nodes, C)), thr, C

    def _children(
        self, S: _Beams, par: np.ndarray, tk: np.ndarray, es: np.ndarray, fr: np.ndarray | int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The nodes of extensions ``(par, tk)`` with CTC scores ``es`` at frames ``fr`` (an int: all at that
        frame), created where new, with their best score and its frame; and their flat index among the
        members (None: all new)."""
        tree = self.tree
        ch = tree.lookup(par, tk)
        new = ch < 0
        if new.all():  # all new: none is in a beam yet, and each gets its first best score
            ch = self._create(par, tk)
            tree.best[ch] = es
            tree.frame[ch] = fr
            return ch, None
        if new.any():
            ch[new] = self._create(par[new], tk[new])
        better = es > tree.best[ch]
        cb = ch[better]
        tree.best[cb] = es[better]
        tree.frame[cb] = fr if isinstance(fr, int) else fr[better]
        return ch, tree.positions(S.nodes.ravel(), ch)

    def _merge(self, S: _Beams, idx: np.ndarray, es: np.ndarray) -> np.ndarray | None:
        """Extensions that are members already (``idx >= 0``) add ``es`` to their non-blank score;
        returns which extensions are not members (None: all of them)."""
        hit = idx >= 0
        if not hit.any():
            return None
        ih = idx[hit]
        pb, pnb, score = S.pb.reshape(-1), S.pnb.reshape(-1), S.score.reshape(-1)
        pnb[ih] = np.logaddexp(pnb[ih], es[hit])
        # Only the members that absorbed an extension change their score.
        score[ih] = np.logaddexp(pb[ih], pnb[ih])
        if not self.plain:
            score[ih] += S.ex.reshape(-1)[ih]
        return ~hit

    def _admit(
        self, S: _Beams, rows: np.ndarray, rr: np.ndarray, ch: np.ndarray, es: np.ndarray, tk: np.ndarray,
        add: np.ndarray | None, go: np.ndarray,
    ) -> None:
        """Nodes ``ch`` of rows ``rr`` (where ``add``, and alive) join the beams, which are then pruned to
        ``beam`` members within ``beam_threshold`` of the best (rows where ``go``; the others stay)."""
        plain = self.plain
        exc = None if plain else self.tree.extra[ch]
        if not plain and self.scorer.may_die:
            alive = exc > NEG
            add = alive if add is None else add & alive
        if add is not None:
            rr, ch, es, tk = rr[add], ch[add], es[add], tk[add]
            exc = None if plain else exc[add]
        m, W = S.nodes.shape
        n = len(ch)
        # Candidates per row: its W members, then its new nodes; ``pool`` indexes the fields below.
        rank = np.arange(n) - np.searchsorted(rr, rr)
        width = W + (int(rank.max()) + 1 if n else 0)
        cand = np.full((m, width), NEG)
        cand[:, :W] = S.score
        cand[rr, W + rank] = es if plain else es + exc
        pool = np.full((m, width), m * W + n)  # padding: the last pool entry
        pool[:, :W] = np.arange(m * W).reshape(m, W)
        pool[rr, W + rank] = np.arange(m * W, m * W + n)
        # Best first (stable: ties keep members before new nodes, whatever the padding).
        order = np.argsort(-cand, axis=1, kind="stable")[:, : self.cfg.beam]
        sk = cand[rows, order]
        good = (sk > NEG) & ((sk >= sk[:, :1] - self.cfg.beam_threshold) | ~go[:, None])
        keep = int(good.sum(1).max())
        pk = np.where(good[:, :keep], pool[rows, order[:, :keep]], m * W + n)
        ex_new = np.zeros(n) if plain else exc
        for name, new, pad in (
            ("nodes", ch, 0), ("pb", np.full(n, NEG), NEG), ("pnb", es, NEG), ("last", tk, self.V),
            ("ex", ex_new, 0.0), ("score", cand[rr, W + rank], NEG),
        ):
            setattr(S, name, np.concatenate([getattr(S, name).reshape(-1), new, [pad]])[pk])

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
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return self._search(lp, lens)
