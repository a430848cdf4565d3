"""Word n-gram LM back ends for shallow fusion: our own ARPA model (any order, backoff) and a KenLM wrapper.

Both expose the same small interface, in natural-log units (ARPA stores log10):
``begin() -> state``, ``score(state, word) -> (logp, state)``, ``end(state) -> logp(</s>)``,
``word in lm``, ``vocab`` (set of words, or None when unknown, e.g. a KenLM binary).
States are tuples of the last words that matter, so callers may use them as dict keys.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path

from asr.errors import AsrError
from asr.lm.arpa import BOS, EOS, UNK, declared_counts, looks_like_arpa, read_arpa

log = logging.getLogger(__name__)

LN10 = math.log(10.0)
_KENLM_MISSING_UNK = -100.0  # log10 prob KenLM gives OOV words when the ARPA has no <unk>
_CACHE_LIMIT = 2_000_000
# What ArpaLM costs per million n-grams (measured on a 1.37 M n-gram 3-gram ARPA, 43 MB, Python
# 3.11: 4.4 s and 594 MB RSS; KenLM: 0.6 s, 27 MB), and the size above which it warns.
ARPA_S_PER_M, ARPA_MB_PER_M = 3.2, 430
ARPA_WARN_NGRAMS = 2_000_000


class _SentenceScoring:
    """What both LM back ends derive from ``begin``/``score``: end of sentence and whole sentences."""

    def end(self, state: tuple) -> float:
        return self.score(state, EOS)[0]

    def sentence_logp(self, words: list[str], eos: bool = True) -> float:
        """Natural-log probability of a word sequence (starting after ``<s>``)."""
        state, total = self.begin(), 0.0
        for w in words:
            lp, state = self.score(state, w)
            total += lp
        return total + (self.end(state) if eos else 0.0)


def size_warning(path: Path) -> str | None:
    """One line when the ARPA file ``path`` declares more than ``ARPA_WARN_NGRAMS`` n-grams: what our
    pure-Python reader will cost (measured figures above) and that KenLM is the way; else None."""
    n = sum(declared_counts(path).values())
    if n <= ARPA_WARN_NGRAMS:
        return None
    m = n / 1e6
    return (
        f"{path}: {n:,} n-grams: the pure-Python ARPA reader needs about {m * ARPA_MB_PER_M / 1e3:.1f} GB and "
        f"{m * ARPA_S_PER_M:.0f} s for it (over {ARPA_WARN_NGRAMS:,}); pip install kenlm to load it with KenLM"
    )


class ArpaLM(_SentenceScoring):
    """Backoff n-gram LM read from an ARPA file; scores with standard Katz-style backoff.

    Everything is held in Python dicts: about ``ARPA_MB_PER_M`` MB and ``ARPA_S_PER_M`` s to load
    per million n-grams; above ``ARPA_WARN_NGRAMS`` it logs one warning naming KenLM.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        warning = size_warning(self.path)
        if warning:
            log.warning(warning)
        self.order, table = read_arpa(self.path)
        self.prob = {k: v[0] * LN10 for k, v in table.items()}
        self.backoff = {k: v[1] * LN10 for k, v in table.items() if v[1] != 0.0}
        self.vocab = {k[0] for k in table if len(k) == 1} - {BOS, EOS, UNK}
        self._words = {k[0] for k in table if len(k) == 1}
        self.unk_logp = self.prob.get((UNK,), _KENLM_MISSING_UNK * LN10)
        self._cache: dict[tuple, tuple[float, tuple]] = {}

    def __contains__(self, word: str) -> bool:
        return word in self._words

    def begin(self) -> tuple:
        return (BOS,)

    def _shrink(self, ctx: tuple) -> tuple:
        # A context that is no n-gram in the table behaves exactly like its suffix (backoff 0), so
        # keeping only the longest existing suffix makes equal states compare equal.
        ctx = ctx[-(self.order - 1) :] if self.order > 1 else ()
        while ctx and ctx not in self.prob:
            ctx = ctx[1:]
        return ctx

    def score(self, state: tuple, word: str) -> tuple[float, tuple]:
        """Natural-log P(word | state) and the next state."""
        key = (state, word)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        w = word if word in self._words else UNK
        lp, ctx = 0.0, state
        while True:
            p = self.prob.get(ctx + (w,))
            if p is not None:
                lp += p
                break
            if not ctx:
                lp += self.unk_logp
                break
            lp += self.backoff.get(ctx, 0.0)
            ctx = ctx[1:]
        out = (lp, self._shrink(state + (w,)))
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = out
        return out


class KenLM(_SentenceScoring):
    """KenLM's Python module behind the ArpaLM interface (same numbers, much faster loading)."""

    def __init__(self, path: str | os.PathLike) -> None:
        import kenlm

        self.path = Path(path)
        try:
            self.model = kenlm.Model(str(self.path))
        except (OSError, RuntimeError, Exception) as e:  # kenlm raises its own types
            if looks_like_arpa(self.path):
                read_arpa(self.path)  # re-read to point at the offending line
            raise AsrError(f"{self.path}: KenLM cannot load it: {str(e).splitlines()[0]}") from None
        self._kenlm = kenlm
        self.order = self.model.order
        self.vocab = None
        if looks_like_arpa(self.path):
            self.vocab = {k[0] for k in read_arpa(self.path, max_order=1)[1]} - {BOS, EOS, UNK}
        start = kenlm.State()
        self.model.BeginSentenceWrite(start)
        self._states = {(BOS,): start}
        self._known: dict[str, bool] = {}
        self._cache: dict[tuple, tuple[float, tuple]] = {}

    def __contains__(self, word: str) -> bool:
        known = self._known.get(word)
        if known is None:  # asking KenLM costs microseconds; words repeat
            known = self._known[word] = word in self.model
        return known

    def begin(self) -> tuple:
        return (BOS,)

    def score(self, state: tuple, word: str) -> tuple[float, tuple]:
        key = (state, word)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        out_state = self._kenlm.State()
        lp = self.model.BaseScore(self._states[state], word, out_state) * LN10
        # KenLM's own state is not hashable; its word history (as far as it can matter) is.
        w = word if word in self else UNK
        nxt = (state + (w,))[-(self.order - 1) :] if self.order > 1 else ()
        self._states.setdefault(nxt, out_state)
        out = (lp, nxt)
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = out
        return out


def kenlm_available() -> bool:
    return importlib.util.find_spec("kenlm") is not None


def load_lm(path: str | os.PathLike, backend: str = "auto") -> ArpaLM | KenLM:
    """Load an n-gram LM: KenLM when importable (``backend='auto'``; ARPA or KenLM binary), else our
    ARPA reader (which warns on large files, see :class:`ArpaLM`)."""
    path = Path(path)
    if not path.exists():
        raise AsrError(f"{path}: no such LM file")
    if backend == "kenlm" or (backend == "auto" and kenlm_available()):
        if not kenlm_available():
            raise AsrError("the kenlm module is not installed: pip install kenlm (or use an ARPA file)")
        return KenLM(path)
    if not looks_like_arpa(path):
        raise AsrError(f"{path}: not an ARPA file (binary LMs need KenLM: pip install kenlm)")
    return ArpaLM(path)
