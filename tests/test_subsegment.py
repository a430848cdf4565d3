"""asr subsegment: word-span sub-utterances cut at the pauses of a word CTM, and combining them with
the whole utterances (mixed segments), on real yesno audio."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
import soundfile as sf
import torch

from asr.audio import load_utterance
from asr.cli import main
from asr.datadir import DataDir, Segment, read_kv, validate_data_dir, write_data_dir
from asr.errors import AsrError
from asr.subsegment import read_ctm, span_extent, subsegment_data_dir, word_spans

RATE = 8000


def test_a_span_keeps_the_pauses_on_either_side():
    words = [("A", 0.5, 1.0), ("B", 1.4, 2.0), ("C", 3.0, 3.2)]
    assert span_extent(words, 1, 2, 4.0) == (1.0, 3.0)  # B: from A's end to C's start
    assert span_extent(words, 1, 3, 4.0) == (1.0, 4.0)  # B C: to the utterance's end
    assert span_extent(words, 0, 1, 4.0) == (0.0, 1.4)
    assert span_extent(words, 2, 3, 4.0) == (2.0, 4.0)


def test_every_word_but_the_first_opens_one_span():
    for seed in range(20):
        spans = word_spans(8, random.Random(seed))
        assert [i for i, _ in spans] == list(range(1, 8))
        assert all(i < j <= 8 for i, j in spans)
        short = word_spans(8, random.Random(seed), max_words=2)
        assert all(1 <= j - i <= 2 for i, j in short)
    assert word_spans(8, random.Random(0), max_words=1) == [(i, i + 1) for i in range(1, 8)]
    assert word_spans(1, random.Random(0)) == []


def yesno(shared: Path, out: Path, n: int = 2) -> Path:
    files = sorted((shared / "yesno" / "waves_yesno").glob("*.wav"))[:n]
    wav = {f.stem: str(f) for f in files}
    text = {u: " ".join("YES" if c == "1" else "NO" for c in u.split("_")) for u in wav}
    return write_data_dir(out, wav_scp=wav, text=text, utt2spk={u: "global" for u in wav})


def even_ctm(data: Path, path: Path) -> Path:
    """Words 0.3 s long every 0.6 s from 0.5 s: times we know, for exact cut points."""
    lines = []
    for utt, text in read_kv(data / "text").items():
        lines += [f"{utt} 1 {0.5 + 0.6 * k:.3f} 0.300 {w} 0.9000" for k, w in enumerate(text.split())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_sub_utterances_are_the_recordings_cut_between_words(shared_data, tmp_path):
    src = yesno(shared_data, tmp_path / "src")
    made, skipped = subsegment_data_dir(src, even_ctm(src, tmp_path / "ctm"), tmp_path / "out", seed=3)
    assert (made, skipped) == (14, 0)  # 2 utterances x (8 - 1) openings
    assert validate_data_dir(tmp_path / "out", need_audio=True) == []
    sub, orig = DataDir.load(tmp_path / "out"), DataDir.load(src)
    for utt in orig.utts:
        words = orig.text[utt].split()
        duration = sf.info(orig.wav_scp[utt]).duration
        whole = load_utterance(orig, utt, RATE)
        mine = [u for u in sub.utts if u.startswith(utt + "-w")]
        assert len(mine) == 7
        for u in mine:
            _, first, end = u.rsplit("-", 2)
            i, j = int(first[1:]), int(end)
            seg = sub.segments[u]
            assert seg.reco == utt and sub.text[u] == " ".join(words[i:j])
            assert seg.start == pytest.approx(0.2 + 0.6 * i, abs=1e-9)  # the end of word i - 1
            assert seg.end == pytest.approx(round(duration, 3) if j == 8 else 0.5 + 0.6 * j, abs=1e-3)
            a = round(seg.start * RATE)
            cut = load_utterance(sub, u, RATE)
            assert torch.equal(cut, whole[a:a + cut.numel()])
        assert {int(u.split("-w")[1][:3]) for u in mine} == set(range(1, 8))


def test_offsets_add_to_the_source_segments(shared_data, tmp_path):
    src = yesno(shared_data, tmp_path / "rec", n=1)
    (reco,) = read_kv(src / "wav.scp")
    write_data_dir(tmp_path / "seg", wav_scp=read_kv(src / "wav.scp"), text={"u1": "NO NO YES"},
                   utt2spk={"u1": "global"}, segments={"u1": Segment(reco, 1.0, 3.0)})
    # Word 1 runs from word 0's end (0.4) to word 2's start (1.4), word 2 from 1.0 to the segment's end (2.0); + 1.0.
    (tmp_path / "ctm").write_text("u1 1 0.2 0.2 NO\nu1 1 0.8 0.2 NO\nu1 1 1.4 0.3 YES\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "feats.scp").write_text("stale x.ark:1\n")  # an earlier run's, of other utterances
    subsegment_data_dir(tmp_path / "seg", tmp_path / "ctm", tmp_path / "out", max_words=1)
    assert not (tmp_path / "out" / "feats.scp").exists()
    out = DataDir.load(tmp_path / "out")
    assert {u: (s.reco, s.start, s.end) for u, s in out.segments.items()} == {
        "u1-w001-002": (reco, 1.4, 2.4), "u1-w002-003": (reco, 2.0, 3.0)}
    assert out.text == {"u1-w001-002": "NO", "u1-w002-003": "YES"}


def test_utterances_without_matching_alignment_are_named_and_skipped(shared_data, tmp_path, caplog):
    src = yesno(shared_data, tmp_path / "src", n=3)
    utts = sorted(read_kv(src / "text"))
    ctm = even_ctm(src, tmp_path / "ctm")
    lines = ctm.read_text().splitlines()
    lines = [ln for ln in lines if not ln.startswith(utts[0])]  # not aligned at all
    lines = [ln.replace(" YES ", " NO ").replace(" NO ", " YES ") if ln.startswith(utts[1]) else ln for ln in lines]
    ctm.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        assert main(["subsegment", str(src), str(ctm), str(tmp_path / "out")]) == 1
    assert f"{utts[0]}: not in the CTM, skipped" in caplog.text
    assert f"{utts[1]}: CTM words differ from its text, skipped" in caplog.text
    assert {u.split("-w")[0] for u in read_kv(tmp_path / "out" / "text")} == {utts[2]}
    (tmp_path / "bad").write_text("u1 1 x 0.2 NO\n")
    with pytest.raises(AsrError, match="bad:1: start/duration are not numbers"):
        read_ctm(tmp_path / "bad")


def test_combined_with_the_whole_utterances_every_one_reads_back(shared_data, tmp_path):
    """combine-data-dirs gives the dir without segments whole-recording ones (Kaldi's combine_data.sh)."""
    src = yesno(shared_data, tmp_path / "src")
    subsegment_data_dir(src, even_ctm(src, tmp_path / "ctm"), tmp_path / "spans")
    assert main(["combine-data-dirs", str(tmp_path / "all"), str(src), str(tmp_path / "spans")]) == 0
    assert validate_data_dir(tmp_path / "all", need_audio=True) == []
    merged, orig = DataDir.load(tmp_path / "all"), DataDir.load(src)
    assert len(merged.utts) == 2 + 14
    for utt in orig.utts:
        assert merged.segments[utt].start == 0
        assert torch.equal(load_utterance(merged, utt, RATE), load_utterance(orig, utt, RATE))
