"""The prefix beam search of one utterance alone: :mod:`asr.decoders.beam`'s step on 1-D arrays.

A ``decode`` call with a single utterance (``asr transcribe`` decodes one file per call) does not
need the ``(utterances, members)`` padding of the batched step, whose fixed cost per numpy call is
what a frame costs at small beams. These are the same operations in the same order on the one
row, so the results are bit for bit those of the batched search (``tests/test_decoders.py``
compares them): the beam's members ``(W,)`` instead of ``(1, W)``, no rows to index, no padding.
"""

from __future__ import annotations

import numpy as np

from asr.decoders.prefix_tree import NEG

_NEGS = np.full(1 << 16, NEG)  # new members' P(blank), sliced (never written)
_NEGS.flags.writeable = False


class _Beam:
    """One utterance's beam: the fields of :class:`asr.decoders.beam._Beams`, ``(W,)`` each, and
    ``t``, the next frame."""

    __slots__ = ("nodes", "pb", "pnb", "last", "ex", "score", "t")

    def __init__(self, vocab: int):
        self.nodes = np.zeros(1, np.int64)
        self.pb, self.pnb = np.zeros(1), np.full(1, NEG)
        self.last, self.ex = np.full(1, vocab), np.zeros(1)
        self.score = np.zeros(1)
        self.t = 0


class OneUtterance:
    """Mixin of :class:`asr.decoders.beam.BeamSearchDecoder`: ``_search_one`` (its ``tree``, ``scorer``,
    ``cfg``, ``plain``, ``V`` and ``_children`` / ``_merge``, which work on 1-D beams as they are)."""

    def _search_one(self, P) -> tuple[np.ndarray, np.ndarray]:
        """Search row 0 of the prepared batch ``P`` (a ``beam._Batch`` of one utterance) -> the final
        members' nodes and CTC log-probs."""
        S = _Beam(self.V)
        lp, c0 = P.lp[0], P.c0[0]
        n_act = int(P.nact[0])
        act, cnt = P.act[0, :n_act].tolist(), P.cnt[0, :n_act].tolist()
        for k, a in enumerate(act):
            self._run_one(lp, c0, S, a)
            K = cnt[k]
            self._extend_one(lp, S, k, a, P.cand[0, k, :K], P.clp[0, k, :K], P.blank[0, k])
            S.t = a + 1
        self._run_one(lp, c0, S, int(P.lens[0]))
        ctc = np.logaddexp(S.pb, S.pnb)
        ok = ctc > NEG
        return S.nodes[ok], ctc[ok]

    def _run_one(self, lp: np.ndarray, c0: np.ndarray, S: _Beam, e: int) -> None:
        """Frames ``S.t .. e-1`` extend no prefix: blanks or repeats (``beam._blank_run`` on one row)."""
        t = S.t
        L = e - t
        if L <= 0:
            return
        pb, pnb, last = S.pb, S.pnb, S.last
        if L == 1:
            d = c0[e] - c0[t]
            S.pb = np.logaddexp(pb + d, pnb + d)
            S.pnb = pnb + lp[t, last]
            return
        rl = lp[t:e].take(last, axis=1)  # (L, W), C-ordered as the batched step's (see below)
        rc = np.cumsum(rl, 0)
        ce = c0[e]
        x = (rc - rl) + (ce - c0[t:e])[:, None]
        mx = x.max(0)
        mx[mx == NEG] = 0.0
        # numpy sums along a contiguous axis pairwise, along another one in order: the layouts must be
        # the batched step's for the results to agree in the last bit.
        leave = mx + np.log(np.exp(x - mx).sum(0))
        S.pb = np.logaddexp(pb + (ce - c0[t]), pnb + leave)
        S.pnb = pnb + rc[-1]

    def _extend_one(
        self, lp: np.ndarray, S: _Beam, k: int, a: int, C: np.ndarray, lc: np.ndarray, blank: float
    ) -> None:
        """Active frame ``a``: the members move on, the best extensions join them (``beam._extend``)."""
        W = len(S.nodes)
        ext, esc, thr, C = self._advance_one(lp, S, a, C, lc, blank)
        if ext is None:
            return
        K = len(C)
        ext, esc = ext.ravel(), esc.ravel()
        top = esc.max()
        thr = max(thr, top - self.cfg.beam_threshold)
        if not top > thr:
            return
        nb = self.cfg.beam
        if W * K > nb:
            sel = np.argpartition(-esc, nb - 1)[:nb]
            s = sel[esc[sel] > thr]
        else:
            s = np.flatnonzero(esc > thr)
        bi, ki = np.divmod(s, K)
        par, tk, es = S.nodes[bi], C[ki], ext[s]
        ch, idx = self._children(S, par, tk, es, a)
        add = None if idx is None else self._merge(S, idx, es)
        self._admit_one(S, ch, es, tk, add)

    def _advance_one(
        self, lp: np.ndarray, S: _Beam, a: int, C: np.ndarray, lc: np.ndarray, blank: float
    ) -> tuple[np.ndarray | None, np.ndarray | None, float, np.ndarray]:
        """``beam._advance`` on one row: ``(W, K')`` CTC and fused extension scores, the threshold, ``C'``."""
        pb, pnb, last = S.pb, S.pnb, S.last
        ptot = np.logaddexp(pb, pnb)
        S.pb = ptot + blank
        S.pnb = pnb + lp[a, last]
        S.score = score = np.logaddexp(S.pb, S.pnb)
        if not self.plain:
            score += S.ex
        thr = score.max() - self.cfg.beam_threshold
        if len(score) >= self.cfg.beam:
            thr = max(thr, score.min())
        tree, nodes = self.tree, S.nodes
        com = None if self.plain else tree.committed[nodes]
        if len(score) * len(C) > self.cfg.beam:
            # Tokens that cannot enter (see beam._advance). With at most ``beam`` extensions, those
            # below ``thr`` drop out later just the same, and in the same order.
            hi = ptot if self.plain else ptot + com + self.scorer.most(tree, nodes)
            ok = (hi.max() + lc) > thr
            if not ok.all():
                if not ok.any():
                    return None, None, thr, C
                C, lc = C[ok], lc[ok]
        ext = np.where(last[:, None] == C, pb[:, None], ptot[:, None])
        ext += lc
        if self.plain:
            return ext, ext, thr, C
        return ext, ext + (com[:, None] + self.scorer.pending(tree, nodes[None], C[None])[0]), thr, C

    def _admit_one(self, S: _Beam, ch: np.ndarray, es: np.ndarray, tk: np.ndarray, add: np.ndarray | None) -> None:
        """``beam._admit`` on one row: nodes ``ch`` (where ``add``, and alive) join, the best ``beam``
        within ``beam_threshold`` of the best stay (members first among equals)."""
        plain = self.plain
        exc = None if plain else self.tree.extra[ch]
        if not plain and self.scorer.may_die:
            alive = exc > NEG
            add = alive if add is None else add & alive
        if add is not None:
            ch, es, tk = ch[add], es[add], tk[add]
            exc = None if plain else exc[add]
        new = es if plain else es + exc
        cand = np.concatenate([S.score, new])
        order = np.argsort(-cand, kind="stable")[: self.cfg.beam]
        sk = cand[order]
        keep = order[(sk > NEG) & (sk >= sk[0] - self.cfg.beam_threshold)]
        S.score = cand[keep]
        S.nodes = np.concatenate([S.nodes, ch])[keep]
        S.pb = np.concatenate([S.pb, _NEGS[: len(ch)] if len(ch) <= len(_NEGS) else np.full(len(ch), NEG)])[keep]
        S.pnb = np.concatenate([S.pnb, es])[keep]
        S.last = np.concatenate([S.last, tk])[keep]
        if not plain:
            S.ex = np.concatenate([S.ex, exc])[keep]
