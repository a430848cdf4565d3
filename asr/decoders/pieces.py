"""Word tries over sentencepiece pieces, with the interface of :class:`asr.decoders.word_trie.WordTrie`.

A word of pieces is a piece starting with ``▁`` (the word start, its text after the marker) and
then pieces without it. Unlike letters, pieces spell one word in many ways (``▁HE LLO``,
``▁HELL O``, ...), and the model may emit any of them, so the trie's nodes are the *character*
prefixes of the words and a piece moves along as many characters as it holds: every spelling of a
word reaches the same node, and a node names one string. A ``▁`` piece leads from any node to the
node of its own text, since it always begins a new word; the beam search completes the previous
word when it sees one.
"""

from __future__ import annotations

import numpy as np

from asr.tokens import WORD_START


class PieceSpeller:
    """Spells words in the pieces of ``symbols`` (``starts``: which begin a word; ``skip``: ids never used)."""

    def __init__(self, symbols: list[str], starts: np.ndarray, skip: set[int]):
        self.V = len(symbols)
        self.starts = starts
        # What each piece adds to its word; ``first``: the word-start pieces by text (a bare "▁" has
        # the empty text), ``rest``: the others.
        self.first: dict[str, int] = {}
        self.rest: dict[str, int] = {}
        for i, s in enumerate(symbols):
            if i in skip:
                continue
            if starts[i]:
                self.first[s[len(WORD_START) :]] = i
            elif s:
                self.rest[s] = i
        self.longest = max(map(len, self.rest), default=0)
        self.longest_first = max(map(len, self.first), default=0)

    def __call__(self, word: str) -> list[int] | None:
        """One spelling of ``word``, or None if there is none.

        Preferably a ``▁`` piece and then others; failing that, pieces without the marker (as the
        trie allows at the start of an utterance), so that every word the trie reaches is spellable.
        """
        n = len(word)
        if not n:
            return None
        # back[j]: (i, piece) ending a spelling of word[:j] whose previous piece ends at i (-1: none;
        # piece None: nothing yet, the word starts at the root without a marker).
        back: list[tuple[int, int | None] | None] = [None] * (n + 1)
        back[0] = (-1, self.first.get(""))
        for j in range(1, n + 1):
            tok = self.first.get(word[:j]) if j <= self.longest_first else None
            if tok is not None:
                back[j] = (-1, tok)
                continue
            for i in range(max(0, j - self.longest), j):
                tok = self.rest.get(word[i:j])
                if back[i] is not None and tok is not None:
                    back[j] = (i, tok)
                    break
        if back[n] is None:
            return None
        out, j = [], n
        while j >= 0:
            i, tok = back[j]
            if tok is not None:
                out.append(tok)
            j = i
        return out[::-1]


class PieceTrie:
    """Character-prefix trie of words, stepped by pieces: ``next (N+1, V)``, ``final``, ``bonus``,
    ``word_of``, ``origin``, ``outside``, ``size``, ``words`` and ``missing`` as in ``WordTrie``.

    ``bonus`` (hotwords) grows with the characters spelled, not the pieces.
    """

    def __init__(
        self,
        words: list[str],
        symbols: list[str],
        starts: np.ndarray,
        skip: set[int],
        weights: dict[str, float] | None = None,
    ):
        spell = PieceSpeller(symbols, starts, skip)
        self.words = list(words)
        self.missing: list[str] = []
        children: list[dict[str, int]] = [{}]
        final, bonus, word_of, origin = [False], [0.0], [-1], [-1]
        edges: dict[tuple[int, int], int] = {}
        # Where each "▁" piece leads, from any node; a bare "▁" stays at the root.
        start_node = {spell.first[""]: 0} if "" in spell.first else {}
        for wi, w in enumerate(self.words):
            if spell(w) is None:
                self.missing.append(w)
                continue
            path = [0]
            for depth, ch in enumerate(w, 1):
                node = path[-1]
                nxt = children[node].get(ch)
                if nxt is None:
                    nxt = children[node][ch] = len(children)
                    children.append({})
                    final.append(False)
                    bonus.append(0.0)
                    word_of.append(-1)
                    origin.append(wi)
                path.append(nxt)
                if weights:
                    bonus[nxt] = max(bonus[nxt], weights[w] * depth / len(w))
            final[path[-1]] = True
            word_of[path[-1]] = wi
            for j in range(1, min(len(w), spell.longest_first) + 1):
                tok = spell.first.get(w[:j])
                if tok is not None:
                    start_node[tok] = path[j]
            for i in range(len(w)):
                for j in range(i + 1, min(len(w), i + spell.longest) + 1):
                    tok = spell.rest.get(w[i:j])
                    if tok is not None:
                        edges[path[i], tok] = path[j]
        n = len(children)
        self.outside = n
        self.next = np.full((n + 1, len(symbols)), n, dtype=np.int64)
        if edges:
            keys = np.array(list(edges), dtype=np.int64)
            self.next[keys[:, 0], keys[:, 1]] = list(edges.values())
        for tok in spell.first.values():
            self.next[:, tok] = start_node.get(tok, n)
        self.final = np.array(final + [False])
        self.bonus = np.array(bonus + [0.0])
        self.word_of = np.array(word_of + [-1], dtype=np.int64)
        self.origin = np.array(origin + [-1], dtype=np.int64)
        self.size = n
