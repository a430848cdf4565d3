"""Word tries over token ids, as dense tables so the beam search can follow them with numpy.

A trie maps (node, token) -> node; node ``outside`` (the last row) is a sink that every unknown
continuation falls into. The beam search keeps one trie node per prefix: for a word list
(``DecodeConfig.words``) it prunes prefixes that fall outside; for hotwords it gives partial
matches a growing bonus.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from asr.errors import AsrError


def spell(word: str, symbols: list[str], skip: set[int]) -> list[int] | None:
    """Split ``word`` into token ids by greedy longest match over ``symbols`` (None if impossible)."""
    by_len: dict[int, dict[str, int]] = {}
    for i, s in enumerate(symbols):
        if i not in skip and s:
            by_len.setdefault(len(s), {})[s] = i
    lens = sorted(by_len, reverse=True)
    out, pos = [], 0
    while pos < len(word):
        for n in lens:
            tok = by_len[n].get(word[pos : pos + n])
            if tok is not None:
                out.append(tok)
                pos += n
                break
        else:
            return None
    return out


class WordTrie:
    """Prefix trie of words spelled in tokens: ``next (N+1, V)`` int64, ``final (N+1,)`` bool.

    Node 0 is the root and node N (``outside``) the sink. ``bonus (N+1,)`` holds, for hotword
    tries, the partial credit of each prefix (its depth over the length of the word it leads to).
    ``words[word_of[node]]`` is the word ending at a final node (``word_of`` is -1 elsewhere), and
    ``origin[node]`` the index of the first word through the node (-1 for root and sink): with
    words ``a + b``, node ``n`` is a prefix of a word of ``a`` iff ``origin[n] < len(a)``.
    """

    def __init__(self, words: list[str], symbols: list[str], skip: set[int], weights: dict[str, float] | None = None):
        children: list[dict[int, int]] = [{}]
        final = [False]
        bonus = [0.0]
        word_of = [-1]
        origin = [-1]
        self.words = list(words)
        self.missing: list[str] = []
        for wi, w in enumerate(self.words):
            ids = spell(w, symbols, skip)
            if not ids:
                self.missing.append(w)
                continue
            node = 0
            for depth, t in enumerate(ids, 1):
                nxt = children[node].get(t)
                if nxt is None:
                    nxt = len(children)
                    children[node][t] = nxt
                    children.append({})
                    final.append(False)
                    bonus.append(0.0)
                    word_of.append(-1)
                    origin.append(wi)
                node = nxt
                if weights:
                    bonus[node] = max(bonus[node], weights[w] * depth / len(ids))
            final[node] = True
            word_of[node] = wi
        n = len(children)
        self.outside = n
        self.next = np.full((n + 1, len(symbols)), n, dtype=np.int64)
        for node, ch in enumerate(children):
            for t, c in ch.items():
                self.next[node, t] = c
        self.final = np.array(final + [False])
        self.bonus = np.array(bonus + [0.0])
        self.word_of = np.array(word_of + [-1], dtype=np.int64)
        self.origin = np.array(origin + [-1], dtype=np.int64)
        self.size = n


def prefix_free(symbols: list[str], skip: set[int]) -> bool:
    """Whether no spelling symbol is empty or a prefix of another, so a token sequence has one spelling.

    Then a word's tokens are exactly what ``spell`` returns, and a trie node names one string.
    """
    syms = sorted(s for i, s in enumerate(symbols) if i not in skip)
    if not syms or not syms[0]:
        return False
    return all(not b.startswith(a) for a, b in zip(syms, syms[1:], strict=False))


def read_word_list(path: str | os.PathLike) -> list[str]:
    """Words of a word list, or of a lexicon (``WORD pron...``): the first field of each non-empty line."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            words = [line.split()[0] for line in f if line.strip()]
    except FileNotFoundError:
        raise AsrError(f"{path}: no such word list file") from None
    except UnicodeDecodeError:
        raise AsrError(f"{path}: word list is not UTF-8 text") from None
    if not words:
        raise AsrError(f"{path}: word list is empty")
    return list(dict.fromkeys(words))
