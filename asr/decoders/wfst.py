"""WFST decoding of CTC posteriors over a TLG graph (``asr make-graph``), with Kaldi's FasterDecoder.

The decoder looks for the best single path through TLG whose frame labels explain the posteriors:
its cost is ``acoustic_scale * -log P(frame labels) + graph cost`` (the LM's natural-log costs),
pruned to ``wfst_beam`` around the best and at most ``max_active`` states per frame (EESEN's
``decode-faster``/``latgen-faster`` settings). Unlike prefix beam search it scores one alignment
(Viterbi), not the sum over all alignments of a token string; with peaky CTC posteriors the two
nearly always agree.

``Hypothesis.score`` is the negated cost over ``acoustic_scale``, i.e. ``log P(path) + alpha log
P_lm`` with ``alpha = 1 / acoustic_scale``, the beam search's scale. The best path's frame labels
give ``tokens`` (blanks dropped, repeats collapsed, ``<space>`` kept where the path has it) and
``timesteps`` (the first frame of each token's run). ``words`` come from the graph's output labels:
for phone tables, and char graphs built with ``--space optional``, the tokens alone do not show
where words end.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from asr.decoders.hypothesis import DecodeConfig, Hypothesis, check_inputs
from asr.errors import AsrError
from asr.graph import read_symbols, require


class WfstDecoder:
    """Kaldi FasterDecoder over ``config.graph``; ``decode(log_probs (B, T, V), lengths (B,))`` -> 1-best lists."""

    def __init__(self, symbols: list[str], config: DecodeConfig):
        self.cfg = cfg = config
        self.symbols = list(symbols)
        if not cfg.graph:
            raise AsrError("the wfst decoder needs a graph dir from 'asr make-graph' (--graph GRAPH_DIR)")
        if cfg.acoustic_scale is not None:
            self.scale = cfg.acoustic_scale
        elif cfg.alpha > 0:
            self.scale = 1.0 / cfg.alpha
        else:
            raise AsrError("the wfst decoder needs acoustic_scale > 0 (or alpha > 0, which sets it to 1 / alpha)")
        if not self.scale > 0 or not math.isfinite(self.scale):
            raise AsrError(f"acoustic_scale must be a positive number, got {self.scale}")
        if not cfg.blank_scale > 0 or not cfg.wfst_beam > 0 or cfg.max_active < 1:
            raise AsrError("blank_scale and wfst_beam must be > 0 and max_active >= 1")
        kaldifst = require("kaldifst")
        self._kd = kd = require("kaldi_decoder")
        self._linear = kaldifst.get_linear_symbol_sequence
        graph = Path(cfg.graph)
        if not (graph / "TLG.fst").is_file():
            raise AsrError(f"{graph}: no TLG.fst here (build it with 'asr make-graph')")
        tokens = read_symbols(graph / "tokens.txt")
        if tokens[1:] != self.symbols:
            raise AsrError(
                f"{graph}/tokens.txt does not match the model's token table ({len(tokens) - 1} vs "
                f"{len(self.symbols)} symbols): rebuild the graph from the model's lang dir"
            )
        self.words = read_symbols(graph / "words.txt")
        self.fst = kaldifst.StdVectorFst.read(str(graph / "TLG.fst"))
        if self.fst is None:
            raise AsrError(f"{graph}/TLG.fst: not an OpenFst file kaldifst can read")
        opts = kd.FasterDecoderOptions(beam=float(cfg.wfst_beam), max_active=int(cfg.max_active))
        self.decoder = kd.FasterDecoder(self.fst, opts)
        self.blank_shift = math.log(cfg.blank_scale)

    def _search(self, lp: np.ndarray) -> Hypothesis:
        # A finite floor: -inf log-likelihoods (exact zeros in the posteriors) would poison Kaldi's cost sums.
        x = np.maximum(lp, -1e4)
        x[:, 0] -= self.blank_shift
        x *= self.scale
        self.decoder.decode(self._kd.DecodableCtc(x.astype(np.float32)))
        ok, lattice = self.decoder.get_best_path()
        linear, ilabels, olabels, weight = self._linear(lattice) if ok else (False, [], [], None)
        if not linear:  # nothing survived: no path through the graph explains these frames
            return Hypothesis([], [], -math.inf, [])
        tokens, steps, prev = [], [], 0
        for t, lab in enumerate(ilabels):
            tok = lab - 1
            if tok != 0 and tok != prev:
                tokens.append(tok)
                steps.append(t)
            prev = tok
        score = -(weight.value1 + weight.value2) / self.scale
        return Hypothesis(tokens, [self.words[w] for w in olabels], float(score), steps)

    def decode(self, log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        """``log_probs (B, T, V)``, ``lengths (B,)`` -> per utterance the best path (FasterDecoder keeps no n-best)."""
        lp, lens = check_inputs(log_probs, lengths, len(self.symbols))
        return [[self._search(lp[i, : lens[i]])] for i in range(len(lp))]
