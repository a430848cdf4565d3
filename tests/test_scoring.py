"""Scoring: hand-computed WER/CER, equality with jiwer, Kaldi formats, bootstrap, bad input."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import jiwer
import numpy as np
import pytest

from asr.bootstrap import bootstrap_ci, paired_bootstrap
from asr.cli import main
from asr.errors import AsrError
from asr.score_files import confusions, errs_text, worst_first, write_outputs
from asr.scoring import Normaliser, kaldi_line, read_text, score, score_files

# (ref, hyp, words, sub, del, ins, chars incl. spaces, char errors)
CASES = [
    ("a b c", "a b c", 3, 0, 0, 0, 5, 0),
    ("a b c", "a x c", 3, 1, 0, 0, 5, 1),
    ("a b c", "a c", 3, 0, 1, 0, 5, 2),          # chars: "a b c" -> "a c": delete "b" and a space
    ("a b c", "a b c d", 3, 0, 0, 1, 5, 2),
    ("a b c", "", 3, 0, 3, 0, 5, 5),
    ("", "x y", 0, 0, 0, 2, 0, 3),
    ("the cat sat", "the cat sat on the mat", 3, 0, 0, 3, 11, 11),
    ("hello world", "yellow world", 2, 1, 0, 0, 11, 2),  # chars: h->y sub, w inserted
    ("one two three four", "two three five", 4, 1, 1, 0, 18, 7),
]


@pytest.mark.parametrize("ref,hyp,words,sub,dels,ins,chars,cerr", CASES)
def test_hand_computed(ref, hyp, words, sub, dels, ins, chars, cerr):
    r = score({"u": ref}, {"u": hyp})
    u = r.utts[0]
    assert (len(u.ref), u.sub, u.dels, u.ins) == (words, sub, dels, ins)
    assert (u.ref_chars, u.char_errors) == (chars, cerr)
    assert u.cor + u.sub + u.dels == words


def _random_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    vocab = ["a", "b", "c", "dd", "eee", "f", "gg", "h"]
    refs, hyps = [], []
    for _ in range(n):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 12))]
        hyp = list(ref)
        for _ in range(rng.randint(0, 5)):
            op = rng.choice("sid")
            if op == "s" and hyp:
                hyp[rng.randrange(len(hyp))] = rng.choice(vocab)
            elif op == "i":
                hyp.insert(rng.randint(0, len(hyp)), rng.choice(vocab))
            elif op == "d" and hyp:
                del hyp[rng.randrange(len(hyp))]
        refs.append(" ".join(ref))
        hyps.append(" ".join(hyp))
    return refs, hyps


def test_equals_jiwer_on_random_pairs():
    refs, hyps = _random_pairs(1200, seed=1)
    ids = [f"u{i:05d}" for i in range(len(refs))]
    r = score(dict(zip(ids, refs, strict=True)), dict(zip(ids, hyps, strict=True)))
    t = r.totals()
    assert t["errors"] / t["words"] == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert t["char_errors"] / t["chars"] == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    ref_out = jiwer.process_words(refs, hyps)
    assert (t["sub"], t["del"], t["ins"]) == (ref_out.substitutions, ref_out.deletions, ref_out.insertions)
    for u, rr, hh in zip(r.utts[:200], refs[:200], hyps[:200], strict=True):  # per utterance too
        assert u.errors == round(jiwer.wer(rr, hh) * len(rr.split()))


def test_kaldi_line_format():
    line = kaldi_line("WER", 45, 365, 3, 10, 32)
    assert line == "%WER 12.33 [ 45 / 365, 3 ins, 10 del, 32 sub ]"
    assert re.fullmatch(r"%WER \d+\.\d\d \[ \d+ / \d+, \d+ ins, \d+ del, \d+ sub \]", line)
    assert kaldi_line("WER", 0, 0, 0, 0, 0).startswith("%WER 0.00 [ 0 / 0,")


def test_missing_hyp_counts_as_deletions(tmp_path, caplog):
    (tmp_path / "ref").write_text("u1 a b c\nu2 d e\n")
    (tmp_path / "hyp").write_text("u1 a b c\n")
    r = score_files(tmp_path / "ref", tmp_path / "hyp")
    t = r.totals()
    assert (t["errors"], t["del"], t["words"]) == (2, 2, 5)
    assert r.missing == ["u2"]
    assert any("u2" in m and "no hypothesis" in m for m in caplog.messages)
    write_outputs(r, tmp_path / "out", n_resamples=50)
    wer = (tmp_path / "out" / "wer").read_text()
    assert wer.startswith("%WER 40.00 [ 2 / 5, 0 ins, 2 del, 0 sub ]\n%SER 50.00 [ 1 / 2 ]\n")
    assert "Scored 2 sentences, 1 not present in hyp." in wer
    errs = (tmp_path / "out" / "errs.txt").read_text()
    assert "u2 hyp  ***  ***" in errs and "u2 #csid 0 0 0 2" in errs


def test_bad_input_reported_one_line_each(tmp_path, caplog):
    (tmp_path / "ref").write_bytes(b"u1 a b\nu2 c\xff d\nu1 again\n\nu3 e\n")
    (tmp_path / "hyp").write_bytes(b"u1 a b\nu2\nu9 zzz\n")
    r = score_files(tmp_path / "ref", tmp_path / "hyp")
    msgs = r.problems
    assert any(m.startswith(f"{tmp_path / 'ref'}:2: not UTF-8") for m in msgs)
    assert any(m.startswith(f"{tmp_path / 'ref'}:3: duplicate id u1") for m in msgs)
    assert any(m.startswith(f"{tmp_path / 'hyp'}:3: id u9 is not in") for m in msgs)
    assert any("u3" in m and "no hypothesis" in m for m in msgs)
    assert all("\n" not in m for m in msgs)
    assert not any("u2" in m for m in msgs)  # an empty hypothesis line is valid
    by_utt = {u.utt: u for u in r.utts}
    assert by_utt["u1"].ref == ["a", "b"] and by_utt["u2"].hyp == [] and by_utt["u2"].dels == 2
    assert r.extra == ["u9"]
    with pytest.raises(AsrError, match="not UTF-8"):
        score_files(tmp_path / "ref", tmp_path / "hyp", strict=True)


def test_normaliser():
    n = Normaliser(case="upper", strip_punct=True, ignore_noise=True, ignore=("uh",))
    assert n("Hello, world! <unk> [NOISE] don't x-ray -- uh UH") == ["HELLO", "WORLD", "DON'T", "X-RAY"]
    assert Normaliser()("A  <UNK>\tb") == ["A", "<UNK>", "b"]
    assert Normaliser(strip_punct=True)("[NOISE] a.") == ["[NOISE]", "a"]
    # Decomposed e + combining acute equals the composed character.
    assert Normaliser()("cafe\u0301") == Normaliser()("caf\u00e9")
    # Normalisation applies to both sides.
    r = score({"u": "Hello <unk> world"}, {"u": "hello WORLD"}, Normaliser(case="lower", ignore_noise=True))
    assert r.totals()["errors"] == 0
    with pytest.raises(AsrError):
        Normaliser(case="title")


def test_bootstrap_ci_contains_estimate_and_shrinks():
    rng = np.random.default_rng(0)
    widths = []
    for n in (50, 500, 5000):
        lens = rng.integers(3, 20, size=n)
        errs = rng.binomial(lens, 0.15)
        lo, hi = bootstrap_ci(errs, lens, n_resamples=500, seed=1)
        point = errs.sum() / lens.sum()
        assert lo <= point <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < 0.02
    assert bootstrap_ci(np.array([2]), np.array([4])) == (0.5, 0.5)


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    lens = rng.integers(5, 15, size=300)
    a = rng.binomial(lens, 0.30)
    b = rng.binomial(lens, 0.15)
    r = paired_bootstrap(a, b, lens, n_resamples=500)
    assert r["p_b_better"] > 0.99
    assert r["delta_lo"] <= r["delta"] <= r["delta_hi"] < 0
    same = paired_bootstrap(a, a, lens, n_resamples=200)
    assert same["p_b_better"] == 0.5 and same["delta"] == 0


def test_errs_worst_first_and_confusions():
    r = score({"u1": "a b c", "u2": "a b c d", "u3": "x"}, {"u1": "a b c", "u2": "a q", "u3": "y y"})
    assert [u.utt for u in worst_first(r.utts)] == ["u2", "u3", "u1"]
    text = errs_text(r)
    assert text.index("u2 ref") < text.index("u3 ref") < text.index("u1 ref")
    assert re.search(r"^u1 op   C  C  C$", text, re.M)
    c = confusions(r)
    assert c["sub"][("x", "y")] == 1 and c["ins"]["y"] == 1
    assert sum(c["del"].values()) == 2


def test_cli_score_and_compare(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    refs, hyps = _random_pairs(200, seed=3)
    (data / "text").write_text("".join(f"u{i:03d} {r}\n" for i, r in enumerate(refs)))
    (data / "utt2spk").write_text("".join(f"u{i:03d} s{i % 4}\n" for i in range(len(refs))))
    dec = tmp_path / "decode_test_greedy"
    dec.mkdir()
    (dec / "text").write_text("".join(f"u{i:03d} {h}\n" for i, h in enumerate(hyps)))
    (tmp_path / "perfect").write_text("".join(f"u{i:03d} {r}\n" for i, r in enumerate(refs)))

    assert main(["score", str(data), str(dec), "--bootstrap", "200", "--cer"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"%WER \d+\.\d\d \[ \d+ / \d+, \d+ ins, \d+ del, \d+ sub \]", out[0])
    assert out[1].startswith("%WER-CI95 [") and out[2].startswith("%CER ")
    for name in ("wer", "cer", "errs.txt", "per_spk", "confusions.txt", "scores.json"):
        assert (dec / name).is_file(), name
    s = json.loads((dec / "scores.json").read_text())
    assert s["wer"]["rate"] == pytest.approx(100 * jiwer.wer(refs, hyps))
    assert s["wer"]["ci95"][0] <= s["wer"]["rate"] <= s["wer"]["ci95"][1]
    assert [r["spk"] for r in s["per_spk"]] == ["s0", "s1", "s2", "s3", "SUM"]
    assert len(s["utts"]) == 200
    per_spk = (dec / "per_spk").read_text().splitlines()
    assert per_spk[0].split()[:3] == ["SPEAKER", "#SENT", "#WORD"] and per_spk[-1].startswith("SUM")

    assert main(["compare", str(data), str(dec / "text"), str(tmp_path / "perfect"), "--bootstrap", "300",
                 "-o", str(tmp_path / "cmp.json")]) == 0
    out = capsys.readouterr().out
    p = float(re.search(r"P\(B better\) = (\S+)", out)[1])
    assert p > 0.99
    assert json.loads((tmp_path / "cmp.json").read_text())["delta"] < 0


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "ref").write_text("")
    (tmp_path / "hyp").write_text("u1 a\n")
    assert main(["score", str(tmp_path / "ref"), str(tmp_path / "hyp")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no utterances" in err
    assert main(["score", str(tmp_path / "nope"), str(tmp_path / "hyp")]) == 1


def test_read_text_keeps_empty_lines_as_empty(tmp_path):
    (tmp_path / "t").write_text("a x y\nb\n  \nc  z \n")
    assert read_text(tmp_path / "t") == {"a": "x y", "b": "", "c": "z"}


def test_real_corpus_transcripts(tmp_path):
    """speechocean762 test transcripts against a corrupted copy: counts match jiwer, 125 speakers."""
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "speechocean762" / "test"
    if not (data / "text").is_file():
        pytest.skip(f"{data} not present")
    ref = read_text(data / "text")
    rng = random.Random(0)
    hyp = {u: " ".join(w for w in t.split() if rng.random() > 0.1) for u, t in ref.items()}
    del hyp[sorted(hyp)[0]]
    (tmp_path / "hyp").write_text("".join(f"{u} {t}\n" for u, t in hyp.items()))
    assert main(["score", str(data), str(tmp_path / "hyp"), "-o", str(tmp_path / "out"), "--bootstrap", "100"]) == 0
    s = json.loads((tmp_path / "out" / "scores.json").read_text())
    refs = list(ref.values())
    hyps = [hyp.get(u, "") for u in ref]
    assert s["wer"]["errors"] == round(jiwer.wer(refs, hyps) * sum(len(r.split()) for r in refs))
    assert s["wer"]["ins"] == s["wer"]["sub"] == 0 and len(s["missing"]) == 1
    assert len(s["per_spk"]) == len(set((data / "utt2spk").read_text().split()[1::2])) + 1


@pytest.fixture
def jiwer3(monkeypatch):
    """Make jiwer behave like 3.x, which raises on an empty reference (4.x accepts one)."""
    for name in ("process_words", "process_characters"):
        real = getattr(jiwer, name)

        def strict(reference, hypothesis, *args, _real=real, **kwargs):
            refs = [reference] if isinstance(reference, str) else reference
            if any(not r.strip() for r in refs):
                raise ValueError("one or more references are empty strings")
            return _real(reference, hypothesis, *args, **kwargs)

        monkeypatch.setattr(jiwer, name, strict)


def test_empty_reference_is_all_insertions_with_jiwer_3(jiwer3):
    r = score({"a": "", "b": "", "c": "x y", "d": "p q"}, {"a": "x y", "b": "", "c": "", "d": "p z"})
    by = {u.utt: u for u in r.utts}
    assert (by["a"].ins, by["a"].errors, by["a"].ref_chars, by["a"].char_errors) == (2, 2, 0, 3)
    assert by["a"].ops == [("***", "x", "I"), ("***", "y", "I")]
    assert (by["b"].errors, by["b"].ops, by["b"].char_errors) == (0, [], 0)
    assert (by["c"].dels, by["c"].errors, by["c"].ref_chars, by["c"].char_errors) == (2, 2, 3, 3)
    assert (by["d"].sub, by["d"].errors, by["d"].char_errors) == (1, 1, 1)
    t = r.totals()
    assert (t["words"], t["errors"], t["ins"], t["del"], t["sub"], t["sentence_errors"]) == (4, 5, 2, 2, 1, 3)
    assert (t["chars"], t["char_errors"]) == (6, 7)
    assert score({"a": ""}, {"a": ""}).totals()["errors"] == 0  # no pair left for jiwer at all


def test_ignore_noise_empties_a_reference(tmp_path, jiwer3):
    (tmp_path / "ref").write_text("u1 a b c\nu2 [NOISE] <unk>\nu3 <unk>\nu4 [laughter] d e\n")
    (tmp_path / "hyp").write_text("u1 a x c\nu2 uh huh\nu3\nu4 d\n")
    r = score_files(tmp_path / "ref", tmp_path / "hyp", Normaliser(ignore_noise=True))
    assert [u.ref for u in r.utts] == [["a", "b", "c"], [], [], ["d", "e"]]
    # u1: 1 sub; u2: "uh huh" inserted (2 words, 6 chars); u3: nothing either side; u4: "e" deleted (" e": 2 chars)
    t = r.totals()
    assert (t["words"], t["errors"], t["ins"], t["del"], t["sub"]) == (5, 4, 2, 1, 1)
    assert (t["chars"], t["char_errors"]) == (8, 1 + 6 + 0 + 2)
    assert main(["score", str(tmp_path / "ref"), str(tmp_path / "hyp"), "--ignore-noise", "--bootstrap", "20",
                 "-o", str(tmp_path / "out")]) == 0
    wer = (tmp_path / "out" / "wer").read_text()
    assert wer.startswith("%WER 80.00 [ 4 / 5, 2 ins, 1 del, 1 sub ]\n%SER 75.00 [ 3 / 4 ]\n")
    assert (tmp_path / "out" / "cer").read_text().startswith("%CER 112.50 [ 9 / 8 ]\n")
    errs = (tmp_path / "out" / "errs.txt").read_text()
    assert "u2 #csid 0 0 2 0" in errs and "u3 #csid 0 0 0 0" in errs
