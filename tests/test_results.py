"""asr results: every exp/**/wer in one markdown table per test set, best first."""

from __future__ import annotations

from pathlib import Path

from asr.cli import main
from asr.results import BEGIN, END, collect, markdown, parse_wer_file


def _write_wer(d: Path, rate: float, errors: int, total: int, ci: tuple[float, float] | None = None) -> None:
    d.mkdir(parents=True, exist_ok=True)
    lines = [f"%WER {rate:.2f} [ {errors} / {total}, 1 ins, 2 del, {errors - 3} sub ]",
             "%SER 50.00 [ 5 / 10 ]", "Scored 10 sentences, 0 not present in hyp."]
    if ci:
        lines.append(f"%WER-CI95 [ {ci[0]:.2f} , {ci[1]:.2f} ] bootstrap over utterances, 1000 resamples, seed 0")
    (d / "wer").write_text("\n".join(lines) + "\n")


def test_parse_wer_file(tmp_path):
    _write_wer(tmp_path, 12.34, 45, 365, (10.0, 14.5))
    w = parse_wer_file(tmp_path / "wer")
    assert w == {"rate": 12.34, "errors": 45, "total": 365, "ins": 1, "del": 2, "sub": 42, "ser": 50.0,
                 "sentence_errors": 5, "sentences": 10, "missing": 0, "ci95": [10.0, 14.5]}
    (tmp_path / "wer").write_text("nothing here\n")
    assert parse_wer_file(tmp_path / "wer") is None


def test_results_order_and_grouping(tmp_path, capsys):
    egs = tmp_path / "egs" / "an4"
    _write_wer(egs / "exp" / "a" / "decode_test_greedy", 20.0, 20, 100, (15.0, 25.0))
    _write_wer(egs / "exp" / "b" / "decode_test_beam", 10.5, 11, 100)
    _write_wer(egs / "exp" / "c" / "decode_test_greedy", 15.0, 15, 100)
    _write_wer(egs / "exp" / "a" / "decode_dev_greedy", 30.0, 30, 100)
    (egs / "exp" / "a" / "decode_test_greedy" / "wer_extra.txt").write_text("no wer line\n")
    base, entries = collect(egs)
    assert base == egs and len(entries) == 4
    md = markdown(entries)
    assert md.index("## dev") < md.index("## test")
    test_part = md[md.index("## test"):]
    order = [test_part.index(p) for p in ("exp/b/decode_test_beam", "exp/c/decode_test_greedy",
                                          "exp/a/decode_test_greedy")]
    assert order == sorted(order)
    assert "| 20.00 | [15.00, 25.00] |" in md

    # A recipe's own notes survive `make results`.
    out = egs / "RESULTS.md"
    out.write_text("# an4 notes\nhand-written\n")
    assert main(["results", str(egs), "-o", str(out)]) == 0
    assert "best %WER 10.50" in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("# an4 notes\nhand-written\n") and BEGIN in text and END in text
    _write_wer(egs / "exp" / "d" / "decode_test_beam", 5.0, 5, 100)
    assert main(["results", str(egs), "-o", str(out)]) == 0
    text2 = out.read_text()
    assert text2.count(BEGIN) == 1 and "exp/d/decode_test_beam" in text2 and "hand-written" in text2

    # An exp root works too, printing to stdout.
    assert main(["results", str(egs / "exp")]) == 0
    printed = capsys.readouterr().out
    assert printed.index("d/decode_test_beam") < printed.index("b/decode_test_beam")


def test_results_uses_scores_json_set_and_cer(tmp_path, capsys):
    data = tmp_path / "data" / "eval92"
    data.mkdir(parents=True)
    (data / "text").write_text("u1 a b c\nu2 d e\n")
    d = tmp_path / "exp" / "x" / "decode_odd_name"
    d.mkdir(parents=True)
    (d / "text").write_text("u1 a b\nu2 d e\n")
    assert main(["score", str(data), str(d), "--bootstrap", "50"]) == 0
    assert main(["results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "## eval92" in out and "| 20.00 |" in out


def test_results_empty(tmp_path, capsys):
    assert main(["results", str(tmp_path)]) == 0
    assert "No scored decodes" in capsys.readouterr().out
    assert main(["results", str(tmp_path / "nope")]) == 1
