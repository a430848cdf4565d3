"""Feature kind ``whisper``: the frozen Whisper base encoder (asr/whisper_encoder.py) as acoustic features."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED_DATA
from trainutil import DIGITS, lang_dir

from asr import whisper_encoder
from asr.audio import AudioSource
from asr.cli import main
from asr.cmvn import compute_cmvn
from asr.config import apply_overrides, from_dict, read_yaml
from asr.datadir import read_kv, write_data_dir
from asr.decode import log_probs_of
from asr.errors import AsrError
from asr.features import FeatureConfig, compute_features
from asr.make_feats import make_feats
from asr.modeldir import ModelDir
from asr.train import TrainConfig, load_train_config, train
from asr.transcribe import Transcriber

needs_extra = pytest.mark.skipif(not whisper_encoder.available(), reason="the pretrained extra is not installed")
WHISPER = dict(kind="whisper", sample_rate=16000, frame_length_ms=25.0, frame_shift_ms=20.0)


def test_log_mel_is_whispers_front_end() -> None:
    # Whisper's recipe, written out with librosa: |STFT|^2 of a centred 400-point Hann window every 160
    # samples, last frame dropped, Slaney mel, log10 floored at 1e-10 and at 8 below the max, (x + 4) / 4.
    import librosa

    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    power = np.abs(librosa.stft(y, n_fft=400, hop_length=160, window="hann", center=True, pad_mode="reflect")) ** 2
    mel = np.log10(np.maximum(librosa.filters.mel(sr=16000, n_fft=400, n_mels=80) @ power[:, :-1], 1e-10))
    want = (np.maximum(mel, mel.max() - 8.0) + 4.0) / 4.0
    got = whisper_encoder.log_mel(torch.from_numpy(y))
    assert got.shape == (80, 8000 // 160)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-4)


def test_whisper_kind_fixes_rate_and_frames() -> None:
    assert FeatureConfig(**WHISPER).raw_dim() == 512
    for wrong in (dict(sample_rate=8000), dict(frame_shift_ms=10.0)):
        with pytest.raises(ValueError, match="kind: whisper needs sample_rate: 16000"):
            FeatureConfig(**{**WHISPER, **wrong})


def test_without_the_extra_it_is_one_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(whisper_encoder, "available", lambda: False)
    whisper_encoder._model.cache_clear()
    try:
        with pytest.raises(AsrError, match=r"pretrained extra: pip install -e '\.\[pretrained\]'"):
            compute_features(torch.zeros(16000), FeatureConfig(**WHISPER), "a.wav")
    finally:
        whisper_encoder._model.cache_clear()


@needs_extra
@pytest.mark.parametrize("samples", [400, 481, 4768, 16000 * 30 + 160, 16000 * 31])
def test_frame_count_formula_matches_the_encoder(samples: int) -> None:
    # 2 mel frames -> 1 output frame; 30 s pieces (3000 mel frames -> 1500 each) past the positional table.
    wave = 0.1 * torch.randn(samples, generator=torch.Generator().manual_seed(1))
    feats = compute_features(wave, FeatureConfig(**WHISPER))
    assert feats.shape == (whisper_encoder.output_frames(samples), 512) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()


@needs_extra
def test_the_encoder_tells_digits_apart_that_it_never_trained_on() -> None:
    # A pretrained encoder's frames carry the word: a new speaker's digit is nearest (mean frame, cosine) to
    # the mean of the same digit said by four other speakers, for most of nicolas's 20 digits (18 here).
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")

    def mean_frame(d: int, spk: str, take: int) -> torch.Tensor:
        src = AudioSource.open(str(SHARED_DATA / "fsdd" / "recordings" / f"{d}_{spk}_{take}.wav"), 16000)
        f = compute_features(src.read(0, src.num_samples), FeatureConfig(**WHISPER))
        return torch.nn.functional.normalize(f.mean(0), dim=0)

    others = ("george", "jackson", "theo", "yweweler")
    ref = torch.stack([torch.stack([mean_frame(d, s, 3) for s in others]).mean(0) for d in range(10)])
    new = torch.stack([mean_frame(d, "nicolas", take) for take in (3, 8) for d in range(10)])
    right = int(((new @ ref.T).argmax(1) == torch.arange(10).repeat(2)).sum())
    assert right >= 16, right


@needs_extra
def test_train_then_decode_and_transcribe_compute_the_same_whisper_features(tmp_path) -> None:
    # The model dir says kind: whisper; transcribe of the wav files gives decode's posteriors exactly.
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    rec = SHARED_DATA / "fsdd" / "recordings"
    dirs = {}
    for name, spk, idx in (("train", "george", [5, 6]), ("test", "theo", [7])):
        utts = {f"{spk}-{d}_{i}": (str(rec / f"{d}_{spk}_{i}.wav"), DIGITS[d]) for d in (1, 2, 3) for i in idx}
        d = tmp_path / name
        write_data_dir(d, wav_scp={u: w for u, (w, _) in utts.items()}, text={u: t for u, (_, t) in utts.items()},
                       utt2spk={u: spk for u in utts})
        make_feats(d, FeatureConfig(**WHISPER, cmvn="global"), progress=False)
        compute_cmvn(d)
        dirs[name] = d
    assert read_yaml(dirs["train"] / "feats.yaml")["kind"] == "whisper"
    lang = lang_dir(dirs["train"], tmp_path / "lang")
    # A conv front-end would read the 512 encoder channels as mel bins: refused before anything trains.
    conv = from_dict(TrainConfig, apply_overrides({}, ["model.frontend=conv2d"]))
    with pytest.raises(AsrError, match="frontend conv2d reads mel bins"):
        train(dirs["train"], dirs["train"], lang, tmp_path / "exp_conv", conv)
    cfg = from_dict(TrainConfig, apply_overrides({}, ["model.num_layers=1", "model.hidden=16", "max_epochs=1",
                                                      "schedule.name=none", "average=last", "average_n=1"]))
    train(dirs["train"], dirs["train"], lang, tmp_path / "exp", cfg)
    md = ModelDir.load(tmp_path / "exp")
    assert md.feature_config.kind == "whisper"
    names, lp, lens, failed = next(log_probs_of(md, dirs["test"], None, batch_size=100))
    assert failed == 0 and len(names) == 3
    tr = Transcriber(tmp_path / "exp", progress=False)
    wavs = read_kv(dirs["test"] / "wav.scp")
    for i, u in enumerate(names):
        got = tr.posteriors(AudioSource.open(wavs[u], 16000))
        torch.testing.assert_close(got, lp[i, : lens[i]], atol=1e-4, rtol=1e-4)
    assert main(["transcribe", str(tmp_path / "exp"), wavs[names[0]], "-o", str(tmp_path / "hyp")]) == 0


@needs_extra
def test_a_short_utterance_is_encoded_as_if_followed_by_silence(monkeypatch) -> None:
    # A 0.3 s digit is padded to 3 s with the log-mel of silence: its frames are those of the same audio
    # followed by 3 s of digital silence (up to the STFT frames at the join), and far from encoding it alone.
    if not (SHARED_DATA / "fsdd").is_dir():
        pytest.skip(f"FSDD not found under {SHARED_DATA}")
    src = AudioSource.open(str(SHARED_DATA / "fsdd" / "recordings" / "3_theo_3.wav"), 16000)
    wave = src.read(0, src.num_samples)
    got = whisper_encoder.encode(wave)
    silence = whisper_encoder.encode(torch.cat([wave, torch.zeros(48000)]))[: got.shape[0]]
    cos = torch.nn.functional.cosine_similarity(got, silence)
    assert cos.min() > 0.85 and cos.mean() > 0.95, cos
    monkeypatch.setattr(whisper_encoder, "MIN_MEL_FRAMES", 0)
    alone = torch.nn.functional.cosine_similarity(got, whisper_encoder.encode(wave))
    assert alone.mean() < 0.8, alone


def test_feats_whisper_picks_both_configs_in_a_model_dir_of_its_own(recipe_make) -> None:
    """FEATS=whisper (the default): make-feats reads conf/whisper.yaml, training merges conf/train_whisper.yaml
    over conf/train.yaml (FSDD's conv front-end off, the rest kept); FEATS=fbank gets a model dir of its own."""
    fsdd = ROOT / "egs" / "fsdd" / "conf"
    def commands(*args: str) -> dict[str, str]:  # the dry run's make-feats and train lines
        lines = recipe_make("fsdd", "-n", "FORCE=all", *args, "train").splitlines()
        return {c: next(ln for ln in lines if f"asr {c} " in ln) for c in ("make-feats", "train")}

    whisper, fbank = commands(), commands("FEATS=fbank")  # whisper is the default
    assert f"--conf {fsdd}/whisper.yaml " in whisper["make-feats"]
    assert f"--conf {fsdd}/fbank.yaml " in fbank["make-feats"]
    assert f"exp/char_official --conf {fsdd}/train.yaml --conf {fsdd}/train_whisper.yaml " in whisper["train"]
    assert f"exp/char_official-fbank --conf {fsdd}/train.yaml --set" in fbank["train"]
    assert commands("FEATS=whisper") == whisper
    cfg = load_train_config([fsdd / "train.yaml", fsdd / "train_whisper.yaml"])
    assert cfg.model.frontend == "none" and cfg.model.dropout == 0.3 and cfg.average_n == 10
    # speechocean762 reads them by default; FEATS=fbank is the log-mel recipe, in a model dir of its own.
    assert recipe_make("speechocean762", "print-FEATS_CONF").strip().endswith("conf/whisper.yaml")
    assert recipe_make("speechocean762", "print-TAG").strip() == "char_train"
    assert recipe_make("speechocean762", "FEATS=fbank", "print-TAG").strip() == "char_train-fbank"
    assert recipe_make("speechocean762", "FEATS=fbank", "print-TRAIN_CONF").split()[-1].endswith("conf/train.yaml")
    so762 = recipe_make("speechocean762", "print-TRAIN_CONF").split()
    assert [Path(f).name for f in so762] == ["train.yaml", "train_whisper.yaml"]
    so_conf = ROOT / "egs" / "speechocean762" / "conf"
    so_cfg = load_train_config([so_conf / "train.yaml", so_conf / "train_whisper.yaml"])
    assert so_cfg.max_epochs == 12 and so_cfg.average_metric == "dev_cer" and so_cfg.specaug  # the rest kept
    bad = subprocess.run(["make", "-s", "-C", str(ROOT / "egs" / "fsdd"), "FEATS=whsper", "print-TAG"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "FEATS=whsper: expected one of whisper fbank" in bad.stderr
