"""build-lm: modified Kneser-Ney against hand-computed probabilities; the ARPA it writes loads and sums to 1."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from asr.cli import main
from asr.lm.arpa import write_arpa
from asr.lm.backends import ArpaLM
from asr.lm.kneser_ney import discounts, estimate

TOY = [["a", "b"], ["a", "b"], ["b"]]


def test_discounts_from_count_of_counts():
    d1, d2, d3 = discounts(Counter({1: 10, 2: 4, 3: 2, 4: 1}))
    y = 10 / 18
    assert (d1, d2, d3) == pytest.approx((1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2))
    assert discounts(Counter({1: 3})) == (0.5, 0.5, 0.5)  # too little data: one fallback discount


def test_kneser_ney_toy_by_hand():
    # Hand computation (D1, D2, D3+ = 0.5, 1.0, 1.5):
    # unigram continuation counts a:1 ({<s>}), b:2 ({<s>, a}), </s>:1 ({b}); total 4, |V| = 4 with <unk>
    # gamma() = (0.5 + 1 + 0.5) / 4 = 0.5 -> p(a) = 0.5/4 + 0.5/4, p(b) = 1/4 + 1/8, p(</s>) = 1/4, p(<unk>) = 1/8
    # bigrams (raw): <s> a:2, <s> b:1, a b:2, b </s>:3
    probs, bo = estimate(TOY, order=2, fixed_discounts=(0.5, 1.0, 1.5))
    p1, p2 = probs
    assert p1[("a",)] == pytest.approx(0.25)
    assert p1[("b",)] == pytest.approx(0.375)
    assert p1[("</s>",)] == pytest.approx(0.25)
    assert p1[("<unk>",)] == pytest.approx(0.125)
    assert p2[("<s>", "a")] == pytest.approx(1 / 3 + 0.5 * 0.25)
    assert p2[("<s>", "b")] == pytest.approx(0.5 / 3 + 0.5 * 0.375)
    assert p2[("a", "b")] == pytest.approx(0.5 + 0.5 * 0.375)
    assert p2[("b", "</s>")] == pytest.approx(0.5 + 0.5 * 0.25)
    assert bo[0] == pytest.approx({("<s>",): 0.5, ("a",): 0.5, ("b",): 0.5})


def test_written_arpa_reproduces_the_model(tmp_path):
    probs, bo = estimate(TOY, order=2, fixed_discounts=(0.5, 1.0, 1.5))
    write_arpa(probs, bo, tmp_path / "toy.arpa")
    lm = ArpaLM(tmp_path / "toy.arpa")
    assert math.exp(lm.score(("a",), "b")[0]) == pytest.approx(0.6875, rel=1e-6)
    assert math.exp(lm.score(("a",), "a")[0]) == pytest.approx(0.5 * 0.25, rel=1e-6)  # backoff
    assert math.exp(lm.sentence_logp(["a", "b"])) == pytest.approx((1 / 3 + 0.125) * 0.6875 * 0.625, rel=1e-6)


def random_corpus(n: int = 300, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    vocab = "the cat sat on a mat dog ran".split()
    return [[rng.choice(vocab) for _ in range(rng.randint(1, 8))] for _ in range(n)]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_sums_to_one(tmp_path, order):
    corpus = random_corpus()
    probs, bo = estimate(corpus, order=order)
    write_arpa(probs, bo, tmp_path / "lm.arpa")
    lm = ArpaLM(tmp_path / "lm.arpa")
    words = sorted(lm.vocab) + ["</s>", "<unk>"]
    states = {lm.begin()}
    for sent in corpus[:30]:
        s = lm.begin()
        for w in sent:
            _, s = lm.score(s, w)
            states.add(s)
    states.add(("never", "seen"))
    for s in states:
        assert sum(math.exp(lm.score(s, w)[0]) for w in words) == pytest.approx(1.0, abs=1e-5)


def test_kenlm_reads_the_same_numbers(tmp_path):
    pytest.importorskip("kenlm")
    from asr.lm.backends import KenLM

    probs, bo = estimate(random_corpus(), order=3)
    write_arpa(probs, bo, tmp_path / "lm.arpa")
    a, k = ArpaLM(tmp_path / "lm.arpa"), KenLM(tmp_path / "lm.arpa")
    for sent in random_corpus(20, seed=1) + [["zebra", "cat"]]:
        assert a.sentence_logp(sent) == pytest.approx(k.sentence_logp(sent), abs=1e-4)


def test_cli_plain_and_kaldi_text(tmp_path):
    plain = tmp_path / "corpus.txt"
    plain.write_text("a b\na b\n\nb\n")
    kaldi = tmp_path / "data"
    kaldi.mkdir()
    (kaldi / "text").write_text("u1 a b\nu2 a b\nu3 b\nu4\n")
    assert main(["build-lm", str(plain), "--order", "2", "-o", str(tmp_path / "p.arpa")]) == 0
    assert main(["build-lm", str(kaldi), "--order", "2", "-o", str(tmp_path / "k.arpa")]) == 0
    assert (tmp_path / "p.arpa").read_text() == (tmp_path / "k.arpa").read_text()
    assert ArpaLM(tmp_path / "p.arpa").vocab == {"a", "b"}
    assert main(["build-lm", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.arpa")]) == 1


def test_gz_arpa_is_gzipped_and_reads_back(tmp_path):
    import gzip

    sents = [["a", "b"], ["a", "c"], ["b", "c", "a"]]
    probs, backoffs = estimate(sents, 3)
    write_arpa(probs, backoffs, tmp_path / "lm.arpa")
    write_arpa(probs, backoffs, tmp_path / "lm.arpa.gz")
    assert gzip.open(tmp_path / "lm.arpa.gz", "rt", encoding="utf-8").read() == (tmp_path / "lm.arpa").read_text()
    plain, packed = ArpaLM(tmp_path / "lm.arpa"), ArpaLM(tmp_path / "lm.arpa.gz")
    assert packed.order == plain.order == 3
    assert packed.sentence_logp(["a", "b"]) == plain.sentence_logp(["a", "b"])


def test_arpa_reader_warns_above_its_size_limit(tmp_path, monkeypatch, caplog):
    from asr.lm import backends

    write_arpa(*estimate(TOY, order=2), tmp_path / "lm.arpa")

    def warnings_() -> list:  # estimate's INFO lines may be captured too, depending on earlier tests
        return [r for r in caplog.records if r.name == "asr.lm.backends" and r.levelno >= 30]

    with caplog.at_level("WARNING", logger="asr.lm.backends"):
        ArpaLM(tmp_path / "lm.arpa")
    assert not warnings_()
    monkeypatch.setattr(backends, "ARPA_WARN_NGRAMS", 3)
    with caplog.at_level("WARNING", logger="asr.lm.backends"):
        lm = ArpaLM(tmp_path / "lm.arpa")
    (rec,) = warnings_()
    msg = rec.getMessage()
    assert "\n" not in msg and "kenlm" in msg and str(tmp_path / "lm.arpa") in msg and "n-grams" in msg
    assert lm.vocab == {"a", "b"}  # a warning, not a refusal
