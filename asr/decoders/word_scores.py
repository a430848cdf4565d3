"""What words add to a prefix's score in the beam search: LM shallow fusion, a word list, hotwords.

The fused score of a prefix is ``log P_ctc + alpha log P_lm(words) + beta |words|`` plus OOV
penalties and hotword bonuses; with a word list (``DecodeConfig.words``) a word outside it makes the
prefix impossible. A word counts once it is completed: at a word-boundary token (``<space>`` of char
tables), where the next word-start piece (``▁...``) begins, or at the end of the utterance. While it
is being spelled, tries over the word list (or the LM vocabulary) and over the hotwords give the
prefix a pending score (a penalty as soon as no word starts so, a growing share of a hotword's
bonus), so pruning sees it early. The LM is queried once per (LM context, word), and cached.

The per-node fields live in the :class:`~asr.decoders.prefix_tree.PrefixTree`: ``committed`` (the
completed words), ``extra`` (committed + pending), ``tnode`` / ``hnode`` (the partial word's node in
the word trie / hotword trie) and ``ctx`` (an id of the LM state after the completed words).
"""

from __future__ import annotations

import math

import numpy as np

from asr.decoders.hypothesis import DecodeConfig
from asr.decoders.pieces import PieceSpeller, PieceTrie
from asr.decoders.prefix_tree import NEG, PrefixTree
from asr.decoders.word_trie import WordTrie, prefix_free, read_word_list, spell
from asr.errors import AsrError
from asr.lm.arpa import BOS, EOS, UNK
from asr.lm.backends import ArpaLM, KenLM
from asr.tokens import WORD_START


class WordScorer:
    """Word-level scores of prefixes for token table ``symbols``, with word boundary token ``boundary``
    (chars) or word-start pieces ``starts`` ((V,) bool, sentencepiece); ``plain``: nothing to score."""

    def __init__(
        self, symbols: list[str], cfg: DecodeConfig, lm: ArpaLM | KenLM | None, boundary: int | None,
        starts: np.ndarray | None,
    ):
        self.symbols, self.cfg, self.lm = symbols, cfg, lm
        self.boundary, self.starts = boundary, starts
        self.skip = skip = {0} if boundary is None else {0, boundary}
        if starts is not None:
            self.speller = PieceSpeller(symbols, starts, skip)
            # What each piece adds to the word it is part of: word starts without their "▁".
            self.text = [s[len(WORD_START) :] if st else s for s, st in zip(symbols, starts, strict=True)]
        self._word_trie()
        self.hotset: set[str] = {w for h in cfg.hotwords for w in h.split()}
        self.hot = None
        if self.hotset:
            self.hot = self._new_trie(sorted(self.hotset), {w: cfg.hotword_bonus for w in self.hotset})
        self.plain = lm is None and self.trie is None and self.hot is None
        # Whether a prefix can score -inf (or NaN) and must be kept out of the beam; else that
        # check is skipped. A non-finite word score found later sets it (see ``_word_score``).
        weights = (cfg.unk_penalty, cfg.alpha, cfg.beta, cfg.hotword_bonus)
        self.may_die = self.hard or not all(math.isfinite(w) for w in weights)
        self._word_classes(skip)
        self._tables()
        self.reset()

    def _word_trie(self) -> None:
        """The trie of the word list (``hard``: only its words), else of the LM vocabulary, else None."""
        cfg, lm = self.cfg, self.lm
        self.trie, self.hard, special = None, False, []
        if cfg.words:
            words = read_word_list(cfg.words)
            self.trie, self.hard = self._new_trie(words), True
            self.word_set = set(words)
            if self.trie.size == 1:
                raise AsrError(f"{cfg.words}: none of its words can be spelled with the tokens")
        elif lm is not None and lm.vocab:
            # <s>, </s> and <unk> are no vocabulary words, yet ``word in lm`` may hold for them: where
            # the tokens spell them they get trie nodes of their own (penalised like non-words, see
            # ``_tables``), so that a trie node names one word to the LM cache (``_word_classes``).
            vocab = sorted(lm.vocab)
            special = [w for w in (BOS, EOS, UNK) if w not in lm.vocab and self._spell(w)]
            self.trie = self._new_trie(vocab + special)
        self.n_real = len(self.trie.words) - len(special) if self.trie is not None else 0
        if lm is not None and lm.vocab is not None:
            from_lm = self.trie is not None and not self.hard
            missing = set(self.trie.missing) if from_lm else {w for w in lm.vocab if self._spell(w) is None}
            if len(missing) == len(lm.vocab):
                sample = ", ".join(sorted(lm.vocab)[:3])
                raise AsrError(
                    f"{lm.path}: none of the LM's {len(lm.vocab)} words ({sample}, ...) "
                    "can be spelled with the tokens (letter case? units?)"
                )

    def _spell(self, word: str) -> list[int] | None:
        return spell(word, self.symbols, self.skip) if self.starts is None else self.speller(word)

    def _new_trie(self, words: list[str], weights: dict[str, float] | None = None) -> WordTrie | PieceTrie:
        if self.starts is None:
            return WordTrie(words, self.symbols, self.skip, weights)
        return PieceTrie(words, self.symbols, self.starts, self.skip, weights)

    def _word_classes(self, skip: set[int]) -> None:
        # Completing a word costs an LM query per (context, word). When each trie node names one
        # string (prefix-free spelling symbols), every word outside the LM vocabulary (or outside a
        # word list) scores alike, so words are keyed by their trie node, all outsiders share one
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
            self.b_tab = np.zeros(len(self.symbols))
            self.b_tab[b if self.starts is None else self.starts] = self.cfg.beta
            self.b_most = self.b_tab.max()
        self.t_most = None if self.t_tab is None else self.t_tab.max(1)
        self.h_most = None if self.h_tab is None else self.h_tab.max(1)

    def reset(self) -> None:
        """Forget the LM contexts and cached word scores (before each utterance)."""
        self.ctx_states = [self.lm.begin()] if self.lm is not None else [None]
        self.ctx_ids = {self.ctx_states[0]: 0}
        self.wcache: dict[int, str] = {}
        self.wmemo: dict[tuple[int, str] | int, tuple[float, int]] = {}

    def pending(self, tree: PrefixTree, nodes: np.ndarray, C: np.ndarray) -> np.ndarray:
        """``(U, W, K)`` score change of extending prefixes ``nodes (U, W)`` with tokens ``C (U, K)``
        (see ``_tables``); ``(U, 1, K)`` where it does not depend on the prefix."""
        cols = C[:, None, :]
        if self.t_tab is not None:
            pend = self.t_tab[tree.tnode[nodes][:, :, None], cols]
            if self.h_tab is not None:
                pend += self.h_tab[tree.hnode[nodes][:, :, None], cols]
            return pend
        if self.h_tab is not None:
            return self.h_tab[tree.hnode[nodes][:, :, None], cols]
        return self.b_tab[cols]

    def most(self, tree: PrefixTree, nodes: np.ndarray) -> np.ndarray:
        """``(U, W)`` the largest score change any token can bring prefixes ``nodes`` (an upper bound
        of ``pending``, to drop tokens that cannot make it into the beam)."""
        if self.t_tab is not None:
            most = self.t_most[tree.tnode[nodes]]
            return most if self.h_tab is None else most + self.h_most[tree.hnode[nodes]]
        if self.h_tab is not None:
            return self.h_most[tree.hnode[nodes]]
        return np.full(nodes.shape, self.b_most)

    def enter(self, tree: PrefixTree, par: np.ndarray, tok: np.ndarray) -> None:
        """The word fields of the nodes ``tree.add(par, tok)`` just created (the last ``len(par)`` ones)."""
        z = tree.n
        a = z - len(par)
        com = tree.committed[par]
        tree.committed[a:z] = com
        tree.ctx[a:z] = tree.ctx[par]
        pending = None
        if self.trie is not None:
            tn = self.trie.next[tree.tnode[par], tok]
            tree.tnode[a:z] = tn
            pending = self.t_pen[tn]
        if self.hot is not None:
            hn = self.hot.next[tree.hnode[par], tok]
            tree.hnode[a:z] = hn
            pending = self.hot.bonus[hn] if pending is None else pending + self.hot.bonus[hn]
        tree.extra[a:z] = com if pending is None else com + pending
        if self.starts is not None:
            # A word-start piece completes its parent's word; it already stands in its own word's
            # trie nodes, whose pending score is kept on top of the completed one.
            sp = self.starts[tok].nonzero()[0]
            if len(sp):
                sc, ctx = self.complete(tree, par[sp])
                nodes = sp + a
                tree.committed[nodes] = sc
                tree.extra[nodes] = sc if pending is None else sc + pending[sp]
                tree.ctx[nodes] = ctx
            return
        sp = (tok == self.boundary).nonzero()[0]
        if len(sp):
            sc, ctx = self.complete(tree, par[sp])
            nodes = sp + a
            tree.committed[nodes] = tree.extra[nodes] = sc
            tree.ctx[nodes] = ctx
            tree.tnode[nodes] = tree.hnode[nodes] = 0

    def _word(self, tree: PrefixTree, node: int) -> str:
        """The partial word at the end of prefix ``node`` (memoised: beams share prefixes)."""
        w = self.wcache.get(node)
        if w is None:
            tok = tree.token[node]
            if tree.parent[node] < 0:  # a root: the empty prefix
                w = ""
            elif self.starts is not None:  # a word-start piece begins the word afresh
                w = self.text[tok] if self.starts[tok] else self._word(tree, int(tree.parent[node])) + self.text[tok]
            else:
                w = "" if tok == self.boundary else self._word(tree, int(tree.parent[node])) + self.symbols[tok]
            self.wcache[node] = w
        return w

    def complete(self, tree: PrefixTree, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score of finishing the partial words ending at ``nodes (M,)``: committed scores (or -inf)
        ``(M,)`` and LM context ids ``(M,)``. Memoised per (context, word), or per (context, word
        class) where ``_word_classes`` allows it."""
        ctx = tree.ctx[nodes]
        if not self.by_class:
            keys = [(c, self._word(tree, p)) for c, p in zip(ctx.tolist(), nodes.tolist(), strict=True)]
        else:
            wn = tree.tnode[nodes]
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
                        word = self._word(tree, int(nodes[i]))
                    else:
                        word = self.trie.words[self.trie.word_of[wn[i]]] if cls[i] else ""
                    h = memo[keys[i]] = self._word_score(cx, word) if word else (0.0, cx)
                hits[i] = h
        return tree.committed[nodes] + [h[0] for h in hits], np.array([h[1] for h in hits], np.int64)

    def _word_score(self, ctx: int, word: str) -> tuple[float, int]:
        """What completing ``word`` in LM context ``ctx`` adds (-inf outside the word list), and the next context."""
        if self.hard and word not in self.word_set:
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

    def final(self, tree: PrefixTree, nodes: np.ndarray) -> np.ndarray:
        """``(M,)`` word scores of the prefixes ``nodes`` at the end of the utterance: their last word
        completed, then the LM's end of sentence (one query per LM context: beams share them)."""
        scs, ctxs = self.complete(tree, nodes)
        out, ends = [], {}
        for sc, ctx in zip(scs.tolist(), ctxs.tolist(), strict=True):
            if self.lm is not None and sc > NEG:
                end = ends.get(ctx)
                if end is None:
                    end = ends[ctx] = self.cfg.alpha * self.lm.end(self.ctx_states[ctx])
                sc += end
            out.append(sc)
        return np.array(out)
