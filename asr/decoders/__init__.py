"""CTC decoders sharing one interface: ``decode(log_probs (B, T, V), lengths (B,)) -> list[list[Hypothesis]]``."""

from __future__ import annotations

from asr.decoders.hypothesis import DecodeConfig, Hypothesis, words_from_tokens


def make_decoder(symbols: list[str], config: DecodeConfig):
    """The decoder ``config.decoder`` names, built for token table ``symbols`` (id -> symbol)."""
    if config.decoder == "greedy":
        from asr.decoders.greedy import GreedyDecoder

        return GreedyDecoder(symbols, config)
    if config.decoder == "wfst":
        from asr.decoders.wfst import WfstDecoder

        return WfstDecoder(symbols, config)
    from asr.decoders.beam import BeamSearchDecoder

    return BeamSearchDecoder(symbols, config)


__all__ = ["DecodeConfig", "Hypothesis", "make_decoder", "words_from_tokens"]
