"""AN4's prepare: the lexicon from etc/an4.dic and the <set>_phone texts its phone recipe scores against."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SHARED_DATA

from asr.datadir import read_kv
from asr.tokens import TokenTable, read_lexicon

PREPARE = ROOT / "egs" / "an4" / "local" / "prepare.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def corpus() -> Path:
    path = SHARED_DATA / "an4_mfc"
    if not (path / "etc" / "an4.dic").is_file():
        pytest.skip(f"{path} not found: the shared AN4 copy is absent")
    return path


def prepare(corpus: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PREPARE), str(corpus), str(out)], capture_output=True, text=True,
                          env=ENV, timeout=300)


@pytest.fixture(scope="module")
def data(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("an4")
    proc = prepare(corpus, out)
    assert proc.returncode == 0, proc.stderr
    return out


def lexicon_lines(data: Path) -> dict[str, list[list[str]]]:
    lex: dict[str, list[list[str]]] = {}
    for line in (data / "local" / "lexicon.txt").read_text(encoding="utf-8").splitlines():
        word, *phones = line.split()
        lex.setdefault(word, []).append(phones)
    return lex


def test_lexicon_covers_every_transcript_word_with_every_pronunciation(corpus, data):
    lex = lexicon_lines(data)
    words = {w for s in ("train", "dev", "test") for t in read_kv(data / s / "text").values() for w in t.split()}
    assert words and words <= set(lex)
    # Alternates are more lines of their word, in the dictionary's order; no WORD(2) is a word of its own.
    expected: dict[str, list[list[str]]] = {}
    for line in (corpus / "etc" / "an4.dic").read_text().splitlines():
        word, *phones = line.split()
        expected.setdefault(re.sub(r"\(\d+\)$", "", word), []).append(phones)
    assert lex == expected
    assert lex["A"] == [["AH"], ["EY"]] and len(lex["FEBRUARY"]) == 5
    assert not [p for prons in lex.values() for pron in prons for p in pron if any(c.isdigit() for c in p)]
    assert sum(map(len, lex.values())) == 130 and len(lex) == 101


def test_phone_texts_are_the_first_pronunciation_of_each_word(data):
    lex = lexicon_lines(data)
    for s in ("train", "dev", "test"):
        text, phones = read_kv(data / s / "text"), read_kv(data / f"{s}_phone" / "text")
        assert phones.keys() == text.keys()
        assert read_kv(data / f"{s}_phone" / "utt2spk") == read_kv(data / s / "utt2spk")
        for utt, words in text.items():
            assert phones[utt].split() == [p for w in words.split() for p in lex[w][0]], utt
    # The phone table built from it (asr make-tokens --unit phone) spells every phone text.
    table = TokenTable.from_lexicon(read_lexicon(data / "local" / "lexicon.txt"))
    assert len(table) == 2 + 33
    phones = read_kv(data / "test_phone" / "text")
    assert all(table.decode(table.encode(t)) == phones[u] for u, t in read_kv(data / "test" / "text").items())


def test_a_word_missing_from_the_dictionary_is_an_error_before_anything_is_written(corpus, tmp_path):
    copy = tmp_path / "an4"
    shutil.copytree(corpus / "etc", copy / "etc")
    (copy / "feat").mkdir()
    dic = copy / "etc" / "an4.dic"
    dic.write_text("".join(ln for ln in dic.read_text().splitlines(keepends=True) if not ln.startswith("RUBOUT ")))
    proc = prepare(copy, tmp_path / "data")
    assert proc.returncode != 0
    assert "1 transcript word(s) not in the dictionary: RUBOUT" in proc.stderr
    assert not (tmp_path / "data").exists()
