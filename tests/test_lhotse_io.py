"""asr import-lhotse / export-lhotse, checked against lhotse's own Kaldi conversion (lhotse.kaldi)."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import pytest
import soundfile as sf

from asr.cli import main
from asr.datadir import Segment, validate_data_dir, write_data_dir, write_kv
from asr.lhotse_io import export_lhotse, import_lhotse

lhotse = pytest.importorskip("lhotse", reason="lhotse not installed (pip install 'asr[lhotse]')")
from lhotse import CutSet, Recording, SupervisionSegment, SupervisionSet, load_manifest  # noqa: E402
from lhotse.kaldi import export_to_kaldi, load_kaldi_data_dir  # noqa: E402

DIGITS = "ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split()


def _dur(path: Path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate


def _yesno_files(shared_data: Path, n: int) -> list[Path]:
    files = sorted((shared_data / "yesno" / "waves_yesno").glob("*.wav"))[:n]
    if len(files) < n:
        pytest.skip("yesno corpus not found under shared data")
    return files


def _yesno_words(path: Path) -> list[str]:
    return ["YES" if b == "1" else "NO" for b in path.stem.split("_")]


@pytest.fixture
def fsdd_dir(tmp_path: Path, shared_data: Path) -> Path:
    """Whole-recording utterances (no segments): FSDD digits, 2 speakers x 2, ids speaker-prefixed."""
    rec_dir = shared_data / "fsdd" / "recordings"
    files = [rec_dir / f"{d}_{s}_{i}.wav" for s in ("jackson", "theo") for d, i in ((3, 7), (8, 12))]
    if not all(f.is_file() for f in files):
        pytest.skip("fsdd corpus not found under shared data")
    utts = {f"{f.stem.split('_')[1]}-{f.stem}": f for f in files}
    write_data_dir(tmp_path / "fsdd", wav_scp={u: str(f) for u, f in utts.items()},
                   text={u: DIGITS[int(f.stem[0])] for u, f in utts.items()},
                   utt2spk={u: u.split("-")[0] for u in utts}, reco2dur={u: _dur(f) for u, f in utts.items()})
    write_kv(tmp_path / "fsdd" / "utt2dur", {u: f"{_dur(f):.3f}" for u, f in utts.items()})
    assert validate_data_dir(tmp_path / "fsdd", need_audio=True) == []
    return tmp_path / "fsdd"


@pytest.fixture
def yesno_dir(tmp_path: Path, shared_data: Path) -> Path:
    """Segmented recordings (two utterances each), one of them read through a ``cat x.wav |`` pipe."""
    files = _yesno_files(shared_data, 2)
    wav_scp = {f"r{k}": str(f) for k, f in enumerate(files)}
    wav_scp["r1"] = f"cat {files[1]} |"
    segments, text = {}, {}
    for k, f in enumerate(files):
        words, half = _yesno_words(f), 3.1
        segments[f"yesno-r{k}-a"] = Segment(f"r{k}", 0.25, half)
        segments[f"yesno-r{k}-b"] = Segment(f"r{k}", half, round(_dur(f) - 0.1, 3))
        text[f"yesno-r{k}-a"], text[f"yesno-r{k}-b"] = " ".join(words[:4]), " ".join(words[4:])
    d = write_data_dir(tmp_path / "yesno", wav_scp=wav_scp, text=text, utt2spk={u: "yesno" for u in segments},
                       segments=segments, reco2dur={f"r{k}": _dur(f) for k, f in enumerate(files)})
    write_kv(d / "utt2dur", {u: f"{s.end - s.start:.3f}" for u, s in segments.items()})
    assert validate_data_dir(d, need_audio=True) == []
    return d


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.mark.parametrize("which", ["fsdd_dir", "yesno_dir"])
def test_export_matches_lhotse_kaldi_importer(which, request, tmp_path):
    src = request.getfixturevalue(which)
    export_lhotse(src, tmp_path / "manifests")
    ours_r = load_manifest(tmp_path / "manifests" / "recordings.jsonl.gz")
    ours_s = load_manifest(tmp_path / "manifests" / "supervisions.jsonl.gz")
    ref_r, ref_s, _ = load_kaldi_data_dir(src, sampling_rate=8000)
    assert sorted(ours_r.ids) == sorted(ref_r.ids)
    for r in ref_r:
        o = ours_r[r.id]
        assert (o.sampling_rate, o.sources[0].type) == (r.sampling_rate, r.sources[0].type)
        assert o.sources[0].source.strip() == r.sources[0].source.strip()
        assert o.duration == pytest.approx(r.duration, abs=1e-3)
    assert sorted(ours_s.ids) == sorted(ref_s.ids)
    for s in ref_s:
        o = ours_s[s.id]
        assert (o.recording_id, o.text, o.speaker) == (s.recording_id, s.text, s.speaker)
        assert (o.start, o.duration) == pytest.approx((s.start, s.duration), abs=1e-3)
    cuts = load_manifest(tmp_path / "manifests" / "cuts.jsonl.gz")
    assert sorted(s.id for c in cuts for s in c.supervisions) == sorted(ref_s.ids)


def _parse(d: Path, name: str) -> dict[str, list]:
    """A Kaldi table with numbers as floats (lhotse writes ``3.1``, we write ``3.100``)."""
    out = {}
    for line in (d / name).read_text().splitlines():
        key, *values = line.split()
        out[key] = [round(float(v), 3) if v.replace(".", "", 1).isdigit() else v for v in values]
    return out


@pytest.mark.filterwarnings("ignore:A lambda was passed")  # lhotse's own prefix_spk_id
@pytest.mark.parametrize("prefixed", [True, False], ids=["ids-with-speaker", "ids-without-speaker"])
@pytest.mark.parametrize("inputs", ["cuts", "recordings+supervisions"])
def test_import_matches_lhotse_export_to_kaldi(prefixed, inputs, tmp_path, shared_data):
    recs, sups = [], []
    for k, f in enumerate(_yesno_files(shared_data, 3)):
        rec = Recording.from_file(f, recording_id=f"rec{k}")
        recs.append(rec)
        spk = f"spk{k % 2}"
        for j, (a, b) in enumerate(((0.5, 2.75), (2.75, rec.duration - 0.2))):
            words = _yesno_words(f)[4 * j: 4 * j + 4]
            sups.append(SupervisionSegment(id=f"{spk}-{k}-{j}" if prefixed else f"u{k}{j}", recording_id=rec.id,
                                           start=a, duration=round(b - a, 4), speaker=spk, text=" ".join(words)))
    cuts = CutSet.from_manifests(recordings=lhotse.RecordingSet.from_recordings(recs),
                                 supervisions=SupervisionSet.from_segments(sups))
    export_to_kaldi(cuts.decompose()[0], cuts.decompose()[1], tmp_path / "ref", prefix_spk_id=not prefixed)
    if inputs == "cuts":
        cuts.to_file(tmp_path / "cuts.jsonl.gz")
        manifests = [tmp_path / "cuts.jsonl.gz"]
    else:  # in either order
        SupervisionSet.from_segments(sups).to_file(tmp_path / "sups.jsonl")
        lhotse.RecordingSet.from_recordings(recs).to_file(tmp_path / "recs.jsonl.gz")
        manifests = [tmp_path / "sups.jsonl", tmp_path / "recs.jsonl.gz"]
    ours = import_lhotse(manifests, tmp_path / "ours")
    ref_files = sorted(p.name for p in (tmp_path / "ref").iterdir())
    assert ref_files == ["reco2dur", "segments", "text", "utt2dur", "utt2spk", "wav.scp"]
    assert sorted(_files(ours)) == sorted(ref_files + ["spk2utt"])
    for name in ref_files:
        assert _parse(ours, name) == _parse(tmp_path / "ref", name), name
        keys = [line.split()[0] for line in (ours / name).read_text().splitlines()]
        assert keys == [line.split()[0] for line in (tmp_path / "ref" / name).read_text().splitlines()], name


@pytest.mark.parametrize("which", ["fsdd_dir", "yesno_dir"])
@pytest.mark.parametrize("via", ["cuts", "recordings+supervisions"])
def test_round_trip_is_identical(which, via, request, tmp_path):
    src = request.getfixturevalue(which)
    m = tmp_path / "m"
    export_lhotse(src, m)
    names = ["cuts.jsonl.gz"] if via == "cuts" else ["recordings.jsonl.gz", "supervisions.jsonl.gz"]
    assert main(["import-lhotse", *(str(m / n) for n in names), str(tmp_path / "back")]) == 0
    assert _files(tmp_path / "back") == _files(src)


def test_import_over_an_earlier_dir_leaves_no_stale_files(fsdd_dir, yesno_dir, tmp_path):
    export_lhotse(yesno_dir, tmp_path / "y")
    export_lhotse(fsdd_dir, tmp_path / "f")
    import_lhotse([tmp_path / "y" / "cuts.jsonl.gz"], tmp_path / "d")
    import_lhotse([tmp_path / "f" / "cuts.jsonl.gz"], tmp_path / "d")  # no segments this time
    assert _files(tmp_path / "d") == _files(fsdd_dir)


def test_missing_speaker_and_unprefixed_ids(tmp_path, shared_data):
    f = _yesno_files(shared_data, 1)[0]
    rec = Recording.from_file(f, recording_id="r")
    sups = [SupervisionSegment(id="a", recording_id="r", start=0, duration=1.0, text="NO"),
            SupervisionSegment(id="b", recording_id="r", start=1, duration=1.0, speaker="x", text="YES")]
    CutSet.from_manifests(recordings=lhotse.RecordingSet.from_recordings([rec]),
                          supervisions=SupervisionSet.from_segments(sups)).to_file(tmp_path / "c.jsonl.gz")
    d = import_lhotse([tmp_path / "c.jsonl.gz"], tmp_path / "d")
    assert (d / "utt2spk").read_text() == "a a\nx-b x\n"
    assert (d / "spk2utt").read_text() == "a a\nx x-b\n"


def test_unrenderable_recording_is_skipped_with_one_warning(tmp_path, shared_data, caplog):
    f = _yesno_files(shared_data, 1)[0]
    good = Recording.from_file(f, recording_id="good")
    url = Recording(id="web", sources=[lhotse.AudioSource(type="url", channels=[0], source="https://x/y.wav")],
                    sampling_rate=8000, num_samples=8000, duration=1.0)
    sups = [SupervisionSegment(id=r, recording_id=r, start=0, duration=r_.duration, speaker=r, text="YES")
            for r, r_ in (("good", good), ("web", url))]
    lhotse.RecordingSet.from_recordings([good, url]).to_file(tmp_path / "r.jsonl.gz")
    SupervisionSet.from_segments(sups).to_file(tmp_path / "s.jsonl.gz")
    d = import_lhotse([tmp_path / "r.jsonl.gz", tmp_path / "s.jsonl.gz"], tmp_path / "d")
    assert (d / "wav.scp").read_text() == f"good {f}\n"
    assert not (d / "segments").exists()  # the one left is a whole recording with the recording's id
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "web" in warnings[0]


def _one_error_line(capsys, argv: list[str], *must_contain: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for s in must_contain:
        assert s in err, err
    return err


def test_bad_inputs_give_one_line(tmp_path, capsys, fsdd_dir):
    missing = tmp_path / "nope.jsonl.gz"
    _one_error_line(capsys, ["import-lhotse", str(missing), str(tmp_path / "d")], str(missing), "no such file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "recording_id": "r", "start": 0, "duration": 1}\n{not json\n')
    _one_error_line(capsys, ["import-lhotse", str(bad), str(tmp_path / "d")], f"{bad}:2", "not valid JSON")
    foreign = tmp_path / "foreign.jsonl.gz"
    with gzip.open(foreign, "wt") as f:
        f.write('{"hello": "world"}\n')
    _one_error_line(capsys, ["import-lhotse", str(foreign), str(tmp_path / "d")], f"{foreign}:1")
    export_lhotse(fsdd_dir, tmp_path / "m")
    _one_error_line(capsys, ["import-lhotse", str(tmp_path / "m" / "recordings.jsonl.gz"), str(tmp_path / "d")],
                    "expected one CutSet manifest")
    _one_error_line(capsys, ["export-lhotse", str(tmp_path / "nodir"), str(tmp_path / "o")], "nodir")
    assert not (tmp_path / "d").exists()


def test_missing_lhotse_gives_the_install_hint(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lhotse", None)  # makes `import lhotse` raise ImportError
    _one_error_line(capsys, ["export-lhotse", str(tmp_path), str(tmp_path / "o")], "pip install 'asr[lhotse]'")
