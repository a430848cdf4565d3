"""The prefix tree of the CTC prefix beam search: one node per token sequence, fields in numpy arrays.

Node 0 is the empty prefix; ``child[node, token]`` is the node extending ``node`` by ``token`` (-1:
not created yet). New nodes get contiguous ids, so their fields are written as slices. Per node:

- ``parent``, ``token``: the tree itself (node 0 has token ``V``, a padding column of the log-probs);
- ``best``, ``frame``: the best score with which the node's last token was emitted, and that frame;
- ``committed``, ``extra``, ``tnode``, ``hnode``, ``ctx``: its words' scores and state, written by
  :class:`asr.decoders.word_scores.WordScorer` (all 0 in plain search).
"""

from __future__ import annotations

import numpy as np

NEG = -np.inf
FIELDS = ("parent", "token", "child", "committed", "extra", "tnode", "hnode", "ctx", "frame", "best")


class PrefixTree:
    """Nodes ``0 .. n-1`` of the prefixes seen in one utterance; storage doubles when full."""

    def __init__(self, vocab: int, capacity: int = 4096):
        self.V = vocab
        self.n = 0
        self._alloc(capacity)

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
        self.pos = np.full(cap, -1, np.int64)  # scratch of ``positions``: -1 outside a call

    def _grow(self, need: int) -> None:
        old = {k: getattr(self, k) for k in FIELDS}
        cap = self.cap
        while cap < need:
            cap *= 2
        self._alloc(cap)
        for k, v in old.items():
            getattr(self, k)[: len(v)] = v

    def reset(self) -> None:
        """Back to the empty prefix alone (before each utterance)."""
        self.child[: self.n] = -1
        self.n = 1
        self.parent[0], self.token[0] = -1, self.V
        self.committed[0] = self.extra[0] = 0.0
        self.tnode[0] = self.hnode[0] = self.ctx[0] = 0
        self.frame[0], self.best[0] = -1, NEG

    def add(self, par: np.ndarray, tok: np.ndarray) -> np.ndarray:
        """New children of ``par (M,)`` by ``tok (M,)`` (pairs not in the tree yet) -> their ids ``(M,)``,
        contiguous from the ``n`` before the call. Their ``best`` is -inf; the word fields are the caller's."""
        a = self.n
        z = a + len(par)
        if z > self.cap:
            self._grow(z)
        self.n = z
        ids = np.arange(a, z)
        self.parent[a:z], self.token[a:z] = par, tok
        self.best[a:z] = NEG
        self.child[par, tok] = ids
        return ids

    def positions(self, members: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """``(M,)`` index of each of ``nodes`` in ``members`` (distinct nodes), -1 where it is none of them."""
        self.pos[members] = np.arange(len(members))
        idx = self.pos[nodes]
        self.pos[members] = -1
        return idx

    def path(self, node: int) -> list[int]:
        """The nodes from the root's child down to ``node`` (one per token of the prefix)."""
        path = []
        while node > 0:
            path.append(node)
            node = int(self.parent[node])
        path.reverse()
        return path
