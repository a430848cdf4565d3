"""CTC prefix beam search (Hannun et al. 2014) with word n-gram shallow fusion, lexicon and hotwords.

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
"""

from __future__ import annotations

import math

import numpy as np
import torch

from asr.decoders.hypothesis import DecodeConfig, Hypothesis, check_inputs, words_from_tokens
from asr.decoders.lexicon import WordTrie, read_word_list, spell
from asr.decoders.lm import ArpaLM, KenLM, load_lm
from asr.errors import AsrError

NEG = -np.inf
FLOOR = -1e4  # log-prob of "impossible": exp() is 0, yet sums over frames stay exact to ~1e-9


class BeamSearchDecoder:
    """Prefix beam search; ``decode(log_probs (B, T, V), lengths (B,))`` -> n-best lists."""

    def __init__(self, symbols: list[str], config: DecodeConfig | None = None, lm: ArpaLM | KenLM | None = None):
        self.symbols = list(symbols)
        self.cfg = cfg = config or DecodeConfig()
        self.V = len(self.symbols)
        self.boundary = self.symbols.index(cfg.word_boundary) if cfg.word_boundary in self.symbols else None
        if (cfg.lm or lm or cfg.lexicon or cfg.hotwords) and self.boundary is None:
            raise AsrError(
                f"an LM, lexicon or hotwords need the word boundary symbol {cfg.word_boundary!r} in the token table"
            )
        self.lm = lm if lm is not None else (load_lm(cfg.lm) if cfg.lm else None)
        skip = {0} if self.boundary is None else {0, self.boundary}
        self.trie, self.hard = None, False
        if cfg.lexicon:
            words = read_word_list(cfg.lexicon)
            self.trie, self.hard = WordTrie(words, self.symbols, skip), True
            self.lexicon_words = set(words)
            if self.trie.size == 1:
                raise AsrError(f"{cfg.lexicon}: none of its words can be spelled with the tokens")
        elif self.lm is not None and self.lm.vocab:
            self.trie = WordTrie(sorted(self.lm.vocab), self.symbols, skip)
        if self.lm is not None and self.lm.vocab is not None:
            from_lm = self.trie is not None and not self.hard
            missing = (
                set(self.trie.missing)
                if from_lm
                else {w for w in self.lm.vocab if spell(w, self.symbols, skip) is None}
            )
            if len(missing) == len(self.lm.vocab):
                sample = ", ".join(sorted(self.lm.vocab)[:3])
                raise AsrError(
                    f"{self.lm.path}: none of the LM's {len(self.lm.vocab)} words ({sample}, ...) "
                    "can be spelled with the tokens (letter case? units?)"
                )
        self.hotset: set[str] = {w for h in cfg.hotwords for w in h.split()}
        self.hot = None
        if self.hotset:
            self.hot = WordTrie(sorted(self.hotset), self.symbols, skip, {w: cfg.hotword_bonus for w in self.hotset})
        self.plain = self.lm is None and self.trie is None and self.hot is None
        self._tables()
        self._alloc(4096)

    def _tables(self) -> None:
        # What a child prefix adds to its parent's committed score, per (trie node, token), so
        # extensions are ranked with their real score before any of them is created. At a word
        # boundary the LM part is left out and beta counted: an optimistic bound, so no extension
        # is wrongly skipped.
        miss = NEG if self.hard else self.cfg.unk_penalty
        self.t_tab = self.h_tab = None
        b = self.boundary
        if self.trie is not None:
            t_pen = np.zeros(self.trie.size + 1)
            t_pen[self.trie.outside] = miss
            self.t_tab = t_pen[self.trie.next]
            self.t_tab[:, b] = np.where(self.trie.final, 0.0, miss)
            self.t_tab[0, b] = 0.0
            if self.lm is not None:
                self.t_tab[:, b] += self.cfg.beta
        if self.hot is not None:
            self.h_tab = self.hot.bonus[self.hot.next]
            self.h_tab[:, b] = np.where(self.hot.final, self.hot.bonus, 0.0)
            if self.lm is not None and self.trie is None:
                self.h_tab[:, b] += self.cfg.beta
        self.b_tab = None
        if self.trie is None and self.hot is None and self.lm is not None:
            self.b_tab = np.zeros(self.V)
            self.b_tab[b] = self.cfg.beta

    def _pending(self, nodes: np.ndarray, C: np.ndarray) -> np.ndarray:
        """``(B, K)`` score change of extending prefixes ``nodes`` with tokens ``C`` (see ``_tables``)."""
        if self.t_tab is not None:
            pend = self.t_tab[self.tnode[nodes][:, None], C[None, :]]
            if self.h_tab is not None:
                pend = pend + self.h_tab[self.hnode[nodes][:, None], C[None, :]]
            return pend
        if self.h_tab is not None:
            return self.h_tab[self.hnode[nodes][:, None], C[None, :]]
        return np.broadcast_to(self.b_tab[C], (len(nodes), len(C)))

    # ---- prefix tree storage -------------------------------------------------------------------
    def _alloc(self, cap: int) -> None:
        self.cap = cap
        self.parent = np.zeros(cap, np.int64)
        self.token = np.zeros(cap, np.int64)
        self.child = np.full((cap, self.V), -1, np.int64)
        self.committed = np.zeros(cap)
        self.extra = np.zeros(cap)
        self.tnode = np.zeros(cap, np.int64)
        self.hnode = np.zeros(cap, np.int64)
        self.ctx = np.zeros(cap, np.int64)
        self.frame = np.zeros(cap, np.int64)
        self.best = np.zeros(cap)
        self.pos = np.full(cap, -1, np.int64)

    def _grow(self, need: int) -> None:
        old = {
            k: getattr(self, k)
            for k in ("parent", "token", "child", "committed", "extra", "tnode", "hnode", "ctx", "frame", "best")
        }
        cap = self.cap
        while cap < need:
            cap *= 2
        self._alloc(cap)
        for k, v in old.items():
            getattr(self, k)[: len(v)] = v

    def _reset(self) -> None:
        self.child[: getattr(self, "n", self.cap)] = -1
        self.n = 1
        self.parent[0], self.token[0] = -1, self.V  # column V of the padded log-probs is FLOOR
        self.committed[0] = self.extra[0] = 0.0
        self.tnode[0] = self.hnode[0] = self.ctx[0] = 0
        self.frame[0], self.best[0] = -1, NEG
        self.ctx_states = [self.lm.begin()] if self.lm is not None else [None]
        self.ctx_ids = {self.ctx_states[0]: 0}
        self.wcache: dict[int, str] = {}
        self.wmemo: dict[tuple[int, str], tuple[float, int]] = {}

    def _word(self, node: int) -> str:
        """The partial word at the end of prefix ``node`` (memoised: beams share prefixes)."""
        w = self.wcache.get(node)
        if w is None:
            tok = self.token[node]
            w = "" if node == 0 or tok == self.boundary else self._word(int(self.parent[node])) + self.symbols[tok]
            self.wcache[node] = w
        return w

    def _complete(self, node: int, word: str) -> tuple[float, int]:
        """Score of finishing ``word`` after prefix ``node``: (committed score or -inf, LM context id)."""
        sc, ctx = float(self.committed[node]), int(self.ctx[node])
        if not word:
            return sc, ctx
        key = (ctx, word)
        hit = self.wmemo.get(key)
        if hit is None:
            hit = self.wmemo[key] = self._word_score(ctx, word)
        return sc + hit[0], hit[1]

    def _word_score(self, ctx: int, word: str) -> tuple[float, int]:
        """What completing ``word`` in LM context ``ctx`` adds (-inf outside a lexicon), and the next context."""
        if self.hard and word not in self.lexicon_words:
            return NEG, ctx
        sc = 0.0
        if self.lm is not None:
            lp, state = self.lm.score(self.ctx_states[ctx], word)
            sc += self.cfg.alpha * lp + self.cfg.beta
            if word not in self.lm:
                sc += self.cfg.unk_penalty
            ctx = self.ctx_ids.get(state, -1)
            if ctx < 0:
                ctx = self.ctx_ids[state] = len(self.ctx_states)
                self.ctx_states.append(state)
        if word in self.hotset:
            sc += self.cfg.hotword_bonus
        return sc, ctx

    def _create(self, par: np.ndarray, tok: np.ndarray) -> np.ndarray:
        m = len(par)
        if self.n + m > self.cap:
            self._grow(self.n + m)
        ids = np.arange(self.n, self.n + m)
        self.n += m
        self.parent[ids], self.token[ids] = par, tok
        self.best[ids] = NEG
        self.child[par, tok] = ids
        if self.plain:  # no LM, lexicon or hotwords: every score addend stays 0
            return ids
        self.committed[ids] = self.committed[par]
        self.ctx[ids] = self.ctx[par]
        pending = np.zeros(m)
        if self.trie is not None:
            tn = self.trie.next[self.tnode[par], tok]
            self.tnode[ids] = tn
            out = tn == self.trie.outside
            pending[out] = NEG if self.hard else self.cfg.unk_penalty
        if self.hot is not None:
            hn = self.hot.next[self.hnode[par], tok]
            self.hnode[ids] = hn
            pending += self.hot.bonus[hn]
        self.extra[ids] = self.committed[ids] + pending
        if self.boundary is not None and (self.lm is not None or self.trie is not None or self.hot is not None):
            sp = np.flatnonzero(tok == self.boundary)
            if len(sp):
                done = [self._complete(p, self._word(p)) for p in par[sp].tolist()]
                nodes = ids[sp]
                self.committed[nodes] = self.extra[nodes] = [d[0] for d in done]
                self.ctx[nodes] = [d[1] for d in done]
                self.tnode[nodes] = self.hnode[nodes] = 0
        return ids

    # ---- search --------------------------------------------------------------------------------
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
                for t, c in zip(rows[starts].tolist(), np.split(cols, starts[1:]), strict=True):
                    out[t] = c
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

    def _search(self, lp: np.ndarray) -> list[Hypothesis]:
        cfg, nb, plain = self.cfg, self.cfg.beam, self.plain
        self._reset()
        T = len(lp)
        # Finite floor instead of -inf, so cumulative sums can be differenced without NaNs.
        lp = np.maximum(lp, FLOOR)
        lpp = np.concatenate([lp, np.full((T, 1), FLOOR)], 1)
        cands = self._candidates(lp)
        arange, negs = np.arange(nb + nb * self.V), np.full(nb * self.V, NEG)
        blank_tail = np.concatenate([np.cumsum(lp[::-1, 0])[::-1], [0.0]])  # log P(blank on t..T-1)
        nodes = np.zeros(1, np.int64)
        pb, pnb = np.zeros(1), np.full(1, NEG)
        last, ex = np.full(1, self.V), np.zeros(1)
        t = 0
        while t < T:
            if cands[t] is None:
                e = t + 1
                while e < T and cands[e] is None:
                    e += 1
                if e - t == 1:
                    pb, pnb = np.logaddexp(pb, pnb) + lp[t, 0], pnb + lpp[t, last]
                else:
                    # Closed form of a run of blank-only frames: a non-blank path either repeats its
                    # last token throughout or leaves it at some frame k and is blank from there on.
                    rl = lpp[t:e, last]  # (L, B)
                    rc = np.cumsum(rl, 0)
                    leave = (rc - rl) + (blank_tail[t:e] - blank_tail[e])[:, None]
                    pb = np.logaddexp(pb + (blank_tail[t] - blank_tail[e]), pnb + np.logaddexp.reduce(leave, 0))
                    pnb = pnb + rc[-1]
                t = e
                continue
            C = cands[t]
            row = lp[t]
            K = len(C)
            ptot = np.logaddexp(pb, pnb)
            new_pb = ptot + row[0]
            new_pnb = pnb + lpp[t, last]
            ext = (np.where(last[:, None] == C[None, :], pb[:, None], ptot[:, None]) + row[C][None, :]).ravel()
            cur = np.logaddexp(new_pb, new_pnb)
            if not plain:
                cur += ex
            if self.plain:
                esc = ext
            else:
                esc = ext + (self.committed[nodes][:, None] + self._pending(nodes, C)).ravel()
            B = len(nodes)
            top = esc.max()
            thr = max(cur.max(), top) - cfg.beam_threshold
            if B >= nb:
                thr = max(thr, np.partition(cur, B - nb)[B - nb])
            if top <= thr:  # nothing new can enter: the beam keeps its members and order
                pb, pnb = new_pb, new_pnb
                t += 1
                continue
            if B * K > nb:
                sel = np.argpartition(-esc, nb - 1)[:nb]
                sel = sel[esc[sel] > thr]
            else:
                sel = np.flatnonzero(esc > thr)
            bi, ki = np.divmod(sel, K)
            par, tk, es = nodes[bi], C[ki], ext[sel]
            ch = self.child[par, tk]
            new = ch < 0
            if new.any():
                ch[new] = self._create(par[new], tk[new])
            better = es > self.best[ch]
            cb = ch[better]
            self.best[cb] = es[better]
            self.frame[cb] = t
            self.pos[nodes] = arange[:B]
            idx = self.pos[ch]
            self.pos[nodes] = -1
            hit = idx >= 0
            if hit.any():
                ih = idx[hit]
                new_pnb[ih] = np.logaddexp(new_pnb[ih], es[hit])
                add = ~hit
            else:
                add = None
            if not plain:
                alive = self.extra[ch] > NEG
                add = alive if add is None else add & alive
            if add is not None:
                ch, es, tk = ch[add], es[add], tk[add]
            nodes = np.concatenate([nodes, ch])
            pb = np.concatenate([new_pb, negs[: len(ch)]])
            pnb = np.concatenate([new_pnb, es])
            last = np.concatenate([last, tk])
            score = np.logaddexp(pb, pnb)
            if not plain:
                ex = np.concatenate([ex, self.extra[ch]])
                score += ex
            if len(score) > nb:
                keep = np.argpartition(-score, nb - 1)[:nb]
                keep = keep[score[keep] >= score[keep].max() - cfg.beam_threshold]
            else:
                keep = np.flatnonzero(score >= score.max() - cfg.beam_threshold)
                if len(keep) == len(score):
                    t += 1
                    continue
            nodes, pb, pnb, last = nodes[keep], pb[keep], pnb[keep], last[keep]
            if not plain:
                ex = ex[keep]
            t += 1
        return self._finish(nodes, np.logaddexp(pb, pnb))

    def _finish(self, nodes: np.ndarray, ctc: np.ndarray) -> list[Hypothesis]:
        fused = []
        for node, c in zip(nodes.tolist(), ctc.tolist(), strict=True):
            if self.plain:
                fused.append(c)
                continue
            sc, ctx = self._complete(node, self._word(node))
            if self.lm is not None and sc > NEG:
                sc += self.cfg.alpha * self.lm.end(self.ctx_states[ctx])
            fused.append(c + sc)
        fused = np.array(fused)
        if not np.isfinite(fused).any():  # a lexicon left no complete word: fall back to CTC ranking
            fused = ctc
        out = []
        for i in np.argsort(-fused, kind="stable")[: self.cfg.nbest]:
            if not np.isfinite(fused[i]) and out:
                break
            path = []
            node = int(nodes[i])
            while node > 0:
                path.append(node)
                node = int(self.parent[node])
            path.reverse()
            toks = self.token[path].tolist()
            words = words_from_tokens(toks, self.symbols, self.boundary)
            out.append(Hypothesis(toks, words, float(fused[i]), self.frame[path].tolist()))
        return out

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """``log_probs (B, T, V)``, ``lengths (B,)`` -> per utterance up to ``nbest`` hypotheses, best first."""
        lp, lens = check_inputs(log_probs, lengths, self.V)
        with np.errstate(divide="ignore", invalid="ignore"):
            return [self._search(lp[i, : lens[i]]) for i in range(len(lp))]
