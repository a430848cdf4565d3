"""Token tables: chars and phones, tokens.txt round trip, coverage errors, make-tokens CLI (BPE: test_bpe.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from asr.cli import main
from asr.errors import AsrError
from asr.tokens import TokenTable, check_coverage, make_tokens


def test_char_table_layout_and_round_trip(tmp_path: Path) -> None:
    t = TokenTable.from_texts(["HELLO WORLD", "HI"])
    assert t.symbols[:3] == ["<blk>", "<unk>", "<space>"]
    assert t.symbols[3:] == sorted(set("HELLOWORLDHI"))
    ids = t.encode("HI  WORLD")
    assert ids == [t.ids["H"], t.ids["I"], t.ids["<space>"], *[t.ids[c] for c in "WORLD"]]
    assert t.decode(ids) == "HI WORLD"
    assert t.decode([0, *ids, 0]) == "HI WORLD"
    assert t.encode("HAX") == [t.ids["H"], 1, 1]
    assert t.encode_counting("HAX") == ([t.ids["H"], 1, 1], 2)
    t.save(tmp_path)
    lines = (tmp_path / "tokens.txt").read_text().splitlines()
    assert lines[:3] == ["<blk> 0", "<unk> 1", "<space> 2"]
    assert TokenTable.load(tmp_path / "tokens.txt") == t
    assert TokenTable.load(tmp_path) == t


def test_phone_table_from_lexicon(tmp_path: Path) -> None:
    (tmp_path / "lex.txt").write_text("YES Y EH S\nNO N OW\nNO N AO\n")
    (tmp_path / "text").write_text("u1 YES NO\nu2 NO MAYBE\n")
    t = make_tokens(tmp_path / "text", tmp_path / "lang", unit="phone", lexicon=tmp_path / "lex.txt")
    assert t.symbols == ["<blk>", "<unk>", "EH", "N", "OW", "S", "Y"]  # first pronunciations
    assert t.decode(t.encode("YES NO")) == "Y EH S N OW"
    assert t.encode("MAYBE") == [1]
    loaded = TokenTable.load(tmp_path / "lang" / "tokens.txt")
    assert loaded.unit == "phone" and loaded.encode("NO") == t.encode("NO")


def test_coverage_warns_then_errors(caplog: pytest.LogCaptureFixture) -> None:
    t = TokenTable.from_texts(["ABCDEFGHIJKLMNOPQRSTUVWXYZ"])
    with caplog.at_level(logging.WARNING):
        check_coverage(t, {"u": "ABCDEFGHIJKLMNOPQRSTUVWXY1"}, "text")
    assert "1 of 26 units" in caplog.text
    with pytest.raises(AsrError, match="do not cover"):
        check_coverage(t, {"u": "abc def"}, "text")


def test_bad_tokens_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "tokens.txt").write_text("<blk> 0\n<unk> 2\n")
    with pytest.raises(AsrError, match=r"tokens.txt:2"):
        TokenTable.load(tmp_path / "tokens.txt")
    with pytest.raises(AsrError, match="no such token table"):
        TokenTable.load(tmp_path / "nope.txt")


def test_make_tokens_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "text").write_text("a ONE TWO\nb THREE\n")
    assert main(["make-tokens", str(tmp_path / "text"), str(tmp_path / "lang")]) == 0
    t = TokenTable.load(tmp_path / "lang" / "tokens.txt")
    assert t.decode(t.encode("TWO THREE")) == "TWO THREE"
    assert main(["make-tokens", str(tmp_path / "text"), str(tmp_path / "l2"), "--unit", "phone"]) == 1
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_stale_lexicon_or_bpe_model_beside_tokens_is_ignored(tmp_path: Path) -> None:
    # make-tokens into a lang dir of another unit leaves the other unit's file behind; the symbols of
    # tokens.txt decide which one belongs to it.
    (tmp_path / "text").write_text("a YES NO\nb NO YES\n")
    (tmp_path / "lex.txt").write_text("YES Y EH S\nNO N OW\n")
    bpe = make_tokens(tmp_path / "text", tmp_path / "lang", unit="bpe", vocab_size=12)
    phone = make_tokens(tmp_path / "text", tmp_path / "lang", unit="phone", lexicon=tmp_path / "lex.txt")
    assert (tmp_path / "lang" / "bpe.model").is_file() and TokenTable.load(tmp_path / "lang") == phone
    bpe = make_tokens(tmp_path / "text", tmp_path / "lang", unit="bpe", vocab_size=12)
    assert TokenTable.load(tmp_path / "lang") == bpe and bpe.lexicon is None
    char = make_tokens(tmp_path / "text", tmp_path / "lang")
    assert TokenTable.load(tmp_path / "lang") == char and char.unit == "char"


def test_phone_lang_dir_keeps_every_pronunciation(tmp_path):
    """make-graph reads lang_dir/lexicon.txt: alternates must survive; encoding still uses the first."""
    from asr.tokens import TokenTable, make_tokens

    (tmp_path / "lex.txt").write_text("NO N OW\nA AH\nA EY\nYES Y EH S\n")
    (tmp_path / "text").write_text("u1 A NO\nu2 YES A\n")
    make_tokens(tmp_path / "text", tmp_path / "lang", "phone", tmp_path / "lex.txt")
    assert (tmp_path / "lang" / "lexicon.txt").read_text().splitlines() == ["A AH", "A EY", "NO N OW", "YES Y EH S"]
    table = TokenTable.load(tmp_path / "lang" / "tokens.txt")
    assert table.decode(table.encode("A NO")) == "AH N OW"
