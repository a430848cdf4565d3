"""Exported networks (padded input) equal the eager model for every cell type, front-end, batch and padding.

Each network is exported from a batch of 2 x 50 frames and run on batches of other sizes and lengths,
so the batch and time axes are shown to be dynamic. No deprecation warning may come from our code
(``filterwarnings`` below); the exports are also recorded and must raise none at all.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import pytest
import torch

from asr.checkpoint import model_args, save_checkpoint
from asr.cli import main
from asr.config import dump
from asr.export import TORCHSCRIPT_NOTE, PaddedCTC, _onnx_program, export, export_program, load_exported, min_frames
from asr.features import FeatureConfig
from asr.modeldir import ModelDir
from asr.models import CTCModel, ModelConfig, build_model
from asr.tokens import TokenTable

pytestmark = [
    pytest.mark.filterwarnings("error::DeprecationWarning:asr"),
    pytest.mark.filterwarnings("error::FutureWarning:asr"),
]

DIM = 10
# The ONNX tests below also check the .pt2 of a BiLSTM, an LSTMP, a tanh RNN and a 4x front-end.
CELLS = [("gru", 0, True), ("gru", 5, True), ("rnn", 4, False), ("lstm", 0, False)]


def make_model(seed: int = 0, **kw) -> CTCModel:
    torch.manual_seed(seed)
    cfg = {"num_layers": 2, "hidden": 12, "dropout": 0.3, "frontend_channels": 4, **kw}
    return build_model(ModelConfig(**cfg), DIM, 7).eval()


def batches(model: CTCModel) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Padded batches unlike the example input (2 x 50): padding that must not leak, the shortest input."""
    x, lengths = torch.randn(3, 37, DIM), torch.tensor([37, 20, 3])
    x[1, 20:] = 1e3
    x[2, 3:] = float("nan") if model.frontend is not None else -1e3  # the front-end zeroes padding
    t = min_frames(model)
    short, many = (torch.randn(1, t, DIM), torch.tensor([t])), (torch.randn(4, 9, DIM), torch.tensor([9, 1, 5, 8]))
    return [(x, lengths), short, many]


def assert_equals_eager(run, model: CTCModel) -> None:
    for x, lengths in batches(model):
        want, want_lengths = model(x, lengths)
        got, out_lengths = run(x, lengths)
        assert out_lengths.tolist() == want_lengths.tolist()
        assert tuple(got.shape) == (x.shape[0], math.ceil(x.shape[1] / model.time_reduction), 7)
        for i, n in enumerate(want_lengths.tolist()):
            torch.testing.assert_close(got[i, :n], want[i, :n], atol=1e-5, rtol=1e-5)


def assert_no_deprecation(caught: list[warnings.WarningMessage]) -> None:
    bad = [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not bad, [f"{w.filename}:{w.lineno}: {w.message}" for w in bad]


def pt2_roundtrip(model: CTCModel, path: Path) -> torch.export.ExportedProgram:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ep = export_program(model)
        torch.export.save(ep, path)
    assert_no_deprecation(caught)
    assert_equals_eager(load_exported(path), model)
    return ep


@pytest.mark.parametrize("cell, proj, bidirectional", CELLS)
def test_pt2_export_equals_eager(cell, proj, bidirectional, tmp_path):
    model = make_model(cell=cell, proj=proj, bidirectional=bidirectional)
    pt2_roundtrip(model, tmp_path / "model.pt2")


@pytest.mark.parametrize("subsample, bidirectional", [(1, True), (2, True), (2, False)])
def test_pt2_export_with_frontend_equals_eager(subsample, bidirectional, tmp_path):
    model = make_model(1, bidirectional=bidirectional, frontend="conv2d", frontend_subsample=subsample)
    pt2_roundtrip(model, tmp_path / "model.pt2")


ONNX_MODELS = {"lstm": {}, "conv2d-lstm": {"frontend": "conv2d", "frontend_subsample": 4}, "lstmp-loop": {"proj": 6},
               "rnn-loop": {"cell": "rnn", "proj": 4}}


@pytest.mark.parametrize("kw", ONNX_MODELS.values(), ids=ONNX_MODELS.keys())
def test_onnx_export_equals_eager(kw, tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    model = make_model(2, dropout=0.0, **kw)
    ep = pt2_roundtrip(model, tmp_path / "model.pt2")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _onnx_program(ep, model).save(tmp_path / "model.onnx")
    assert_no_deprecation(caught)
    run = load_exported(tmp_path / "model.onnx")
    assert_equals_eager(run, model)
    if model.frontend is not None:  # ONNX has no torch.export lower bound on the time axis
        x, lengths = torch.randn(2, 1, DIM), torch.tensor([1, 1])
        got, out_lengths = run(x, lengths)
        torch.testing.assert_close(got, model(x, lengths)[0], atol=1e-5, rtol=1e-5)


def test_pt2_with_frontend_refuses_too_few_frames(tmp_path):
    model = make_model(frontend="conv2d", frontend_subsample=4)
    torch.export.save(export_program(model), tmp_path / "model.pt2")
    run = load_exported(tmp_path / "model.pt2")
    with pytest.raises(Exception, match=r"x\.size\(\)\[1\] >= 5"):
        run(torch.randn(1, 4, DIM), torch.tensor([4]))


@pytest.mark.parametrize("kw", [{}, {"frontend": "conv2d", "frontend_subsample": 4}], ids=["lstm", "conv2d"])
def test_torchscript_export_equals_eager(kw):
    model = make_model(3, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated upstream: asked for here
        scripted = torch.jit.script(PaddedCTC(model).eval())
    assert_equals_eager(scripted, model)


# ---------------------------------------------------------------------- model dir and CLI


@pytest.fixture
def model_dir(tmp_path) -> Path:
    out = tmp_path / "exp"
    out.mkdir()
    dump(FeatureConfig(num_mel_bins=DIM, cmvn="none"), out / "feats.yaml")
    tokens = TokenTable.from_texts(["ab cd"])
    tokens.save(out)
    cfg = ModelConfig(num_layers=1, hidden=8, dropout=0.0, frontend="conv2d", frontend_channels=4)
    torch.manual_seed(4)
    model = build_model(cfg, DIM, len(tokens))
    save_checkpoint({"model": model.state_dict(), "model_args": model_args(model, cfg)}, out / "final.pt")
    return out


def test_cli_default_is_pt2_and_torchscript_is_asked_for(model_dir, capsys, caplog):
    model = ModelDir.load(model_dir).model.eval()
    assert main(["export", str(model_dir)]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == model_dir / "model.pt2"
    assert_equals_eager(load_exported(path), model)
    assert TORCHSCRIPT_NOTE not in caplog.text

    with caplog.at_level(logging.WARNING, logger="asr.export"):
        ts = export(model_dir, "torchscript", model_dir / "other.ts")
    assert caplog.text.count(TORCHSCRIPT_NOTE) == 1
    assert_equals_eager(load_exported(ts), model)
    with pytest.raises(SystemExit):
        main(["export", str(model_dir), "--format", "tflite"])
