"""Audio reading: real corpora at 16 kHz with the right durations, and every bad-input case."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import AudioStream, iter_utterances, load_utterance, load_wav_scp_entry, read_audio
from asr.datadir import DataDir, Segment, validate_data_dir, write_data_dir
from asr.errors import AsrError

RATE = 16000


def expected_len(path: Path, rate: int = RATE) -> int:
    info = sf.info(str(path))
    return math.ceil(info.frames * rate / info.samplerate)


def data_dir_for(tmp_path: Path, files: list[Path], spk_of) -> DataDir:
    utt2spk = {f"{spk_of(f)}-{f.stem}": spk_of(f) for f in files}
    wav = {f"{spk_of(f)}-{f.stem}": str(f) for f in files}
    d = write_data_dir(tmp_path / "d", wav_scp=wav, utt2spk=utt2spk, text={u: "X" for u in utt2spk})
    assert validate_data_dir(d) == []
    return DataDir.load(d)


def check_all_load(data: DataDir, paths: dict[str, Path]) -> int:
    n = 0
    for utt, wave in iter_utterances(data, RATE):
        assert not isinstance(wave, AsrError), wave
        assert wave.dtype == torch.float32 and wave.dim() == 1
        assert abs(wave.numel() - expected_len(paths[utt])) <= 1, utt
        n += 1
    return n


def test_fsdd_8khz_all_load_at_16k(shared_data, tmp_path):
    files = sorted((shared_data / "fsdd" / "recordings").glob("*.wav"))
    assert len(files) > 2000
    data = data_dir_for(tmp_path, files, lambda f: f.stem.split("_")[1])
    assert check_all_load(data, {u: Path(p) for u, p in data.wav_scp.items()}) == len(files)


def test_yesno_and_pocketsphinx_load(shared_data, tmp_path):
    files = sorted((shared_data / "yesno" / "waves_yesno").glob("*.wav"))
    files += sorted((shared_data / "pocketsphinx" / "test" / "data").rglob("*.wav"))
    assert len(files) >= 60
    data = data_dir_for(tmp_path, files, lambda f: f.parent.name.replace("_", ""))
    assert check_all_load(data, {u: Path(p) for u, p in data.wav_scp.items()}) == len(files)


def test_speechocean762_data_dirs_validate_and_load(shared_data, tmp_path):
    root = shared_data / "speechocean762"
    for part, count in (("train", 1250), ("test", 500)):
        assert validate_data_dir(root / part) == [], part
        data = DataDir.load(root / part)
        assert len(data.utts) == count
        # wav.scp paths are relative to the corpus root in this copy
        paths = {u: root / v for u, v in data.wav_scp.items()}
        for utt in data.utts[:: 25 if part == "train" else 10]:
            wave = load_wav_scp_entry(str(paths[utt]), RATE, name=utt)
            assert wave.numel() == expected_len(paths[utt])


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    subtype = "FLOAT" if path.suffix == ".wav" else "PCM_16"  # FLAC stores integers only
    sf.write(str(path), samples, rate, subtype=subtype)
    return path


def test_stereo_is_downmixed_and_resampled(tmp_path):
    t = np.arange(8000) / 8000
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, -left + 0.2], axis=1).astype(np.float32)
    wave = read_audio(write_wav(tmp_path / "s.wav", stereo, 8000), RATE)
    assert wave.shape == (16000,)
    assert torch.allclose(wave[100:-100], torch.full((15800,), 0.1), atol=1e-3)


def test_segments_cut_recordings(tmp_path):
    ramp = np.linspace(-1, 1, 3 * RATE, dtype=np.float32)
    rec = write_wav(tmp_path / "r.wav", ramp)
    d = write_data_dir(tmp_path / "d", wav_scp={"r": str(rec), "p": f"cat {rec} |"},
                       utt2spk={"u1": "s", "u2": "s", "u3": "s"},
                       segments={"u1": Segment("r", 0.5, 1.0), "u2": Segment("r", 2.0, 3.0),
                                 "u3": Segment("p", 0.5, 1.0)})
    data = DataDir.load(d)
    u1 = load_utterance(data, "u1", RATE)
    assert torch.equal(u1, torch.from_numpy(ramp[RATE // 2: RATE]))
    assert load_utterance(data, "u2", RATE).numel() == RATE
    assert torch.equal(load_utterance(data, "u3", RATE), u1)


def test_pipe_entries(tmp_path):
    rec = write_wav(tmp_path / "r.wav", np.zeros(RATE, dtype=np.float32) + 0.25)
    wave = load_wav_scp_entry(f"cat {rec} |", RATE)
    assert wave.numel() == RATE and float(wave[0]) == 0.25


def _bad_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    good = write_wav(tmp_path / "good.wav", np.zeros(RATE, dtype=np.float32))
    truncated = tmp_path / "trunc.flac"
    write_wav(truncated, (np.random.default_rng(0).standard_normal(RATE) * 0.1).astype(np.float32))
    truncated.write_bytes(truncated.read_bytes()[:40])
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"this is not audio at all" * 100)
    zero_samples = write_wav(tmp_path / "zero.wav", np.zeros(0, dtype=np.float32))
    nan = write_wav(tmp_path / "nan.wav", np.full(RATE, np.nan, dtype=np.float32))
    return {
        "empty file": (str(empty), "empty file"),
        "truncated": (str(truncated), "cannot decode audio"),
        "not audio": (str(garbage), "cannot decode audio"),
        "no samples": (str(zero_samples), "empty audio"),
        "missing path": (str(tmp_path / "missing.wav"), "no such file"),
        "failing pipe": (f"{sys.executable} -c 'import sys; sys.exit(3)' |", "pipe command failed (exit 3)"),
        "silent pipe": ("true |", "pipe command printed nothing"),
        "nan samples": (str(nan), "NaN"),
        "good": (str(good), ""),
    }


@pytest.mark.parametrize("case", ["empty file", "truncated", "not audio", "no samples", "missing path",
                                  "failing pipe", "silent pipe", "nan samples"])
def test_bad_audio_is_one_line_naming_the_utterance(tmp_path, case):
    value, message = _bad_cases(tmp_path)[case]
    with pytest.raises(AsrError) as err:
        load_wav_scp_entry(value, RATE, name="utt-7")
    text = str(err.value)
    assert text.startswith("utt-7") and message in text and "\n" not in text


def test_a_bad_utterance_does_not_stop_the_batch(tmp_path):
    cases = _bad_cases(tmp_path)
    wav = {f"u{i}": value for i, (value, _) in enumerate(cases.values())}
    d = write_data_dir(tmp_path / "d", wav_scp=wav, utt2spk={u: "s" for u in wav})
    results = dict(iter_utterances(DataDir.load(d), RATE))
    ok = [u for u, w in results.items() if isinstance(w, torch.Tensor)]
    bad = [u for u, w in results.items() if isinstance(w, AsrError)]
    assert ok == [f"u{len(cases) - 1}"] and len(bad) == len(cases) - 1
    assert all(str(results[u]).startswith(u) for u in bad)


@pytest.mark.parametrize("native", [RATE, 8000, 44100])
def test_stream_spans_equal_slices_of_the_whole_file(tmp_path, native):
    """Any span, also one at either end, is the slice of the file read and resampled whole."""
    rng = np.random.default_rng(native)
    stereo = (rng.standard_normal((3 * native + 7, 2)) * 0.1).astype(np.float32)
    path = write_wav(tmp_path / "long.wav", stereo, native)
    whole = read_audio(path, RATE)
    stream = AudioStream(path, RATE)
    assert stream.num_samples == whole.numel() and stream.duration == (3 * native + 7) / native
    spans = [(0, 1000), (12345, 30001), (30001, 30002), (whole.numel() - 999, whole.numel()),
             (whole.numel() - 10, whole.numel() + 50)]
    for a, b in spans:
        got = stream.read(a, b)
        assert got.shape == (b - a,)
        want = torch.nn.functional.pad(whole[a:b], (0, b - a - whole[a:b].numel()))  # zeros past the end
        if native == RATE:
            assert torch.equal(got, want), (a, b)
        else:
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=f"span {a}:{b}")


@pytest.mark.parametrize("case", ["empty file", "truncated", "not audio", "no samples", "missing path", "nan samples"])
def test_stream_bad_files_are_one_line_naming_the_file(tmp_path, case):
    value, message = _bad_cases(tmp_path)[case]
    with pytest.raises(AsrError) as err:
        AudioStream(value, RATE, name="rec-3").read(0, RATE)
    text = str(err.value)
    assert text.startswith("rec-3") and message in text and "\n" not in text


def test_transcribe_reads_audio_only_through_this_module():
    source = (Path(__file__).resolve().parents[1] / "asr" / "transcribe.py").read_text()
    assert "soundfile" not in source and "torchaudio" not in source
