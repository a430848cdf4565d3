"""Parity with pyctcdecode, flashlight (torchaudio ctc_decoder) and fast-ctc-decode on the same logits and LM.

These run only where the ``compare`` extra is installed. Disagreements between beam searches are
near-ties in probability, so the checks are: the same 1-best on most utterances, and a WER no worse
than theirs by more than 0.2 points plus one word (a single tie flips a word on 40 utterances).
"""

from __future__ import annotations

import jiwer
import pytest
import torch

from asr.decoders import DecodeConfig
from asr.decoders.beam import BeamSearchDecoder
from asr.lm.arpa import write_arpa
from asr.lm.kneser_ney import estimate
from bench.reference_decoders import SYMBOLS, synthetic_corpus, synthetic_log_probs

N = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    corpus = synthetic_corpus(1500 + N, seed=5)
    lp, refs = synthetic_log_probs(corpus[:N], seed=5)
    train = corpus[N:]
    arpa = tmp / "lm.arpa"
    write_arpa(*estimate(train, 3), arpa)
    vocab = sorted({w for s in train for w in s})
    (tmp / "words.txt").write_text("\n".join(vocab) + "\n")
    return lp, torch.full((N,), lp.shape[1]), [" ".join(r) for r in refs], str(arpa), vocab, str(tmp / "words.txt")


def texts(hyps) -> list[str]:
    return [" ".join(h[0].words) for h in hyps]


def check(ours: list[str], theirs: list[str], refs: list[str], min_agree: float) -> None:
    agree = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)
    assert agree >= min_agree
    one_word = 1 / sum(len(r.split()) for r in refs)
    assert jiwer.wer(refs, ours) <= jiwer.wer(refs, theirs) + 0.002 + one_word


def test_parity_fast_ctc_decode(setup):
    pytest.importorskip("fast_ctc_decode")
    from bench.reference_decoders import FastCTCDecode

    lp, lens, refs, *_ = setup
    ours = texts(BeamSearchDecoder(SYMBOLS, DecodeConfig(beam=32)).decode(lp, lens))
    check(ours, texts(FastCTCDecode(SYMBOLS, 32).decode(lp, lens)), refs, 0.95)


def test_parity_pyctcdecode_with_lm(setup):
    pytest.importorskip("pyctcdecode")
    pytest.importorskip("kenlm")
    from bench.reference_decoders import PyCTCDecode

    lp, lens, refs, arpa, *_ = setup
    ours = texts(BeamSearchDecoder(SYMBOLS, DecodeConfig(beam=32, lm=arpa)).decode(lp, lens))
    check(ours, texts(PyCTCDecode(SYMBOLS, 32, lm=arpa).decode(lp, lens)), refs, 0.9)
    ours = texts(BeamSearchDecoder(SYMBOLS, DecodeConfig(beam=32)).decode(lp, lens))
    check(ours, texts(PyCTCDecode(SYMBOLS, 32).decode(lp, lens)), refs, 0.9)


def test_parity_flashlight_lexicon_lm(setup):
    pytest.importorskip("flashlight.lib.text")
    from bench.reference_decoders import Flashlight

    lp, lens, refs, arpa, vocab, words = setup
    cfg = DecodeConfig(beam=32, lm=arpa, words=words)
    ours = texts(BeamSearchDecoder(SYMBOLS, cfg).decode(lp, lens))
    check(ours, texts(Flashlight(SYMBOLS, 32, lm=arpa, lexicon=vocab).decode(lp, lens)), refs, 0.95)
