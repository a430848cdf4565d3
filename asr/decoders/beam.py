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

Words end at a word-boundary token (``<space>`` of char tables) or, for sentencepiece pieces,
where a piece starting with ``▁`` begins the next word; the last word of a hypothesis ends with the
utterance. Phone tables have neither: every token is a word, and only plain search applies.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from asr.decoders.hypothesis import DecodeConfig, Hypothesis, check_inputs, word_starts, words_from_tokens
from asr.decoders.lexicon import WordTrie, prefix_free, read_word_list, spell
from asr.decoders.lm import BOS, EOS, UNK, ArpaLM, KenLM, load_lm
from asr.decoders.pieces import PieceSpeller, PieceTrie
from asr.errors import AsrError
from asr.tokens import WORD_START

NEG = -np.inf
FLOOR = -1e4  # log-prob of "impossible": exp() is 0, yet sums over frames stay exact to ~1e-9
_NODE_FIELDS = ("parent", "token", "child", "committed", "extra", "tnode", "hnode", "ctx", "frame", "best")


class BeamSearchDecoder:
    """Prefix beam search; ``decode(log_probs (B, T, V), lengths (B,))`` -> n-best lists."""

    def __init__(self, symbols: list[str], config: DecodeConfig | None = None, lm: ArpaLM | KenLM | None = None):
        self.symbols = list(symbols)
        self.cfg = cfg = config or DecodeConfig()
        self.V = len(self.symbols)
        self.boundary = self.symbols.index(cfg.word_boundary) if cfg.word_boundary in self.symbols else None
        # (V,) bool of the word-start pieces of a sentencepiece table; None for chars and phones.
        self.starts = word_starts(self.symbols, self.boundary)
        if (cfg.lm or lm or cfg.lexicon or cfg.hotwords) and self.boundary is None and self.starts is None:
            raise AsrError(
                f"an LM, lexicon or hotwords need the word boundary symbol {cfg.word_boundary!r} (or "
                "sentencepiece pieces) in the token table"
            )
        self.lm = lm if lm is not None else (load_lm(cfg.lm) if cfg.lm else None)
        skip = {0} if self.boundary is None else {0, self.boundary}
        self.skip = skip
        if self.starts is not None:
            self.speller = PieceSpeller(self.symbols, self.starts, skip)
            # What each piece adds to the word it is part of: word starts without their "▁".
            self.text = [s[len(WORD_START) :] if st else s for s, st in zip(self.symbols, self.starts, strict=True)]
        self.trie, self.hard, special = None, False, []
        if cfg.lexicon:
            words = read_word_list(cfg.lexicon)
            self.trie, self.hard = self._new_trie(words), True
            self.lexicon_words = set(words)
            if self.trie.size == 1:
                raise AsrError(f"{cfg.lexicon}: none of its words can be spelled with the tokens")
        elif self.lm is not None and self.lm.vocab:
            # <s>, </s> and <unk> are no vocabulary words, yet ``word in lm`` may hold for them: where
            # the tokens spell them they get trie nodes of their own (penalised like non-words, see
            # ``_tables``), so that a trie node names one word to the LM cache (``_word_classes``).
            vocab = sorted(self.lm.vocab)
            special = [w for w in (BOS, EOS, UNK) if w not in self.lm.vocab and self._spell(w)]
            self.trie = self._new_trie(vocab + special)
        self.n_real = len(self.trie.words) - len(special) if self.trie is not None else 0
        if self.lm is not None and self.lm.vocab is not None:
            from_lm = self.trie is not None and not self.hard
            missing = set(self.trie.missing) if from_lm else {w for w in self.lm.vocab if self._spell(w) is None}
            if len(missing) == len(self.lm.vocab):
                sample = ", ".join(sorted(self.lm.vocab)[:3])
                raise AsrError(
                    f"{self.lm.path}: none of the LM's {len(self.lm.vocab)} words ({sample}, ...) "
                    "can be spelled with the tokens (letter case? units?)"
                )
        self.hotset: set[str] = {w for h in cfg.hotwords for w in h.split()}
        self.hot = None
        if self.hotset:
            self.hot = self._new_trie(sorted(self.hotset), {w: cfg.hotword_bonus for w in self.hotset})
        self.plain = self.lm is None and self.trie is None and self.hot is None
        # Whether a prefix can score -inf (or NaN) and must be kept out of the beam; else that
        # check is skipped. A non-finite word score found later sets it (see ``_word_score``).
        weights = (cfg.unk_penalty, cfg.alpha, cfg.beta, cfg.hotword_bonus)
        self.may_die = self.hard or not all(math.isfinite(w) for w in weights)
        self._word_classes(skip)
        self._tables()
        self._alloc(4096)

    def _spell(self, word: str) -> list[int] | None:
        return spell(word, self.symbols, self.skip) if self.starts is None else self.speller(word)

    def _new_trie(self, words: list[str], weights: dict[str, float] | None = None) -> WordTrie | PieceTrie:
        if self.starts is None:
            return WordTrie(words, self.symbols, self.skip, weights)
        return PieceTrie(words, self.symbols, self.starts, self.skip, weights)

    def _word_classes(self, skip: set[int]) -> None:
        # Completing a word costs an LM query per (context, word). When each trie node names one
        # string (prefix-free spelling symbols), every word outside the LM vocabulary (or outside a
        # lexicon) scores alike, so words are keyed by their trie node, all outsiders share one
        # class, and the word string is only spelled out on a cache miss. Hotwords give words
        # outside the LM their own bonuses, so they keep the string path.
        # A piece trie's nodes are character prefixes: each names one string by construction.
        self.by_class = (
            self.trie is not None and self.hot is None and (self.starts is not None or prefix_free(self.symbols, skip))
        )
        if self.by_class:
            # Class 0: the empty word (root); of a final node: the node; of everything else: ``other``.
            self.other = self.trie.size + 1
            self.cls_of = np.where(self.trie.final, np.arange(self.trie.size + 1), self.other)
            self.cls_of[0] = 0

    def _tables(self) -> None:
        # What a child prefix adds to its parent's committed score, per (trie node, token), so
        # extensions are ranked with their real score before any of them is created. At a word
        # boundary the LM part is left out and beta counted: an optimistic bound, so no extension
        # is wrongly skipped.
        miss = NEG if self.hard else self.cfg.unk_penalty
        self.t_tab = self.h_tab = self.t_pen = None
        b = self.boundary
        if self.trie is not None:
            self.t_pen = t_pen = np.zeros(self.trie.size + 1)  # what entering a trie node adds
            t_pen[self.trie.outside] = miss
            t_pen[self.trie.origin >= self.n_real] = miss  # prefixes of <s>, </s>, <unk> only
            self.t_tab = t_pen[self.trie.next]
            real_word = self.trie.final & (self.trie.word_of < self.n_real)
            done = np.where(real_word, 0.0, miss)
            done[0] = 0.0
            if self.lm is not None:
                done += self.cfg.beta
            if self.starts is None:
                self.t_tab[:, b] = done
            else:
                # A word-start piece completes the word before it and enters the node of its own text
                # (the column of t_tab already holds what entering that node adds).
                self.t_tab[:, self.starts] += done[:, None]
        if self.hot is not None:
            self.h_tab = self.hot.bonus[self.hot.next]
            done = np.where(self.hot.final, self.hot.bonus, 0.0)
            if self.lm is not None and self.trie is None:
                done += self.cfg.beta
            if self.starts is None:
                self.h_tab[:, b] = done
            else:
                self.h_tab[:, self.starts] += done[:, None]
        self.b_tab = None
        if self.trie is None and self.hot is None and self.lm is not None:
            self.b_tab = np.zeros(self.V)
            self.b_tab[b if self.starts is None else self.starts] = self.cfg.beta

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
        old = {k: getattr(self, k) for k in _NODE_FIELDS}
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
        self.wmemo: dict[tuple[int, str] | int, tuple[float, int]] = {}

    def _word(self, node: int) -> str:
        """The partial word at the end of prefix ``node`` (memoised: beams share prefixes)."""
        w = self.wcache.get(node)
        if w is None:
            tok = self.token[node]
            if node == 0:
                w = ""
            elif self.starts is not None:  # a word-start piece begins the word afresh
                w = self.text[tok] if self.starts[tok] else self._word(int(self.parent[node])) + self.text[tok]
            else:
                w = "" if tok == self.boundary else self._word(int(self.parent[node])) + self.symbols[tok]
            self.wcache[node] = w
        return w

    def _complete(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score of finishing the partial words ending at ``nodes (M,)``: committed scores (or -inf)
        ``(M,)`` and LM context ids ``(M,)``. Memoised per (context, word), or per (context, word
        class) where ``_word_classes`` allows it."""
        ctx = self.ctx[nodes]
        if not self.by_class:
            keys = [(c, self._word(p)) for c, p in zip(ctx.tolist(), nodes.tolist(), strict=True)]
        else:
            wn = self.tnode[nodes]
            cls = self.cls_of[wn]
            keys = (ctx * (self.other + 1) + cls).tolist()
        memo = self.wmemo
        hits = [memo.get(k) for k in keys]
        if None in hits:
            for i, h in enumerate(hits):
                if h is None:
                    h = memo.get(keys[i])
                if h is None:
                    cx = int(ctx[i])
                    if not self.by_class:
                        word = keys[i][1]
                    elif cls[i] == self.other:
                        word = self._word(int(nodes[i]))
                    else:
                        word = self.trie.words[self.trie.word_of[wn[i]]] if cls[i] else ""
                    h = memo[keys[i]] = self._word_score(cx, word) if word else (0.0, cx)
                hits[i] = h
        return self.committed[nodes] + [h[0] for h in hits], np.array([h[1] for h in hits], np.int64)

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
        if not math.isfinite(sc):
            self.may_die = True
        return sc, ctx

    def _create(self, par: np.ndarray, tok: np.ndarray) -> np.ndarray:
        """New children of ``par (M,)`` by ``tok (M,)`` (pairs not in the tree yet) -> their ids ``(M,)``."""
        m = len(par)
        a = self.n
        z = a + m
        if z > self.cap:
            self._grow(z)
        self.n = z
        # New ids are contiguous: slices are cheaper than fancy indexing.
        ids = np.arange(a, z)
        self.parent[a:z], self.token[a:z] = par, tok
        self.best[a:z] = NEG
        self.child[par, tok] = ids
        if self.plain:  # no LM, lexicon or hotwords: every score addend stays 0
            return ids
        com = self.committed[par]
        self.committed[a:z] = com
        self.ctx[a:z] = self.ctx[par]
        pending = None
        if self.trie is not None:
            tn = self.trie.next[self.tnode[par], tok]
            self.tnode[a:z] = tn
            pending = self.t_pen[tn]
        if self.hot is not None:
            hn = self.hot.next[self.hnode[par], tok]
            self.hnode[a:z] = hn
            pending = self.hot.bonus[hn] if pending is None else pending + self.hot.bonus[hn]
        self.extra[a:z] = com if pending is None else com + pending
        if self.starts is not None:
            # A word-start piece completes its parent's word; it already stands in its own word's
            # trie nodes, whose pending score is kept on top of the completed one.
            sp = self.starts[tok].nonzero()[0]
            if len(sp):
                sc, ctx = self._complete(par[sp])
                nodes = sp + a
                self.committed[nodes] = sc
                self.extra[nodes] = sc if pending is None else sc + pending[sp]
                self.ctx[nodes] = ctx
            return ids
        sp = (tok == self.boundary).nonzero()[0]
        if len(sp):
            sc, ctx = self._complete(par[sp])
            nodes = sp + a
            self.committed[nodes] = self.extra[nodes] = sc
            self.ctx[nodes] = ctx
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

    def _search(self, lp: np.ndarray) -> list[Hypothesis]:
        cfg, nb, plain = self.cfg, self.cfg.beam, self.plain
        self._reset()
        T = len(lp)
        # Finite floor instead of -inf, so cumulative sums can be differenced without NaNs.
        lp = np.maximum(lp, FLOOR)
        lpp = np.concatenate([lp, np.full((T, 1), FLOOR)], 1)
        cands = self._candidates(lp)
        # nxt[t]: the first frame >= t with candidates (T if none), to skip blank runs in one step.
        act = np.array([c is not None for c in cands] + [True])
        nxt = np.minimum.accumulate(np.where(act, np.arange(T + 1), T)[::-1])[::-1].tolist()
        arange, negs = np.arange(nb + nb * self.V), np.full(nb * self.V, NEG)
        blank_tail = np.concatenate([np.cumsum(lp[::-1, 0])[::-1], [0.0]])  # log P(blank on t..T-1)
        nodes = np.zeros(1, np.int64)
        pb, pnb = np.zeros(1), np.full(1, NEG)
        last, ex = np.full(1, self.V), np.zeros(1)
        t = 0
        while t < T:
            C = cands[t]
            if C is None:
                e = nxt[t]
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
            row = lpp[t]
            K = len(C)
            ptot = np.logaddexp(pb, pnb)
            new_pb = ptot + row[0]
            new_pnb = pnb + row[last]
            ext = np.where(last[:, None] == C, pb[:, None], ptot[:, None])
            ext += row[C]
            ext = ext.ravel()
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
            add = None
            if new.all():  # all new: none is in the beam yet, and each gets its first best score
                ch = self._create(par, tk)
                self.best[ch] = es
                self.frame[ch] = t
            else:
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
                    # Only the members that absorbed an extension change their score.
                    cur[ih] = np.logaddexp(new_pb[ih], new_pnb[ih])
                    if not plain:
                        cur[ih] += ex[ih]
                    add = ~hit
            if not plain:
                exc = self.extra[ch]
                if self.may_die:
                    alive = exc > NEG
                    add = alive if add is None else add & alive
            if add is not None:
                ch, es, tk = ch[add], es[add], tk[add]
                if not plain:
                    exc = exc[add]
            nodes = np.concatenate([nodes, ch])
            pb = np.concatenate([new_pb, negs[: len(ch)]])
            pnb = np.concatenate([new_pnb, es])
            last = np.concatenate([last, tk])
            # New members have P(blank) = 0, so their CTC score is their non-blank one.
            if plain:
                score = np.concatenate([cur, es])
            else:
                ex = np.concatenate([ex, exc])
                score = np.concatenate([cur, es + exc])
            if len(score) > nb:
                keep = np.argpartition(-score, nb - 1)[:nb]
                sk = score[keep]
                keep = keep[sk >= sk.max() - cfg.beam_threshold]
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
        if self.plain:
            fused = np.array(ctc, float)
        else:
            scs, ctxs = self._complete(nodes)
            fused, ends = [], {}  # beams share LM contexts: one </s> query each
            for c, sc, ctx in zip(ctc.tolist(), scs.tolist(), ctxs.tolist(), strict=True):
                if self.lm is not None and sc > NEG:
                    end = ends.get(ctx)
                    if end is None:
                        end = ends[ctx] = self.cfg.alpha * self.lm.end(self.ctx_states[ctx])
                    sc += end
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
            words = words_from_tokens(toks, self.symbols, self.boundary, self.starts is not None)
            out.append(Hypothesis(toks, words, float(fused[i]), self.frame[path].tolist()))
        return out

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """``log_probs (B, T, V)``, ``lengths (B,)`` -> per utterance up to ``nbest`` hypotheses, best first."""
        lp, lens = check_inputs(log_probs, lengths, self.V)
        with np.errstate(divide="ignore", invalid="ignore"):
            return [self._search(lp[i, : lens[i]]) for i in range(len(lp))]
