"""Features: equal to torchaudio's Kaldi port, close to librosa, deltas/stacking by hand, make-feats jobs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import kaldiio
import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF

from asr import make_feats as make_feats_mod
from asr.cli import main
from asr.config import dump
from asr.datadir import DataDir, validate_data_dir, write_data_dir
from asr.errors import AsrError
from asr.features import (
    FeatureConfig,
    FeaturePipeline,
    add_deltas,
    compute_features,
    delta_scales,
    load_feature_config,
    read_feature_config,
    stack_frames,
)

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def read_16k(path: Path) -> torch.Tensor:
    """Independent of asr.audio: soundfile + torchaudio resample, (T,) float32 at 16 kHz."""
    data, rate = sf.read(str(path), dtype="float32")
    wave = torch.from_numpy(data)
    return AF.resample(wave, rate, 16000) if rate != 16000 else wave


def fsdd_dir(shared: Path, dst: Path, per_speaker: int = 5, speakers=("george", "jackson")) -> Path:
    """A data dir of FSDD recordings (8 kHz WAV, read at 16 kHz), ``per_speaker`` files per speaker."""
    files = []
    for spk in speakers:
        files += sorted((shared / "fsdd" / "recordings").glob(f"*_{spk}_1*.wav"))[:per_speaker]
    utt = {f"{f.stem.split('_')[1]}-{f.stem}": f for f in files}
    d = write_data_dir(dst, wav_scp={u: str(f) for u, f in utt.items()},
                       utt2spk={u: u.split("-")[0] for u in utt}, text={u: "X" for u in utt})
    assert validate_data_dir(d) == []
    return d


@pytest.fixture
def so_files(shared_data) -> list[Path]:
    files = sorted((shared_data / "speechocean762" / "WAVE").glob("SPEAKER000[12]/*.flac"))[:3]
    assert files, "speechocean762 audio missing"
    return files


# ------------------------------------------------------------------ equivalence to references


def test_fbank_and_mfcc_equal_torchaudio_kaldi(so_files, shared_data):
    fsdd = sorted((shared_data / "fsdd" / "recordings").glob("*.wav"))[:2]
    for path in so_files + fsdd:
        wave = read_16k(path)
        x = (wave * 32768).unsqueeze(0)
        ref = kaldi.fbank(x, num_mel_bins=80, dither=0.0, energy_floor=0.0)
        assert torch.equal(compute_features(wave, FeatureConfig()), ref), path
        ref = kaldi.mfcc(x, num_ceps=13, num_mel_bins=23, dither=0.0, energy_floor=0.0)
        got = compute_features(wave, load_feature_config(ROOT / "conf" / "mfcc.yaml"))
        assert torch.equal(got, ref), path
        assert got.shape == (1 + (wave.numel() - 400) // 160, 13)


@pytest.mark.parametrize("overrides", [
    {"window": "hamming", "preemphasis": 0.0}, {"window": "hanning", "num_mel_bins": 40},
    {"window": "rectangular", "frame_length_ms": 20.0}, {"window": "blackman", "low_freq": 60.0, "high_freq": -400.0},
    {"sample_rate": 8000, "num_mel_bins": 23}, {"kind": "mfcc", "num_mel_bins": 40, "num_ceps": 20},
    {"kind": "mfcc", "cepstral_lifter": 0.0, "num_mel_bins": 23},
    # not on the cached fast path: torchaudio itself
    {"snip_edges": False}, {"use_energy": True}, {"kind": "mfcc", "use_energy": True, "num_mel_bins": 23},
])
def test_all_kaldi_options_equal_torchaudio(so_files, overrides):
    cfg = FeatureConfig(**overrides)
    wave = read_16k(so_files[0])
    if cfg.sample_rate != 16000:
        wave = AF.resample(wave, 16000, cfg.sample_rate)
    kw = dict(sample_frequency=cfg.sample_rate, frame_length=cfg.frame_length_ms, dither=0.0, energy_floor=0.0,
              window_type=cfg.window, preemphasis_coefficient=cfg.preemphasis, num_mel_bins=cfg.num_mel_bins,
              low_freq=cfg.low_freq, high_freq=cfg.high_freq, snip_edges=cfg.snip_edges, use_energy=cfg.use_energy)
    x = (wave * 32768).unsqueeze(0)
    if cfg.kind == "mfcc":
        ref = kaldi.mfcc(x, num_ceps=cfg.num_ceps, cepstral_lifter=cfg.cepstral_lifter, **kw)
    else:
        ref = kaldi.fbank(x, **kw)
    got = compute_features(wave, cfg)
    assert torch.equal(got, ref)
    assert got.shape[1] == cfg.raw_dim()


def test_torchaudio_backend_matches_librosa_power_mel(so_files):
    # Same definition on both sides: periodic Hann 400 in a 512 FFT, hop 160, no centring, power mel
    # with HTK mel scale and unnormalised triangles. Differences are float32 rounding, largest in the
    # log of near-silent bins: max 5e-3, mean 1e-4 in natural-log units.
    for path in so_files:
        wave = read_16k(path)
        ours = compute_features(wave, FeatureConfig(backend="torchaudio")).numpy()
        mel = librosa.feature.melspectrogram(
            y=wave.numpy().astype(np.float64) * 32768, sr=16000, n_fft=512, hop_length=160, win_length=400,
            window="hann", center=False, power=2.0, n_mels=80, fmin=20, fmax=8000, htk=True, norm=None)
        ref = np.log(np.maximum(mel, 1e-10)).T
        assert ours.shape == ref.shape
        diff = np.abs(ours - ref)
        assert diff.max() < 5e-3 and diff.mean() < 1e-4, (path, diff.max(), diff.mean())


def test_kaldi_fbank_close_to_librosa(so_files):
    # Kaldi differs by design: per-frame DC removal and mel triangles drawn on the mel axis (not Hz),
    # which matter in the lowest bins. With its symmetric Hann window, no pre-emphasis and frames
    # aligned (librosa puts the 400-sample window in the middle of its 512-sample frame: pad 56 in
    # front) the bins above the 8th agree to 0.05 in log units on average; all bins correlate > 0.98.
    wave = read_16k(so_files[0])
    ours = compute_features(wave, FeatureConfig(window="hanning", preemphasis=0.0)).numpy()
    y = np.concatenate([np.zeros(56), wave.numpy().astype(np.float64) * 32768, np.zeros(112)])
    mel = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=512, hop_length=160, win_length=400, center=False, power=2.0, n_mels=80,
        window=scipy.signal.get_window("hann", 400, fftbins=False), fmin=20, fmax=8000, htk=True, norm=None)
    ref = np.log(np.maximum(mel, 1e-10)).T
    n = min(len(ours), len(ref))
    assert abs(len(ours) - len(ref)) <= 1
    assert np.corrcoef(ours[:n].ravel(), ref[:n].ravel())[0, 1] > 0.98
    assert np.abs(ours[:n, 8:] - ref[:n, 8:]).mean() < 0.05


def test_too_short_audio_is_an_error_naming_it():
    with pytest.raises(AsrError, match="utt7: 399 samples, fewer than one 400-sample window"):
        compute_features(torch.zeros(399), FeatureConfig(), name="utt7")
    assert compute_features(torch.rand(400) - 0.5, FeatureConfig()).shape == (1, 80)


# ------------------------------------------------------------------ deltas, stacking, pipeline


def test_delta_scales_are_kaldis():
    s0, s1, s2 = delta_scales(2, 2)
    assert s0.tolist() == [1.0]
    assert torch.allclose(s1, torch.tensor([-2, -1, 0, 1, 2], dtype=torch.float64) / 10)
    # s1 convolved with itself, worked out by hand
    assert torch.allclose(s2, torch.tensor([4, 4, 1, -4, -10, -4, 1, 4, 4], dtype=torch.float64) / 100)


def test_deltas_equal_hand_computation():
    x = torch.randn(7, 3, dtype=torch.float64)
    n = x.shape[0]

    def at(t):  # Kaldi repeats the edge frames
        return x[min(max(t, 0), n - 1)]

    d1 = torch.stack([sum(k * (at(t + k) - at(t - k)) for k in (1, 2)) / 10 for t in range(n)])
    s2 = [4, 4, 1, -4, -10, -4, 1, 4, 4]
    d2 = torch.stack([sum(c * at(t + j - 4) for j, c in enumerate(s2)) / 100 for t in range(n)])
    out = add_deltas(x, order=2, window=2)
    assert out.shape == (7, 9)
    assert torch.allclose(out[:, :3], x) and torch.allclose(out[:, 3:6], d1) and torch.allclose(out[:, 6:], d2)
    # order 1 is also torchaudio's compute_deltas (replicate padding, win_length 5)
    ta = AF.compute_deltas(x.T.unsqueeze(0), win_length=5)[0].T
    assert torch.allclose(add_deltas(x, order=1)[:, 3:], ta)
    assert add_deltas(x, order=0) is x
    assert add_deltas(torch.zeros(0, 3), 2).shape == (0, 9)


def test_stack_and_subsample_by_hand():
    x = torch.arange(7.0).unsqueeze(1)  # (7, 1): frame t holds t
    assert stack_frames(x, 3, 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]
    assert stack_frames(x, 2, 3).tolist() == [[0, 1], [3, 4], [6, 6]]
    assert stack_frames(x, 1, 2).tolist() == [[0], [2], [4], [6]]
    assert stack_frames(x, 1, 1) is x
    assert stack_frames(torch.zeros(0, 4), 3, 3).shape == (0, 12)


@pytest.mark.parametrize("stack,sub,order", [(1, 1, 0), (3, 3, 0), (2, 3, 2), (4, 2, 1)])
def test_pipeline_lengths_and_dims(stack, sub, order):
    cfg = FeatureConfig(cmvn="utterance", stack=stack, subsample=sub, delta_order=order)
    pipe = FeaturePipeline(cfg)
    for n in (1, 2, 3, 4, 10, 11, 12, 100):
        y = pipe(torch.randn(n, 5))
        assert y.shape == (pipe.output_length(n), pipe.output_dim(5)) == (-(-n // sub), 5 * (order + 1) * stack)
    lens = torch.tensor([1, 7, 9, 100])
    assert pipe.output_lengths(lens).tolist() == [pipe.output_length(int(n)) for n in lens]


def test_pipeline_order_is_cmvn_deltas_stack():
    x = torch.randn(20, 4) * 3 + 5
    stats = np.zeros((2, 5))
    stats[0, :4], stats[0, 4] = x.double().sum(0).numpy(), 20
    stats[1, :4] = (x.double() ** 2).sum(0).numpy()
    cfg = FeatureConfig(cmvn="global", delta_order=1, stack=2, subsample=2)
    y = FeaturePipeline(cfg, stats)(x.numpy())
    norm = (x - x.mean(0)) / x.std(0, unbiased=False)
    ref = stack_frames(add_deltas(norm, 1), 2, 2)
    assert torch.allclose(y, ref, atol=1e-5)
    assert FeaturePipeline(FeatureConfig(cmvn="none"))(x).equal(x)


def test_pipeline_needs_stats_for_global_and_speaker():
    for mode in ("global", "speaker"):
        with pytest.raises(AsrError, match="compute-cmvn"):
            FeaturePipeline(FeatureConfig(cmvn=mode), None)


def test_configs_load_and_round_trip(tmp_path):
    for name in ("fbank.yaml", "mfcc.yaml"):
        cfg = load_feature_config(ROOT / "conf" / name)
        dump(cfg, tmp_path / "feats.yaml")
        assert read_feature_config(tmp_path) == cfg
    assert load_feature_config(ROOT / "conf" / "fbank.yaml") == FeatureConfig()
    assert load_feature_config(None, ["stack=3", "subsample=3"]).stack == 3
    with pytest.raises(AsrError, match="window"):
        load_feature_config(None, ["window=triangle"])
    with pytest.raises(AsrError, match="unknown key"):
        load_feature_config(None, ["num_bins=40"])


# ------------------------------------------------------------------ make-feats on real data


def read_scp(d: Path) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in kaldiio.load_scp(str(d / "feats.scp")).items()}


def test_make_feats_ark_scp_round_trip(shared_data, tmp_path):
    d = fsdd_dir(shared_data, tmp_path / "d", per_speaker=3)
    assert main(["make-feats", str(d), "--no-progress"]) == 0
    assert validate_data_dir(d, need_feats=True) == []
    feats = read_scp(d)
    data = DataDir.load(d)
    assert set(feats) == set(data.utts)
    for utt, mat in feats.items():
        ref = compute_features(read_16k(Path(data.wav_scp[utt])), FeatureConfig())
        assert mat.dtype == np.float32 and np.array_equal(mat, ref.numpy()), utt
        assert data.utt2num_frames[utt] == mat.shape[0]
    assert read_feature_config(d) == FeatureConfig()
    assert not list(d.glob(".*tmp"))


def test_make_feats_nj2_equals_nj1(shared_data, tmp_path):
    d1 = fsdd_dir(shared_data, tmp_path / "a")
    d2 = fsdd_dir(shared_data, tmp_path / "b")
    conf = str(ROOT / "conf" / "mfcc.yaml")
    assert main(["make-feats", str(d1), "--conf", conf, "--no-progress"]) == 0
    assert main(["make-feats", str(d2), "--conf", conf, "--nj", "2", "--no-progress"]) == 0
    assert (d2 / "split2" / "2" / "utt2spk").is_file()
    f1, f2 = read_scp(d1), read_scp(d2)
    assert list(f1) == list(f2) and len(f1) == 10
    assert all(np.array_equal(f1[u], f2[u]) for u in f1)
    assert (d1 / "feats.ark").read_bytes() == (d2 / "feats.ark").read_bytes()
    assert (d1 / "utt2num_frames").read_text() == (d2 / "utt2num_frames").read_text()
    assert not list(d2.glob(".*tmp"))


def test_bad_utterances_are_skipped_and_named(shared_data, tmp_path, caplog, capsys):
    d = fsdd_dir(shared_data, tmp_path / "d", per_speaker=2)
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00junk" * 10)
    sf.write(tmp_path / "short.wav", np.zeros(100, dtype=np.float32), 16000)
    data = DataDir.load(d)
    wav, u2s = dict(data.wav_scp), dict(data.utt2spk)
    for name in ("empty", "corrupt", "short"):
        wav[f"zz-{name}"] = str(tmp_path / f"{name}.wav")
        u2s[f"zz-{name}"] = "zz"
    write_data_dir(d, wav_scp=wav, utt2spk=u2s, text={u: "X" for u in u2s})
    with caplog.at_level(logging.WARNING):
        assert main(["make-feats", str(d), "--nj", "2", "--no-progress"]) == 0
    feats = read_scp(d)
    assert set(feats) == set(data.utts)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in ("empty", "corrupt", "short"):
        assert sum(f"zz-{name}" in m for m in warned) == 1, warned
    out = capsys.readouterr().out
    assert "wrote 4 utterances" in out and "skipped 3 (zz-corrupt, zz-empty, zz-short)" in out
    # feats.scp now lacks three utterances: a rerun still works (make-feats replaces its own outputs)
    assert main(["make-feats", str(d), "--no-progress"]) == 0


def test_inconsistent_input_dir_is_refused(shared_data, tmp_path, capsys):
    d = fsdd_dir(shared_data, tmp_path / "d", per_speaker=2)
    wav = DataDir.load(d).wav_scp
    (d / "wav.scp").write_text("".join(f"{u} {p}\n" for u, p in list(wav.items())[1:]))
    assert main(["make-feats", str(d), "--no-progress"]) == 1
    assert "wav.scp: 1 utterance(s) of utt2spk missing" in capsys.readouterr().err
    assert not (d / "feats.scp").exists()


def test_nothing_written_is_an_error_and_keeps_old_outputs(shared_data, tmp_path, capsys):
    d = fsdd_dir(shared_data, tmp_path / "d", per_speaker=1)
    assert main(["make-feats", str(d), "--no-progress"]) == 0
    before = {n: (d / n).read_bytes() for n in ("feats.scp", "feats.ark", "utt2num_frames", "feats.yaml")}
    data = DataDir.load(d)
    (tmp_path / "empty.wav").write_bytes(b"")
    write_data_dir(d, wav_scp={u: str(tmp_path / "empty.wav") for u in data.utts}, utt2spk=data.utt2spk)
    assert main(["make-feats", str(d), "--no-progress"]) == 1
    assert "no utterance could be processed" in capsys.readouterr().err
    assert before == {n: (d / n).read_bytes() for n in before}


def test_crash_mid_run_leaves_old_features_intact(shared_data, tmp_path, monkeypatch):
    d = fsdd_dir(shared_data, tmp_path / "d", per_speaker=3)
    assert main(["make-feats", str(d), "--no-progress"]) == 0
    old = read_scp(d)
    calls = []

    class Boom(Exception):
        pass

    def dies_on_third(wave, cfg, name="u"):
        calls.append(name)
        if len(calls) == 3:
            raise Boom("killed")
        return compute_features(wave, cfg, name)

    monkeypatch.setattr(make_feats_mod, "compute_features", dies_on_third)
    with pytest.raises(Boom):
        make_feats_mod.make_feats(d, FeatureConfig(num_mel_bins=40), progress=False)
    new = read_scp(d)
    assert list(new) == list(old) and all(np.array_equal(old[u], new[u]) for u in old)
    assert read_feature_config(d).num_mel_bins == 80
    assert sorted(os.listdir(d)) == sorted(["feats.ark", "feats.scp", "feats.yaml", "spk2utt", "text",
                                            "utt2num_frames", "utt2spk", "wav.scp"])


def test_precomputed_features_are_left_as_they_are(tmp_path, capsys):
    d = tmp_path / "pre"
    utts = {"a": "s", "b": "s"}
    write_data_dir(d, utt2spk=utts, text={"a": "X", "b": "Y"})
    with kaldiio.WriteHelper(f"ark,scp:{d / 'feats.ark'},{d / 'feats.scp'}") as w:
        for u in utts:
            w(u, np.random.rand(20, 13).astype(np.float32))
    before = (d / "feats.scp").read_bytes()
    assert main(["make-feats", str(d), "--no-progress"]) == 0
    assert "precomputed" in capsys.readouterr().out
    assert (d / "feats.scp").read_bytes() == before
    cfg = read_feature_config(d)
    assert cfg.kind == "precomputed" and cfg.raw_dim() is None
    y = FeaturePipeline(FeatureConfig(kind="precomputed", cmvn="utterance", delta_order=2))(read_scp(d)["a"])
    assert y.shape == (20, 39)


def test_make_feats_refuses_a_dir_another_run_is_writing(tmp_path, capsys):
    from asr.lock import hold

    sf.write(tmp_path / "a.wav", (0.1 * np.sin(np.arange(8000) * 0.05)).astype(np.float32), 16000)
    d = write_data_dir(tmp_path / "d", wav_scp={"a": str(tmp_path / "a.wav")}, utt2spk={"a": "s"}, text={"a": "X"})
    with hold(d, "asr make-feats"):  # a separate open of .lock: refused like another process would be
        assert main(["make-feats", str(d), "--no-progress"]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(err) == 1
        assert err[0].startswith(f"asr make-feats: error: {d}: another 'asr make-feats' (pid {os.getpid()}) is "
                                 "writing here")
        assert not (d / "feats.scp").exists() and not list(d.glob(".feats.ark*"))
    assert main(["make-feats", str(d), "--no-progress"]) == 0
    assert sorted(read_scp(d)) == ["a"] and not (d / ".lock").exists()
