"""Convolutional front-end: length formula, batch == single, old configs, overfitting, chunked transcription."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from asr.checkpoint import model_args, model_from_checkpoint, save_checkpoint
from asr.config import dump, from_dict
from asr.errors import AsrError
from asr.export import export
from asr.features import FeatureConfig
from asr.models import BLSTMEncoder, CTCHead, CTCModel, ModelConfig, build_model, ctc_loss
from asr.models.frontend import Conv2dFrontend, conv_length, frontend_length
from asr.tokens import TokenTable

# Hand-computed: ceil(T / 2) and ceil(T / 4) for T = 1..20.
SUB2 = [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10]
SUB4 = [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5]


def frontend_cfg(subsample: int = 2, **kw) -> ModelConfig:
    base = {"num_layers": 2, "hidden": 8, "dropout": 0.0, "frontend": "conv2d", "frontend_channels": 4}
    return ModelConfig(**{**base, "frontend_subsample": subsample, **kw})


def test_conv_formula_by_hand() -> None:
    # (L + 2*1 - 3) // s + 1
    assert [conv_length(n, 1) for n in range(6)] == [0, 1, 2, 3, 4, 5]
    assert [conv_length(n, 2) for n in range(8)] == [0, 1, 1, 2, 2, 3, 3, 4]
    assert [frontend_length(t, 2) for t in range(1, 21)] == SUB2
    assert [frontend_length(t, 4) for t in range(1, 21)] == SUB4
    assert [frontend_length(t, 1) for t in range(0, 21)] == list(range(21))


@pytest.mark.parametrize("subsample", [1, 2, 4])
def test_output_lengths_equal_the_formula_and_the_network(subsample: int) -> None:
    torch.manual_seed(0)
    cfg = frontend_cfg(subsample)
    model = build_model(cfg, 6, 5).eval()
    assert model.time_reduction == cfg.time_reduction == subsample
    lengths = torch.arange(0, 41)
    want = [math.ceil(n / subsample) for n in range(41)]
    assert model.output_lengths(lengths).tolist() == want
    assert [cfg.output_length(n) for n in range(41)] == want
    with torch.no_grad():
        for n in range(1, 41):  # what the convolutions really produce for one utterance of n frames
            y, out = model.frontend(torch.randn(1, n, 6), torch.tensor([n]))
            assert y.shape == (1, want[n], 8) and out.tolist() == [want[n]]
        _, out = model(torch.randn(41, 40, 6), lengths)
    assert out.tolist() == want


@pytest.mark.parametrize("subsample", [1, 2, 4])
@pytest.mark.parametrize("pad", [1e6, -1e6, float("nan")])
def test_batch_equals_single_utterance(subsample: int, pad: float) -> None:
    torch.manual_seed(subsample)
    model = build_model(frontend_cfg(subsample, num_layers=3, dropout=0.5), 7, 5).eval()
    lengths = torch.randint(1, 30, (6,)).tolist() + [30, 1]
    utts = [torch.randn(n, 7) for n in lengths]
    x = torch.full((len(utts), 35, 7), pad)  # loud padding (and more of it than the longest needs)
    for i, u in enumerate(utts):
        x[i, : len(u)] = u
    with torch.no_grad():
        lp, out = model(x, torch.tensor(lengths))
        assert lp.shape[1] == max(out.tolist())
        for i, u in enumerate(utts):
            single, n = model(u.unsqueeze(0), torch.tensor([len(u)]))
            assert n.tolist() == [out[i].item()] == [math.ceil(len(u) / subsample)]
            torch.testing.assert_close(lp[i, : out[i]], single[0], atol=1e-5, rtol=1e-5)
            assert (lp[i, out[i] :] == lp[i, out[i] :]).all()  # no NaN anywhere, padding included


def test_empty_batch_and_empty_utterances() -> None:
    model = build_model(frontend_cfg(4), 3, 5).eval()
    lp, lens = model(torch.zeros(2, 0, 3), torch.tensor([0, 0]))
    assert lp.shape == (2, 0, 5) and lens.tolist() == [0, 0]
    lp, lens = model(torch.randn(2, 9, 3), torch.tensor([0, 9]))
    assert lp.shape == (2, 3, 5) and lens.tolist() == [0, 3]


def test_default_config_builds_the_model_of_old_configs() -> None:
    """No front-end: same state-dict keys, same random initialisation as before the keys existed."""
    torch.manual_seed(3)
    model = CTCModel(ModelConfig(num_layers=2, hidden=8), 6, 5)
    torch.manual_seed(3)
    enc = BLSTMEncoder(6, 8, 2, 0, 0.2, "lstm", True)
    head = CTCHead(enc.output_dim, 5)
    old = {**{f"encoder.{k}": v for k, v in enc.state_dict().items()},
           **{f"head.{k}": v for k, v in head.state_dict().items()}}
    new = model.state_dict()
    assert list(new) == list(old) and all(torch.equal(new[k], old[k]) for k in old)
    assert model.frontend is None and model.time_reduction == 1


def test_old_checkpoint_without_frontend_keys_loads() -> None:
    torch.manual_seed(0)
    model = CTCModel(ModelConfig(num_layers=2, hidden=8), 6, 5).eval()
    old_config = {"cell": "lstm", "num_layers": 2, "hidden": 8, "proj": 0, "dropout": 0.2, "bidirectional": True}
    ckpt = {"model": model.state_dict(), "model_args": {"config": old_config, "input_dim": 6, "vocab_size": 5}}
    loaded, cfg = model_from_checkpoint(ckpt)
    assert cfg.frontend == "none" and cfg.time_reduction == 1 and loaded.frontend is None
    x = torch.randn(2, 7, 6)
    torch.testing.assert_close(loaded.eval()(x, torch.tensor([7, 4]))[0], model(x, torch.tensor([7, 4]))[0])


def test_frontend_config_round_trips_and_is_checked() -> None:
    cfg = frontend_cfg(4)
    torch.manual_seed(0)
    model = build_model(cfg, 6, 5)
    ckpt = {"model": model.state_dict(), "model_args": model_args(model, cfg)}
    loaded, cfg2 = model_from_checkpoint(ckpt)
    assert cfg2 == cfg and loaded.time_reduction == 4
    with pytest.raises(AsrError, match="frontend_subsample"):
        from_dict(ModelConfig, {"frontend": "conv2d", "frontend_subsample": 3})
    with pytest.raises(AsrError, match="frontend"):
        from_dict(ModelConfig, {"frontend": "vgg"})
    with pytest.raises(ValueError):
        Conv2dFrontend(6, 4, 3)


def test_tiny_model_with_frontend_overfits() -> None:
    """Four random sequences, 100 Adam steps: the CTC loss falls by far more than chance could."""
    torch.manual_seed(0)
    model = build_model(frontend_cfg(2, hidden=24), 10, 6)
    lengths = torch.tensor([40, 33, 28, 40])
    x = torch.randn(4, 40, 10)
    y = torch.randint(1, 6, (4, 5))
    y_lens = torch.tensor([5, 4, 5, 3])
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(100):
        lp, out = model(x, lengths)
        loss, dropped = ctc_loss(lp, out, y, y_lens)
        assert dropped == 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], losses[::10]


# ---------------------------------------------------------------------- model dir: transcribe and export


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained (random) front-end model dir: 23 fbank x 3 stacked, pipeline subsample 3, front-end 2."""
    out = tmp_path_factory.mktemp("frontend") / "exp"
    out.mkdir()
    feats = FeatureConfig(sample_rate=8000, num_mel_bins=23, cmvn="none", stack=3, subsample=3)
    dump(feats, out / "feats.yaml")
    tokens = TokenTable.from_texts(["ab cd"])
    tokens.save(out)
    cfg = frontend_cfg(2, hidden=16)
    torch.manual_seed(0)
    model = build_model(cfg, 23 * 3, len(tokens))
    save_checkpoint({"model": model.state_dict(), "model_args": model_args(model, cfg)}, out / "final.pt")
    return out


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    """20 s of tones and noise bursts at 8 kHz."""
    rng = np.random.default_rng(0)
    t = np.arange(20 * 8000) / 8000
    audio = 0.3 * np.sin(2 * np.pi * (300 + 200 * np.sin(t)) * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    audio += 0.05 * rng.standard_normal(t.size)
    path = tmp_path_factory.mktemp("audio") / "a.wav"
    sf.write(path, audio.astype(np.float32), 8000)
    return path


def test_chunks_line_up_with_the_whole_file(model_dir: Path, wav: Path) -> None:
    from asr.transcribe import AudioSource, Transcriber

    whole = Transcriber(model_dir, chunk_seconds=100, progress=False)
    chunked = Transcriber(model_dir, chunk_seconds=4, context_seconds=2, progress=False)
    assert whole.hop == chunked.hop == 80 * 3 * 2  # shift x pipeline subsample x front-end
    audio = AudioSource.open(str(wav), 8000)
    pieces = list(chunked.iter_posteriors(audio))
    assert len(pieces) > 3
    a, b = whole.posteriors(audio), torch.cat(pieces)
    feat_frames = 1 + (20 * 8000 - 200) // 80
    assert a.shape[0] == b.shape[0] == math.ceil(math.ceil(feat_frames / 3) / 2)
    # A BiLSTM's memory of the cut-off audio fades within the context: stitching is exact in practice.
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert whole.transcribe(audio).text == chunked.transcribe(audio).text


@pytest.mark.parametrize("fmt", ["pt2", "torchscript", "onnx"])
def test_exported_frontend_model_transcribes_like_eager(model_dir: Path, wav: Path, fmt: str) -> None:
    from asr.transcribe import AudioSource, Transcriber

    if fmt == "onnx":
        for mod in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(mod)
    path = export(model_dir, fmt)
    audio = AudioSource.open(str(wav), 8000)
    eager = Transcriber(model_dir, chunk_seconds=6, progress=False).posteriors(audio)
    exported = Transcriber(model_dir, chunk_seconds=6, engine=str(path), progress=False).posteriors(audio)
    torch.testing.assert_close(exported, eager, atol=1e-4, rtol=1e-4)
