"""SpecAugment masks and warp on (T, D) and padded batches; VTLP; speed perturbation of audio and of features."""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import pytest
import soundfile as sf
import torch
from kaldiio.matio import write_array

from asr.augment import augment_frames
from asr.cli import main
from asr.config import dump
from asr.datadir import DataDir, Segment, read_kv, validate_data_dir, write_data_dir, write_kv
from asr.errors import AsrError
from asr.features import FeatureConfig
from asr.lock import hold
from asr.perturb_feats import perturb_feats_speed, stretch_frames
from asr.perturb_speed import perturb_wave, speed_prefix
from asr.specaugment import SpecAugConfig, spec_augment, time_warp
from asr.vtlp import VtlpConfig, freq_warp, vtlp_first_bin, warp_sources

ROOT = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_masks_are_bands_of_fill_within_limits():
    x = torch.randn(200, 40) + 10  # no natural zeros
    x0 = x.clone()
    cfg = SpecAugConfig(freq_masks=2, freq_width=5, time_masks=2, time_width=30, time_width_ratio=0.1)
    for seed in range(20):
        y = spec_augment(x, cfg=cfg, generator=gen(seed))
        assert y.shape == x.shape
        zero = y == 0
        full_cols = zero.all(0)  # frequency masks span all frames
        full_rows = zero.all(1)  # time masks span all bins
        assert int(full_cols.sum()) <= 2 * 5
        assert int(full_rows.sum()) <= 2 * 20  # capped by ratio: 0.1 * 200
        # every zero is explained by a full row or a full column
        assert torch.equal(zero, full_cols[None, :] | full_rows[:, None])
        kept = ~zero
        assert torch.equal(y[kept], x[kept])
    assert torch.equal(x, x0)  # input untouched (no in-place)


def test_same_seed_same_result_and_no_op_config():
    x = torch.randn(50, 8)
    assert torch.equal(spec_augment(x, generator=gen(3)), spec_augment(x, generator=gen(3)))
    off = SpecAugConfig(freq_masks=0, time_masks=0)
    assert torch.equal(spec_augment(x, cfg=off), x)


def test_batch_padding_is_never_touched():
    x = torch.randn(3, 60, 10) + 5
    lengths = torch.tensor([60, 30, 7])
    cfg = SpecAugConfig(freq_width=4, time_width=20, time_width_ratio=0.5, time_warp=5)
    for seed in range(10):
        y = spec_augment(x, lengths, cfg, generator=gen(seed))
        for b, n in enumerate(lengths.tolist()):
            assert torch.equal(y[b, n:], x[b, n:])
        # time masks stay inside each utterance's own length
        for b, n in enumerate(lengths.tolist()):
            rows = (y[b] == 0).all(1)
            assert not rows[n:].any()


def test_time_warp_keeps_shape_and_endpoints():
    x = torch.linspace(0, 1, 100).unsqueeze(1).repeat(1, 3)
    for seed in range(10):
        y = time_warp(x, 10, gen(seed))
        assert y.shape == x.shape
        assert torch.all(y[1:] >= y[:-1] - 1e-6)  # a ramp stays monotonic
    assert torch.equal(time_warp(x[:15], 10), x[:15])  # too short to warp


def test_config_validation_and_yaml():
    with pytest.raises(ValueError):
        SpecAugConfig(time_width_ratio=2.0)
    from asr.train import load_train_config

    # conf/specaug.yaml is a training-config fragment that asr train merges after the main config.
    cfg = load_train_config([ROOT / "conf" / "blstm_debug.yaml", ROOT / "conf" / "specaug.yaml"])
    assert cfg.specaug and cfg.specaug_opts.freq_masks == 2 and cfg.specaug_opts.time_width == 40
    assert cfg.model == load_train_config(ROOT / "conf" / "blstm_debug.yaml").model


def test_perturb_wave_changes_duration():
    wave = torch.sin(torch.arange(16000) * 0.05)
    assert abs(perturb_wave(wave, 0.9, 16000).numel() - 16000 / 0.9) <= 1
    assert abs(perturb_wave(wave, 1.1, 16000).numel() - 16000 / 1.1) <= 1
    assert perturb_wave(wave, 1.0, 16000) is wave
    assert speed_prefix(0.9) == "sp0.9-" and speed_prefix(1) == "sp1.0-"


def test_perturb_speed_data_dir(shared_data, tmp_path):
    files = sorted((shared_data / "fsdd" / "recordings").glob("*_theo_1*.wav"))[:3]
    utts = {f"theo-{f.stem}": f for f in files}
    src = write_data_dir(tmp_path / "src", wav_scp={u: str(f) for u, f in utts.items()},
                         utt2spk={u: "theo" for u in utts}, text={u: f"W{i}" for i, u in enumerate(utts)})
    dst = tmp_path / "sp0.9"
    assert main(["perturb-speed", str(src), str(dst), "--factor", "0.9", "--nj", "2", "--no-progress"]) == 0
    assert validate_data_dir(dst) == []
    d = DataDir.load(dst)
    assert d.utts == sorted(f"sp0.9-{u}" for u in utts)
    assert set(d.utt2spk.values()) == {"sp0.9-theo"}
    assert d.text["sp0.9-" + next(iter(utts))] == "W0"
    for u, f in utts.items():
        out = Path(d.wav_scp["sp0.9-" + u])
        assert out.parent == (dst / "wav").absolute() and out.suffix == ".flac"
        info, orig = sf.info(str(out)), sf.info(str(f))
        assert info.samplerate == 16000
        assert abs(info.frames - orig.frames * 2 / 0.9) <= 2
    # factor 1.0: the same audio entries under new ids, nothing re-encoded
    assert main(["perturb-speed", str(src), str(tmp_path / "sp1"), "--factor", "1.0", "--no-progress"]) == 0
    d1 = DataDir.load(tmp_path / "sp1")
    assert sorted(d1.wav_scp.values()) == sorted(str(f) for f in files)
    assert not (tmp_path / "sp1" / "wav").exists()
    # the perturbed dir goes through make-feats
    assert main(["make-feats", str(dst), "--no-progress"]) == 0


def test_perturb_speed_segments_and_bad_recordings(shared_data, tmp_path, caplog):
    f = sorted((shared_data / "fsdd" / "recordings").glob("*_theo_1*.wav"))[0]
    (tmp_path / "empty.wav").write_bytes(b"")
    src = write_data_dir(tmp_path / "src", wav_scp={"r1": str(f), "r2": str(tmp_path / "empty.wav")},
                         utt2spk={"u1": "s", "u2": "s", "u3": "s"}, text={"u1": "A", "u2": "B", "u3": "C"},
                         segments={"u1": Segment("r1", 0.0, 0.1), "u2": Segment("r1", 0.1, 0.2),
                                   "u3": Segment("r2", 0.0, 0.5)})
    dst = tmp_path / "sp1.1"
    assert main(["perturb-speed", str(src), str(dst), "--factor", "1.1", "--no-progress"]) == 0
    d = DataDir.load(dst)
    assert d.utts == ["sp1.1-u1", "sp1.1-u2"]
    assert d.segments["sp1.1-u2"] == Segment("sp1.1-r1", pytest.approx(0.1 / 1.1, abs=1e-3),
                                             pytest.approx(0.2 / 1.1, abs=1e-3))
    assert any("r2" in r.getMessage() for r in caplog.records)
    with pytest.raises(AsrError, match="factor"):
        from asr.perturb_speed import perturb_speed

        perturb_speed(src, tmp_path / "x", 3.0)


# ---------------------------------------------------------------- VTLP


def test_freq_warp_identity_and_ramp_by_hand():
    x = torch.randn(30, 40)
    assert torch.equal(freq_warp(x, 1.0), x)
    vtlp_off = VtlpConfig(enabled=True, low=1.0, high=1.0)
    assert torch.equal(augment_frames(x, None, vtlp_off, gen(0)), x)
    assert torch.equal(augment_frames(x, None, None), x)
    # A ramp along the bin axis turns into the positions read from (linear interpolation is exact on it).
    # 11 bins, top 10, knee 0.8 * 10 = 8. alpha 1.25: j / 1.25 up to bin 8, then the line to (10, 10)
    # from (6.4, 8): 10 - 1.8 * (10 - j). alpha 0.8: j / 0.8 up to 6.4, then 10 - (2 / 3.6) * (10 - j).
    ramp = torch.arange(11.0).repeat(4, 1)
    up = [0, 0.8, 1.6, 2.4, 3.2, 4.0, 4.8, 5.6, 6.4, 8.2, 10]
    down = [0, 1.25, 2.5, 3.75, 5, 6.25, 7.5, 10 - 6 / 3.6, 10 - 4 / 3.6, 10 - 2 / 3.6, 10]
    for alpha, want in ((1.25, up), (0.8, down)):
        y = freq_warp(ramp, alpha, boundary=0.8)
        assert torch.allclose(y, torch.tensor(want).repeat(4, 1), atol=1e-5)
        assert torch.allclose(warp_sources(11, alpha, 0.8), torch.tensor(want, dtype=torch.float64), atol=1e-12)


def test_freq_warp_moves_content_keeps_ends_energy_and_batch():
    peak = torch.zeros(1, 41)
    peak[0, 20] = 1.0
    assert int(freq_warp(peak, 1.1).argmax()) == 22  # alpha > 1 moves formants up: bin 20 -> 22
    assert int(freq_warp(peak, 0.9).argmax()) == 18
    x = torch.randn(3, 25, 41)
    for alpha in (0.85, 0.93, 1.07, 1.2):
        y = freq_warp(x, alpha)
        assert torch.equal(y[..., 0], x[..., 0]) and torch.allclose(y[..., -1], x[..., -1])
        assert torch.allclose(y[1], freq_warp(x[1], alpha))  # (B, T, D) = each (T, D)
        # log energy first (use_energy): kept as it is, the 40 bins after it warped on their own
        e = freq_warp(x[0], alpha, first_bin=1)
        assert torch.equal(e[:, 0], x[0, :, 0]) and torch.allclose(e[:, 1:], freq_warp(x[0, :, 1:], alpha))


def test_augment_frames_draws_from_torch_rng_vtlp_then_specaug():
    x = torch.randn(80, 40) + 5
    spec, vtlp = SpecAugConfig(freq_width=5, time_width=10), VtlpConfig(enabled=True, low=0.9, high=1.1)
    torch.manual_seed(7)
    a = augment_frames(x, spec, vtlp)
    torch.manual_seed(7)
    assert torch.equal(augment_frames(x, spec, vtlp), a)  # what a resumed run replays
    g = gen(5)
    alpha = 0.9 + 0.2 * float(torch.rand((), generator=g, dtype=torch.float64))
    want = spec_augment(freq_warp(x, alpha, 0.8), cfg=spec, generator=g)
    assert 0.9 <= alpha <= 1.1 and torch.equal(augment_frames(x, spec, vtlp, gen(5)), want)
    assert not torch.equal(augment_frames(x, None, vtlp, gen(5)), x)
    assert torch.equal(augment_frames(x, None, VtlpConfig(enabled=False), gen(5)), x)
    # SpecAugment alone draws exactly what spec_augment does: switching train.py's hook over changes nothing
    torch.manual_seed(9)
    a = augment_frames(x, spec, None)
    torch.manual_seed(9)
    assert torch.equal(a, spec_augment(x, cfg=spec))


def test_vtlp_only_for_fbank_and_config_checks():
    assert vtlp_first_bin(FeatureConfig(kind="fbank")) == 0
    assert vtlp_first_bin(FeatureConfig(kind="fbank", use_energy=True)) == 1
    for kind in ("mfcc", "precomputed"):
        with pytest.raises(AsrError, match="fbank"):
            vtlp_first_bin(FeatureConfig(kind=kind))
    with pytest.raises(ValueError):
        VtlpConfig(low=1.1, high=0.9)
    with pytest.raises(ValueError):
        VtlpConfig(boundary_ratio=1.0)
    with pytest.raises(ValueError):
        freq_warp(torch.zeros(2, 5), 0.0)


# ---------------------------------------------------------------- speed perturbation of stored features


def test_stretch_frames_by_hand():
    ramp = np.arange(10, dtype=np.float32)[:, None].repeat(3, 1)  # (10, 3), frame t holds t
    # 10 -> 5 frames: output frame i reads (i + 0.5) * 2 - 0.5
    assert np.allclose(stretch_frames(ramp, 2.0)[:, 0], [0.5, 2.5, 4.5, 6.5, 8.5])
    slow = stretch_frames(ramp, 0.5)[:, 0]  # 20 frames reading (i + 0.5) / 2 - 0.5, clamped to [0, 9]
    assert slow.shape == (20,) and slow[0] == 0 and slow[-1] == 9 and np.allclose(slow[1:3], [0.25, 0.75])
    for n in (1, 7, 100, 313):
        for f in (0.9, 1.1, 1.5):
            x = np.random.default_rng(n).standard_normal((n, 4))
            y = stretch_frames(x, f)
            assert y.shape == (max(1, round(n / f)), 4) and y.dtype == x.dtype
    same = stretch_frames(ramp, 1.0)
    assert np.array_equal(same, ramp) and same is not ramp and same.dtype == np.float32


def _feats_dir(path: Path, mats: dict[str, np.ndarray]) -> Path:
    ark = (path / "feats.ark").absolute()
    path.mkdir(parents=True)
    scp = {}
    with open(ark, "wb") as f:
        for utt, m in mats.items():
            f.write(f"{utt} ".encode())
            scp[utt] = f"{ark}:{f.tell()}"
            write_array(f, m)
    write_data_dir(path, feats_scp=scp, utt2spk={u: u.split("-")[0] for u in mats},
                   text={u: f"T {u}" for u in mats}, utt2num_frames={u: len(m) for u, m in mats.items()})
    dump(FeatureConfig(kind="precomputed", num_ceps=13, delta_order=2), path / "feats.yaml")
    (path / "cmvn.scp").write_text("stale\n")
    return path


def test_perturb_feats_speed_data_dir(tmp_path, caplog, capsys):
    rng = np.random.default_rng(0)
    mats = {f"{s}-u{i}": rng.standard_normal((n, 13)).astype(np.float32)
            for i, (s, n) in enumerate([("a", 50), ("a", 77), ("b", 31)])}
    src = _feats_dir(tmp_path / "src", mats)
    for factor, pre in (("1.0", "sp1.0-"), ("0.9", "sp0.9-"), ("1.1", "sp1.1-")):
        dst = tmp_path / f"sp{factor}"
        assert main(["perturb-feats-speed", str(src), str(dst), "--factor", factor, "--no-progress"]) == 0
        assert validate_data_dir(dst, need_feats=True) == []
        d = DataDir.load(dst)
        assert d.utts == sorted(pre + u for u in mats) and d.wav_scp is None
        assert d.text == {pre + u: f"T {u}" for u in mats}
        assert d.utt2spk == {pre + u: pre + u.split("-")[0] for u in mats}
        assert d.spk2utt == {pre + "a": [pre + "a-u0", pre + "a-u1"], pre + "b": [pre + "b-u2"]}
        assert (dst / "feats.yaml").read_text() == (src / "feats.yaml").read_text()
        assert not (dst / "cmvn.scp").exists()
        for u, m in mats.items():
            out = kaldiio.load_mat(d.feats_scp[pre + u])
            assert d.utt2num_frames[pre + u] == out.shape[0] == round(len(m) / float(factor))
            if factor == "1.0":
                assert np.array_equal(out, m) and out.dtype == m.dtype
    # the copies combine with the source (same feats.yaml, unique ids)
    assert main(["combine-data-dirs", str(tmp_path / "all"), str(src), str(tmp_path / "sp0.9"),
                 str(tmp_path / "sp1.1")]) == 0
    assert len(DataDir.load(tmp_path / "all").utts) == 9
    # an unreadable entry is one line, the rest goes on
    write_kv(src / "feats.scp", {**read_kv(src / "feats.scp"), "a-u1": str(tmp_path / "nonexistent.ark:0")})
    dst, bad = perturb_feats_speed(src, tmp_path / "spbad", 0.9, progress=False)
    assert bad == ["a-u1"] and any("a-u1" in r.getMessage() for r in caplog.records)
    assert DataDir.load(dst).utts == ["sp0.9-a-u0", "sp0.9-b-u2"]
    capsys.readouterr()
    assert main(["perturb-feats-speed", str(src), str(tmp_path / "x"), "--factor", "2.5"]) == 1
    assert main(["perturb-feats-speed", str(tmp_path / "sp0.9"), str(tmp_path / "sp0.9"), "--factor", "0.9"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "factor 2.5" in err[0] and "differ" in err[1]
    with hold(tmp_path / "sp1.1", "test"), pytest.raises(AsrError, match="another"):
        perturb_feats_speed(src, tmp_path / "sp1.1", 1.1, progress=False)
