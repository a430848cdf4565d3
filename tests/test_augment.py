"""SpecAugment masks and warp on (T, D) and padded batches; speed perturbation of a real data dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf
import torch

from asr.augment import SpecAugConfig, perturb_wave, spec_augment, speed_prefix, time_warp
from asr.cli import main
from asr.datadir import DataDir, Segment, validate_data_dir, write_data_dir
from asr.errors import AsrError

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
        from asr.augment import perturb_speed

        perturb_speed(src, tmp_path / "x", 3.0)
