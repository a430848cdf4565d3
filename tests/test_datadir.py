"""Kaldi data dir contract: read/write/validate/fix/subset/split, with every bad-input case."""

from __future__ import annotations

from pathlib import Path

import pytest

from asr.cli import main
from asr.datadir import (
    DataDir,
    Segment,
    check_data_dir,
    read_kv,
    validate_data_dir,
    write_data_dir,
)
from asr.datadir_ops import combine_data_dirs, fix_data_dir, split_data_dir, subset_data_dir
from asr.errors import AsrError


def make_dir(tmp_path: Path, **files: str) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    for name, content in files.items():
        (d / name.replace("_scp", ".scp")).write_text(content)
    return d


GOOD = dict(
    wav_scp="a1 /x/a1.wav\na2 /x/a2.wav\nb1 /x/b1.wav\n",
    text="a1 HELLO\na2 WORLD\nb1 HELLO WORLD\n",
    utt2spk="a1 A\na2 A\nb1 B\n",
    spk2utt="A a1 a2\nB b1\n",
)


def test_good_dir_validates_and_loads(tmp_path):
    d = make_dir(tmp_path, **GOOD)
    assert validate_data_dir(d) == []
    data = DataDir.load(d)
    assert data.utts == ["a1", "a2", "b1"]
    assert data.spk2utt == {"A": ["a1", "a2"], "B": ["b1"]}
    assert data.text["b1"] == "HELLO WORLD"


def test_write_sorts_in_c_locale_and_generates_spk2utt(tmp_path):
    # C locale puts upper case before lower case and '-' before digits: not Python's locale-free default
    # for mixed keys is the same byte order, so check it against an explicit byte sort.
    utt2spk = {"b-1": "b", "B_2": "B", "a10": "a", "a9": "a"}
    d = write_data_dir(tmp_path / "d", utt2spk=utt2spk, text={u: "X" for u in utt2spk})
    keys = [line.split()[0] for line in (d / "utt2spk").read_text().splitlines()]
    assert keys == sorted(utt2spk, key=lambda s: s.encode())
    assert keys == ["B_2", "a10", "a9", "b-1"]
    assert (d / "spk2utt").read_text() == "B B_2\na a10 a9\nb b-1\n"
    assert validate_data_dir(d, need_text=True) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(utt2spk="a2 A\na1 A\nb1 B\n"), "not sorted"),
        (dict(text="a1 HELLO\na1 AGAIN\na2 WORLD\nb1 HELLO WORLD\n"), "duplicate id a1"),
        (dict(text="a1 HELLO\nb1 HELLO WORLD\n"), "text: 1 utterance(s) of utt2spk missing, e.g. a2"),
        (dict(text=GOOD["text"] + "c1 EXTRA\n"), "text: 1 id(s) not in utt2spk, e.g. c1"),
        (dict(spk2utt="A a1\nB b1\n"), "spk2utt: inconsistent with utt2spk"),
        (dict(wav_scp="a1 /x/a1.wav\nb1 /x/b1.wav\n"), "wav.scp: 1 utterance(s) of utt2spk missing"),
        (dict(utt2spk="a1 A\na2\nb1 B\n"), "a2 has no value"),
    ],
)
def test_validation_names_each_problem(tmp_path, change, expected):
    d = make_dir(tmp_path, **{**GOOD, **change})
    problems = validate_data_dir(d)
    assert any(expected in p for p in problems), problems


def test_non_utf8_text_names_the_line(tmp_path):
    d = make_dir(tmp_path, **GOOD)
    (d / "text").write_bytes(b"a1 HELLO\na2 W\xffRLD\nb1 HELLO WORLD\n")
    problems = validate_data_dir(d)
    assert any("text:2: not valid UTF-8" in p for p in problems), problems
    with pytest.raises(AsrError, match="text:2: not valid UTF-8"):
        DataDir.load(d)


def test_validation_reports_all_problems_not_just_the_first(tmp_path):
    d = make_dir(tmp_path, **{**GOOD, "text": "a1 X\na1 Y\n", "spk2utt": "A a1\n", "utt2spk": "b1 B\na1 A\na2 A\n"})
    problems = validate_data_dir(d)
    assert len(problems) >= 4, problems
    with pytest.raises(AsrError, match=r"problem\(s\)"):
        check_data_dir(d)


def test_segments_must_lie_inside_their_recordings(tmp_path):
    d = make_dir(
        tmp_path,
        wav_scp="r1 /x/r1.wav\n",
        segments="u1 r1 0.00 1.50\nu2 r1 1.50 3.50\nu3 r2 0 1\n",
        reco2dur="r1 3.00\n",
        utt2spk="u1 S\nu2 S\nu3 S\n",
        spk2utt="S u1 u2 u3\n",
        text="u1 A\nu2 B\nu3 C\n",
    )
    problems = validate_data_dir(d)
    assert any("u2: ends at 3.5s, after its recording (3.0s)" in p for p in problems), problems
    assert any("u3: recording r2 not in wav.scp" in p for p in problems), problems
    data = DataDir.load(d)
    assert data.segments["u1"] == Segment("r1", 0.0, 1.5)


def test_fix_sorts_drops_and_regenerates(tmp_path):
    d = make_dir(
        tmp_path,
        wav_scp="b1 /x/b1.wav\na1 /x/a1.wav\na2 /x/a2.wav\n",
        text="b1 HELLO WORLD\na1 HELLO\n",
        utt2spk="b1 B\na2 A\na1 A\n",
    )
    assert fix_data_dir(d) == 1  # a2 has no text
    assert validate_data_dir(d) == []
    assert read_kv(d / "utt2spk") == {"a1": "A", "b1": "B"}
    assert (d / "spk2utt").read_text() == "A a1\nB b1\n"


def test_subset_and_split_by_speaker(tmp_path):
    utt2spk = {f"s{s}-u{i}": f"s{s}" for s in range(5) for i in range(s + 1)}
    src = write_data_dir(tmp_path / "src", utt2spk=utt2spk, text={u: "A" for u in utt2spk},
                         wav_scp={u: f"/x/{u}.wav" for u in utt2spk})
    sub = subset_data_dir(src, tmp_path / "sub", ["s1-u0", "s4-u3"])
    assert validate_data_dir(sub) == []
    assert DataDir.load(sub).utts == ["s1-u0", "s4-u3"]
    parts = split_data_dir(src, 3)
    assert [p.name for p in parts] == ["1", "2", "3"]
    seen = []
    for p in parts:
        assert validate_data_dir(p) == []
        data = DataDir.load(p)
        seen += data.utts
        # a speaker never straddles two parts
        assert all(set(data.spk2utt[s]) == {u for u in utt2spk if utt2spk[u] == s} for s in data.spk2utt)
    assert sorted(seen) == sorted(utt2spk)
    sizes = sorted(len(DataDir.load(p).utts) for p in parts)
    assert sizes == [5, 5, 5]  # 15 utterances by speakers of 1..5: 5 | 4+1 | 3+2
    with pytest.raises(AsrError, match="cannot split 5 speaker"):
        split_data_dir(src, 6)


def test_cli_validate_prints_lines_and_exit_code(tmp_path, capsys):
    d = make_dir(tmp_path, **{**GOOD, "utt2spk": "a2 A\na1 A\nb1 B\n"})
    assert main(["validate-data-dir", str(d)]) == 1
    out = capsys.readouterr().out
    assert "not sorted" in out and "Traceback" not in out
    assert main(["fix-data-dir", str(d)]) == 0
    assert main(["validate-data-dir", str(d)]) == 0


def test_cli_error_is_one_line(tmp_path, capsys):
    assert main(["split-data-dir", str(tmp_path / "nope"), "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a directory" in err


def test_combine_data_dirs(tmp_path):
    a = write_data_dir(tmp_path / "a", utt2spk={"a1": "A"}, text={"a1": "X"}, wav_scp={"a1": "/a1.wav"})
    b = write_data_dir(tmp_path / "b", utt2spk={"sp0.9-a1": "sp0.9-A"}, text={"sp0.9-a1": "X"},
                       wav_scp={"sp0.9-a1": "/sp/a1.flac"})
    out = combine_data_dirs(tmp_path / "ab", [a, b])
    assert validate_data_dir(out) == []
    assert DataDir.load(out).utts == ["a1", "sp0.9-a1"]
    c = write_data_dir(tmp_path / "c", utt2spk={"a1": "B"}, text={"a1": "X"})
    with pytest.raises(AsrError, match="id a1 also in another source"):
        combine_data_dirs(tmp_path / "ac", [a, c])


def _featurised(d: Path, utts: dict[str, str], yaml_text: str | None) -> Path:
    """A data dir with (fake) features: feats.scp, utt2num_frames and, unless None, this feats.yaml."""
    ids = sorted(utts)
    write_data_dir(d, utt2spk=utts, text={u: "X" for u in ids},
                   feats_scp={u: f"/f/{d.name}.ark:{i * 100 + 9}" for i, u in enumerate(ids)},
                   utt2num_frames={u: 50 + i for i, u in enumerate(ids)})
    if yaml_text is not None:
        (d / "feats.yaml").write_text(yaml_text)
    return d


def test_combine_carries_feats_yaml_and_frame_counts(tmp_path):
    from asr.features import read_feature_config

    a = _featurised(tmp_path / "a", {"a1": "A", "a2": "A"}, "kind: fbank\nnum_mel_bins: 40\nstack: 3\nsubsample: 3\n")
    # The same settings written in another key order and layout are the same features.
    b = _featurised(tmp_path / "b", {"b1": "B"}, "subsample: 3\nstack: 3\nnum_mel_bins: 40   # fbank\nkind: fbank\n")
    out = combine_data_dirs(tmp_path / "ab", [a, b])
    cfg = read_feature_config(out)
    assert (cfg.kind, cfg.num_mel_bins, cfg.stack, cfg.subsample) == ("fbank", 40, 3, 3)
    assert read_kv(out / "utt2num_frames") == {"a1": "50", "a2": "51", "b1": "50"}
    assert read_kv(out / "feats.scp") == {"a1": "/f/a.ark:9", "a2": "/f/a.ark:109", "b1": "/f/b.ark:9"}
    assert validate_data_dir(out, need_feats=True) == []

    # Recombined without features (c has none): nothing left over claims features the dir lacks.
    c = write_data_dir(tmp_path / "c", utt2spk={"c1": "C"}, text={"c1": "X"})
    combine_data_dirs(out, [a, c])
    assert not any((out / n).exists() for n in ("feats.yaml", "feats.scp", "utt2num_frames"))
    assert validate_data_dir(out) == []


def test_combine_refuses_features_made_different_ways(tmp_path, capsys):
    a = _featurised(tmp_path / "a", {"a1": "A"}, "kind: fbank\nnum_mel_bins: 40\n")
    b = _featurised(tmp_path / "b", {"b1": "B"}, "kind: fbank\nnum_mel_bins: 80\n")
    pre = _featurised(tmp_path / "pre", {"p1": "P"}, None)  # feats.scp, no feats.yaml: precomputed
    with pytest.raises(AsrError, match=r"made different ways \(num_mel_bins: 40 vs 80\)"):
        combine_data_dirs(tmp_path / "ab", [a, b])
    with pytest.raises(AsrError, match="precomputed"):
        combine_data_dirs(tmp_path / "ap", [a, pre])
    assert not (tmp_path / "ab").exists() and not (tmp_path / "ap").exists()
    assert main(["combine-data-dirs", str(tmp_path / "ab"), str(a), str(b)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(a) in err and str(b) in err
