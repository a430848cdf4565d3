"""Additive noise: mixing at an exact SNR, noise sources, and ``asr add-noise`` on real audio."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.audio import load_utterance
from asr.cli import main
from asr.datadir import DataDir, Segment, read_kv, validate_data_dir, write_data_dir
from asr.errors import AsrError
from asr.lock import hold
from asr.noise import (
    add_noise,
    coloured_noise,
    corpus_noise_pool,
    mix_at_snr,
    noise_files,
    overlap_add,
    quiet_frames,
    snr_db,
    utt_rng,
)

RATE = 16000


def _src(shared_data: Path, tmp_path: Path, n: int = 2) -> tuple[Path, dict[str, Path]]:
    rec = shared_data / "fsdd" / "recordings"
    files = sorted(rec.glob("*_theo_1*.wav"))[:n] + sorted(rec.glob("*_george_1*.wav"))[:n]
    utts = {f"{f.stem.split('_')[1]}-{f.stem}": f for f in files}
    src = write_data_dir(tmp_path / "src", wav_scp={u: str(f) for u, f in utts.items()},
                         utt2spk={u: u.split("-")[0] for u in utts}, text={u: f"W {u}" for u in utts})
    return src, utts


def test_mix_at_snr_exact_and_inf_identity():
    rng = np.random.default_rng(0)
    s, n = rng.standard_normal(8000) * 0.1, rng.standard_normal(8000)
    assert mix_at_snr(s, n, math.inf) is s
    for snr in (-5.0, 0.0, 7.3, 30.0):
        assert snr_db(s, mix_at_snr(s, n, snr)) == pytest.approx(snr, abs=1e-9)
    with pytest.raises(AsrError, match="silent"):
        mix_at_snr(np.zeros(10), n[:10], 10.0)
    with pytest.raises(AsrError, match="silent"):
        mix_at_snr(s[:10], np.zeros(10), 10.0)


def test_coloured_noise_spectral_slopes():
    n = 1 << 16
    for colour, slope in (("white", 0.0), ("pink", -1.0), ("brown", -2.0)):
        x = coloured_noise(n, colour, np.random.default_rng(1))
        assert x.shape == (n,) and abs(x.mean()) < 0.05 * x.std()
        power = np.abs(np.fft.rfft(x)) ** 2
        f = np.arange(power.size)
        band = (f >= 16) & (f <= n // 4)  # fit log power on log frequency away from DC and Nyquist
        fit = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
        assert fit == pytest.approx(slope, abs=0.1), colour
    a, b = coloured_noise(100, "pink", utt_rng(3, "u1")), coloured_noise(100, "pink", utt_rng(3, "u1"))
    assert np.array_equal(a, b) and not np.array_equal(a, coloured_noise(100, "pink", utt_rng(3, "u2")))


def test_quiet_frames_and_overlap_add():
    rng = np.random.default_rng(0)
    loud = np.sin(np.arange(4000) * 0.3)
    quiet = rng.standard_normal(1000) * 0.01
    wave = np.concatenate([loud, quiet, np.zeros(2000), loud])  # 11000 samples = 27.5 frames of 400
    frames = quiet_frames(wave, 400, share=0.1)
    # ceil(0.1 * 27) = 3 frames, all from the quiet stretch (2.5 frames there), never the digital silence
    assert frames.shape == (3, 400)
    assert np.all(np.abs(frames).max(axis=1) < 0.1) and np.all((frames**2).mean(axis=1) > 0)
    out = overlap_add(np.ones((5, 400)))
    assert out.shape == (6 * 200,)
    # unrelated frames: expected power the same in the middle of a frame and across a join
    noise = overlap_add(rng.standard_normal((4000, 400)))
    per_pos = (noise[200:-200].reshape(-1, 200) ** 2).mean(axis=0)
    assert per_pos.min() > 0.9 and per_pos.max() < 1.1


def test_add_noise_snr_files_and_determinism(shared_data, tmp_path):
    src, utts = _src(shared_data, tmp_path)
    s = DataDir.load(src)
    for noise in ("corpus", "pink"):
        dst = tmp_path / noise
        argv = ["add-noise", str(src), str(dst), "--snr", "0", "20", "--noise", noise, "--seed", "3", "--no-progress"]
        assert main(argv + ["--nj", "2"]) == 0
        assert validate_data_dir(dst) == []
        d = DataDir.load(dst)
        assert d.text == {"noise-" + u: t for u, t in s.text.items()}
        assert d.utt2spk == {"noise-" + u: "noise-" + k for u, k in s.utt2spk.items()}
        assert d.spk2utt == {"noise-" + k: ["noise-" + u for u in v] for k, v in s.spk2utt.items()}
        snrs = {u: float(v) for u, v in read_kv(dst / "utt2snr").items()}
        assert sorted(snrs) == d.utts and all(0 <= v <= 20 for v in snrs.values())
        assert len({round(v, 3) for v in snrs.values()}) == len(snrs)  # drawn per utterance
        for u in utts:
            path = Path(d.wav_scp["noise-" + u])
            assert path.parent == (dst / "wav").absolute() and sf.info(str(path)).subtype == "PCM_16"
            clean, noisy = load_utterance(s, u, RATE), load_utterance(d, "noise-" + u, RATE)
            assert clean.shape == noisy.shape
            assert snr_db(clean, noisy) == pytest.approx(snrs["noise-" + u], abs=0.1)
        # same seed, one process: the same audio; another seed: other draws
        again = tmp_path / f"{noise}-again"
        assert main(["add-noise", str(src), str(again), "--snr", "0", "20", "--noise", noise, "--seed", "3",
                     "--no-progress"]) == 0
        assert read_kv(again / "utt2snr") == read_kv(dst / "utt2snr")
        for u in utts:
            a, _ = sf.read(str(dst / "wav" / f"noise-{u}.flac"), dtype="int16")
            b, _ = sf.read(str(again / "wav" / f"noise-{u}.flac"), dtype="int16")
            assert np.array_equal(a, b)
        other = add_noise(src, tmp_path / f"{noise}-seed4", (0, 20), noise, seed=4, progress=False)
        assert other.snr != {u: float(v) for u, v in read_kv(dst / "utt2snr").items()}
    pool = corpus_noise_pool(s, RATE, seed=3)
    assert pool.wave.size > 0 and np.mean(pool.wave**2) == pytest.approx(1.0, rel=0.3)


def test_add_noise_inf_is_the_source_audio(shared_data, tmp_path):
    src, utts = _src(shared_data, tmp_path)
    dst = tmp_path / "clean"
    assert main(["add-noise", str(src), str(dst), "--snr", "inf", "inf", "--no-progress"]) == 0
    s, d = DataDir.load(src), DataDir.load(dst)
    for u in utts:
        assert torch.equal(load_utterance(d, "noise-" + u, RATE), load_utterance(s, u, RATE))
    assert set(read_kv(dst / "utt2snr").values()) == {"inf"}
    # with segments: the same cuts of the same recordings
    f = next(iter(utts.values()))
    seg = write_data_dir(tmp_path / "seg", wav_scp={"r": str(f)}, utt2spk={"a": "s", "b": "s"},
                         segments={"a": Segment("r", 0.0, 0.1), "b": Segment("r", 0.1, 0.2)})
    out = add_noise(seg, tmp_path / "seg-clean", (math.inf, math.inf), progress=False).dst
    for u in ("a", "b"):
        assert torch.equal(load_utterance(DataDir.load(out), "noise-" + u, RATE),
                           load_utterance(DataDir.load(seg), u, RATE))
    # finite SNR: one file per utterance, whole-file segments, so the copy combines with its source
    noisy = add_noise(seg, tmp_path / "seg-noisy", (10, 10), "white", progress=False).dst
    assert validate_data_dir(noisy, need_text=False) == []
    assert DataDir.load(noisy).segments["noise-a"] == Segment("noise-a", 0.0, 0.1)
    assert main(["combine-data-dirs", str(tmp_path / "both"), str(seg), str(noisy)]) == 0
    both = DataDir.load(tmp_path / "both")
    assert validate_data_dir(both.path, need_text=False) == [] and len(both.utts) == 4
    assert snr_db(load_utterance(both, "a", RATE), load_utterance(both, "noise-a", RATE)) == pytest.approx(10, abs=0.1)


def test_add_noise_peak_scaling_keeps_snr(tmp_path):
    t = np.arange(RATE) / RATE
    sf.write(tmp_path / "loud.wav", 0.95 * np.sin(2 * np.pi * 440 * t), RATE, subtype="PCM_16")
    src = write_data_dir(tmp_path / "src", wav_scp={"u": str(tmp_path / "loud.wav")}, utt2spk={"u": "s"})
    r = add_noise(src, tmp_path / "dst", (0.0, 0.0), "white", seed=1, progress=False)
    y = load_utterance(DataDir.load(r.dst), "noise-u", RATE).double().numpy()
    assert np.abs(y).max() <= 1.0
    # the noise that was drawn: the SNR draw first, then the noise, from the utterance's generator
    rng = utt_rng(1, "u")
    rng.uniform(0.0, 0.0)
    n = coloured_noise(y.size, "white", rng)
    s = load_utterance(DataDir.load(src), "u", RATE).double().numpy()
    (cs, cn), *_ = np.linalg.lstsq(np.stack([s, n], axis=1), y, rcond=None)
    assert cs < 0.99  # scaled down to fit 16 bits, not clipped
    assert 10 * math.log10(np.mean((cs * s) ** 2) / np.mean((cn * n) ** 2)) == pytest.approx(0.0, abs=0.01)


def test_add_noise_lists_bad_input_and_lock(shared_data, tmp_path, caplog, capsys):
    src, utts = _src(shared_data, tmp_path, n=1)
    (tmp_path / "empty.wav").write_bytes(b"")
    wav = {**read_kv(src / "wav.scp"), "theo-zz": str(tmp_path / "empty.wav")}
    bad_src = write_data_dir(tmp_path / "bad", wav_scp=wav, utt2spk={u: u.split("-")[0] for u in wav})
    rec = shared_data / "fsdd" / "recordings"
    (tmp_path / "noise.scp").write_text(f"a {rec / '1_jackson_1.wav'}\nb {tmp_path / 'missing.wav'}\n"
                                        f"c cat {rec / '2_jackson_1.wav'} |\n")
    assert [e[0] for e in noise_files(tmp_path / "noise.scp", RATE).entries] == ["a", "c"]
    r = add_noise(bad_src, tmp_path / "out", (5, 10), str(tmp_path / "noise.scp"), progress=False)
    assert r.skipped == ["theo-zz"] and sorted(r.snr) == sorted("noise-" + u for u in utts)
    msgs = [rec.getMessage() for rec in caplog.records]
    assert any("theo-zz" in m for m in msgs) and any("missing.wav" in m for m in msgs)
    assert validate_data_dir(tmp_path / "out", need_text=False) == []
    noise_dir = tmp_path / "noises"
    noise_dir.mkdir()
    sf.write(noise_dir / "hum.flac", 0.1 * np.sin(np.arange(4000) * 0.2), 8000)
    assert add_noise(src, tmp_path / "out2", (5, 5), str(noise_dir), progress=False).snr
    capsys.readouterr()
    for snr, noise in ((["5", "inf"], "white"), (["9", "3"], "white"), (["5", "9"], str(tmp_path / "nope"))):
        assert main(["add-noise", str(src), str(tmp_path / "x"), "--snr", *snr, "--noise", noise]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("asr add-noise: error: ") for line in err)
    with hold(tmp_path / "out2", "test"), pytest.raises(AsrError, match="another"):
        add_noise(src, tmp_path / "out2", (5, 5), "white", progress=False)
