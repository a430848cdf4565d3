"""The prefix tree of the CTC prefix beam search: one node per token sequence, fields in numpy arrays.

Nodes ``0 .. roots-1`` are the empty prefixes of the utterances searched together (one root each);
the child of ``node`` by ``token`` is found in a child table (see below). New nodes get contiguous
ids, so their fields are written as slices. Per node:

- ``parent``, ``token``: the tree itself (a root has parent -1 and token ``V``, a padding column);
- ``best``, ``frame``: the best score with which the node's last token was emitted, and that frame;
- ``committed``, ``extra``, ``tnode``, ``hnode``, ``ctx``: its words' scores and state, written by
  :class:`asr.decoders.word_scores.WordScorer` (all 0 in plain search).

The child table is a dense ``(nodes, V)`` array for small token tables (chars, phones: one numpy
index per lookup, the fastest), and a dict keyed by ``node * V + token`` above ``DENSE_MAX_V``
tokens, whose memory grows with the nodes only: a dense table for 5,000 BPE pieces costs 40 kB per
node (160 MB at the initial 4,096 nodes), the dict about 100 bytes per node actually created.
"""

from __future__ import annotations

import numpy as np

NEG = -np.inf
DENSE_MAX_V = 64
FIELDS = ("parent", "token", "committed", "extra", "tnode", "hnode", "ctx", "frame", "best")


class PrefixTree:
    """Nodes ``0 .. n-1`` of the prefixes seen in one search; storage doubles when full.

    ``dense``: the child table's kind (None: dense iff ``vocab <= DENSE_MAX_V``).
    """

    def __init__(self, vocab: int, capacity: int = 4096, dense: bool | None = None):
        self.V = vocab
        self.dense = vocab <= DENSE_MAX_V if dense is None else dense
        self.n = 0
        self.children: dict[int, int] = {}
        self.child = np.zeros((0, vocab), np.int32)
        self._alloc(capacity)

    def _alloc(self, cap: int) -> None:
        self.cap = cap
        self.parent = np.zeros(cap, np.int64)
        self.token = np.zeros(cap, np.int64)
        self.committed = np.zeros(cap)
        self.extra = np.zeros(cap)
        self.tnode = np.zeros(cap, np.int64)
        self.hnode = np.zeros(cap, np.int64)
        self.ctx = np.zeros(cap, np.int64)
        self.frame = np.zeros(cap, np.int64)
        self.best = np.zeros(cap)
        self.pos = np.full(cap, -1, np.int64)  # scratch of ``positions``: -1 outside a call
        if self.dense:
            old = self.child
            self.child = np.full((cap, self.V), -1, np.int32)
            self.child[: len(old)] = old

    def _grow(self, need: int) -> None:
        old = {k: getattr(self, k) for k in FIELDS}
        cap = self.cap
        while cap < need:
            cap *= 2
        self._alloc(cap)
        for k, v in old.items():
            getattr(self, k)[: len(v)] = v

    def reset(self, roots: int = 1) -> None:
        """Back to ``roots`` empty prefixes alone (before each search)."""
        if self.dense:
            self.child[: self.n] = -1
        else:
            self.children.clear()
        if roots > self.cap:
            self._grow(roots)
        self.n = roots
        self.parent[:roots], self.token[:roots] = -1, self.V
        self.committed[:roots] = self.extra[:roots] = 0.0
        self.tnode[:roots] = self.hnode[:roots] = self.ctx[:roots] = 0
        self.frame[:roots], self.best[:roots] = -1, NEG

    def lookup(self, par: np.ndarray, tok: np.ndarray) -> np.ndarray:
        """``(M,)`` ids of the children of ``par (M,)`` by ``tok (M,)``, -1 where not created yet."""
        if self.dense:
            return self.child[par, tok].astype(np.int64)
        get = self.children.get
        keys = (par * self.V + tok).tolist()
        return np.fromiter((get(k, -1) for k in keys), np.int64, len(keys))

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
        if self.dense:
            self.child[par, tok] = ids
        else:
            self.children.update(zip((par * self.V + tok).tolist(), range(a, z), strict=True))
        return ids

    def positions(self, members: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """``(M,)`` index of each of ``nodes`` in ``members`` (non-root nodes appear at most once there;
        roots may repeat, as padding), -1 where it is none of them."""
        self.pos[members] = np.arange(members.size)
        idx = self.pos[nodes]
        self.pos[members] = -1
        return idx

    def path(self, node: int) -> list[int]:
        """The nodes from the root's child down to ``node`` (one per token of the prefix)."""
        path = []
        while self.parent[node] >= 0:
            path.append(node)
            node = int(self.parent[node])
        path.reverse()
        return path
