"""What every decoder returns, the config they share, and the input checks they all run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch

from asr.errors import AsrError
from asr.tokens import WORD_START

WORD_BOUNDARY = "<space>"


@dataclass
class Hypothesis:
    """One decoding result.

    ``tokens``: emitted token ids (blanks removed, repeats collapsed, word boundaries kept);
    ``words``: the tokens joined between word-boundary symbols; ``score``: natural-log score the
    decoder ranked by (greedy: best-path log-prob; beam: log P_ctc + alpha log P_lm + beta |words| +
    bonuses); ``timesteps``: for each token, the (subsampled) frame that emitted it.
    """

    tokens: list[int]
    words: list[str]
    score: float
    timesteps: list[int]


@dataclass
class DecodeConfig:
    """Settings of ``asr decode`` (conf/decode_beam.yaml, conf/decode_greedy.yaml)."""

    decoder: Literal["greedy", "beam", "wfst"] = "beam"
    beam: int = 32
    nbest: int = 1
    # Per-frame token pruning: keep at most token_topk tokens (0 = all), only those above
    # token_min_logp, and only the most likely ones until cutoff_prob of the mass is covered.
    token_topk: int = 0
    token_min_logp: float = -5.0
    cutoff_prob: float = 1.0
    # Drop hypotheses scoring more than beam_threshold below the best one.
    beam_threshold: float = 25.0
    # Frames whose blank probability exceeds this only extend blanks / repeats (1.0 disables).
    blank_skip: float = 0.999
    word_boundary: str = WORD_BOUNDARY
    lm: str | None = None
    alpha: float = 0.5
    beta: float = 1.0
    # Added (log domain) for each word outside the LM vocabulary; with an LM and no word list also for
    # partial words that are no prefix of any LM word.
    unk_penalty: float = -10.0
    # A word list (one word per line; further fields, as in a lexicon, are ignored): output only its words.
    words: str | None = None
    # Words or phrases to favour: each of their words gets hotword_bonus when completed, and a
    # growing share of it while being spelled (so it survives pruning until then).
    hotwords: list[str] = field(default_factory=list)
    hotword_bonus: float = 8.0
    # decoder: wfst. A graph dir from 'asr make-graph' (the LM is compiled into it, lm is unused).
    graph: str | None = None
    # Weight of the CTC log-probs against the graph's LM costs; None: 1 / alpha, the beam search's balance.
    acoustic_scale: float | None = None
    # Kaldi's --beam (pruning, in scaled cost) and --max-active (states kept per frame).
    wfst_beam: float = 16.0
    max_active: int = 7000
    # Blank log-prob minus log(blank_scale) before decoding, as EESEN's --blank-scale (> 1: fewer blanks).
    blank_scale: float = 1.0
    # Unsupervised speaker adaptation (asr.adapt): > 0 fine-tunes a copy of the model for this many epochs
    # on each speaker's first-pass hypotheses whose n-best share is >= adapt_min_conf, then decodes again.
    adapt_epochs: int = 0
    adapt_lr: float = 3e-4
    adapt_min_conf: float = 0.999

    # Old key -> new key (see asr.config.from_dict): "lexicon" is make-tokens' pronunciation dictionary.
    renamed_keys: ClassVar[dict[str, str]] = {"lexicon": "words"}

    def __post_init__(self) -> None:
        if self.beam < 1 or self.nbest < 1:
            raise ValueError("beam and nbest must be >= 1")
        if not 0.0 < self.cutoff_prob <= 1.0 or not 0.0 < self.blank_skip <= 1.0:
            raise ValueError("cutoff_prob and blank_skip must be in (0, 1]")
        if self.adapt_epochs < 0 or self.adapt_lr <= 0 or not 0.0 <= self.adapt_min_conf <= 1.0:
            raise ValueError("adapt_epochs must be >= 0, adapt_lr > 0 and adapt_min_conf in [0, 1]")


def word_starts(symbols: list[str], boundary: int | None) -> np.ndarray | None:
    """``(V,)`` bool: which tokens begin a word, for sentencepiece pieces (``▁...``); else None.

    A table with a word-boundary symbol (chars) marks words with that symbol instead, whatever its
    characters are.
    """
    if boundary is not None:
        return None
    starts = np.array([s.startswith(WORD_START) for s in symbols], dtype=bool)
    return starts if starts.any() else None


def words_from_tokens(
    tokens: list[int], symbols: list[str], boundary: int | None, pieces: bool | None = None
) -> list[str]:
    """Join token symbols between boundary tokens; without a boundary symbol every token is a word,
    except for sentencepiece pieces, where a piece starting with ``▁`` begins a word.

    ``pieces`` says whether ``symbols`` are pieces (see :func:`word_starts`); decoders know it once
    for all utterances, None works it out here.
    """
    if pieces is None:
        pieces = word_starts(symbols, boundary) is not None
    if boundary is None:
        if pieces:
            # Exactly TokenTable.decode: "▁" becomes the space before a word, and empty words vanish.
            return "".join(symbols[t] for t in tokens).replace(WORD_START, " ").split()
        return [symbols[t] for t in tokens]
    words, cur = [], []
    for t in tokens:
        if t == boundary:
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(symbols[t])
    if cur:
        words.append("".join(cur))
    return words


def check_inputs(log_probs: torch.Tensor, lengths: torch.Tensor, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``log_probs (B, T, V)`` and ``lengths (B,)``; return normalised float64 numpy copies.

    Inputs are re-normalised with log_softmax, so raw logits work too (already normalised log-probs
    are unchanged).
    """
    if log_probs.dim() != 3:
        raise AsrError(f"decode: log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    b, t, v = log_probs.shape
    if v != vocab:
        raise AsrError(f"decode: log_probs have {v} classes but the token table has {vocab} symbols")
    lengths = torch.as_tensor(lengths)
    if lengths.shape != (b,):
        raise AsrError(f"decode: lengths must have shape ({b},), got {tuple(lengths.shape)}")
    lens = lengths.detach().cpu().long().numpy()
    bad = np.nonzero((lens > t) | (lens < 0))[0]
    if len(bad):
        i = int(bad[0])
        raise AsrError(f"decode: utterance {i} of the batch has length {lens[i]} but log_probs have {t} frames")
    lp = log_probs.detach().cpu()
    for i in range(b):
        if torch.isnan(lp[i, : lens[i]]).any():
            raise AsrError(f"decode: utterance {i} of the batch has NaN log-probs")
    return torch.log_softmax(lp.double(), dim=-1).numpy(), lens

