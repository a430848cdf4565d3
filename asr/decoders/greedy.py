"""Greedy (best-path) CTC decoding: argmax per frame, collapse repeats, drop blanks."""

from __future__ import annotations

import numpy as np
import torch

from asr.decoders.hypothesis import DecodeConfig, Hypothesis, check_inputs, word_starts, words_from_tokens


class GreedyDecoder:
    """Best path, vectorised over the whole batch (no per-frame Python loop)."""

    def __init__(self, symbols: list[str], config: DecodeConfig | None = None) -> None:
        self.symbols = list(symbols)
        self.config = config or DecodeConfig(decoder="greedy")
        b = self.config.word_boundary
        self.boundary = self.symbols.index(b) if b in self.symbols else None
        self.pieces = word_starts(self.symbols, self.boundary) is not None

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """``log_probs (B, T, V)``, ``lengths (B,)`` -> one single-item n-best list per utterance."""
        lp, lens = check_inputs(log_probs, lengths, len(self.symbols))
        b, t, _ = lp.shape
        best = lp.argmax(-1)  # (B, T)
        best_lp = np.take_along_axis(lp, best[..., None], -1)[..., 0]
        valid = np.arange(t)[None, :] < lens[:, None]
        prev = np.concatenate([np.full((b, 1), -1), best[:, :-1]], axis=1)
        keep = valid & (best != 0) & (best != prev)
        scores = np.where(valid, best_lp, 0.0).sum(1)
        out = []
        for i in range(b):
            frames = np.nonzero(keep[i])[0]
            toks = best[i, frames].tolist()
            words = words_from_tokens(toks, self.symbols, self.boundary, self.pieces)
            out.append([Hypothesis(toks, words, float(scores[i]), frames.tolist())])
        return out
