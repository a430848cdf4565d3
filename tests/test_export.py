"""Exported networks (padded input) equal the eager model for every cell type, batch and padding."""

from __future__ import annotations

import pytest
import torch

from asr.export import PaddedCTC
from asr.models import ModelConfig, build_model


@pytest.mark.parametrize("cell, proj, bidirectional", [("lstm", 0, True), ("lstm", 6, True), ("gru", 0, True),
                                                       ("gru", 5, True), ("rnn", 4, True), ("lstm", 0, False)])
def test_scripted_export_equals_eager(cell, proj, bidirectional):
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=cell, num_layers=2, hidden=12, proj=proj, dropout=0.3,
                                    bidirectional=bidirectional), 10, 7).eval()
    scripted = torch.jit.script(PaddedCTC(model).eval())
    x, lengths = torch.randn(3, 20, 10), torch.tensor([20, 13, 5])
    x[1, 13:] = 1e3  # padding must not leak into the valid frames
    x[2, 5:] = -1e3
    want, _ = model(x, lengths)
    got, out_lengths = scripted(x, lengths)
    assert torch.equal(out_lengths, lengths)
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(got[i, :n], want[i, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("subsample, bidirectional", [(1, True), (2, True), (4, True), (2, False)])
def test_scripted_export_with_frontend_equals_eager(subsample, bidirectional):
    torch.manual_seed(1)
    model = build_model(ModelConfig(num_layers=2, hidden=12, dropout=0.3, bidirectional=bidirectional,
                                    frontend="conv2d", frontend_channels=4, frontend_subsample=subsample), 10, 7).eval()
    scripted = torch.jit.script(PaddedCTC(model).eval())
    x, lengths = torch.randn(4, 23, 10), torch.tensor([23, 13, 5, 1])
    x[1, 13:] = 1e3
    x[2, 5:] = -1e3
    x[3, 1:] = float("nan")  # the front-end zeroes padding rather than multiplying it
    want, want_lengths = model(x, lengths)
    got, out_lengths = scripted(x, lengths)
    assert torch.equal(out_lengths, want_lengths)
    assert out_lengths.tolist() == [-(-n // subsample) for n in lengths.tolist()]
    assert got.shape[1] == -(-23 // subsample)
    for i, n in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(got[i, :n], want[i, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("frontend", ["none", "conv2d"])
def test_onnx_export_equals_eager(frontend, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(2)
    model = build_model(ModelConfig(num_layers=2, hidden=12, dropout=0.0, frontend=frontend, frontend_channels=4,
                                    frontend_subsample=4), 10, 7).eval()
    path = tmp_path / "model.onnx"
    dynamic = {"feats": {0: "batch", 1: "time"}, "lengths": {0: "batch"}, "log_probs": {0: "batch", 1: "time"},
               "out_lengths": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(PaddedCTC(model).eval(), (torch.zeros(2, 50, 10), torch.tensor([50, 30])), str(path),
                          input_names=["feats", "lengths"], output_names=["log_probs", "out_lengths"],
                          dynamo=False, dynamic_axes=dynamic)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x, lengths = torch.randn(3, 37, 10), torch.tensor([37, 20, 3])
    x[1, 20:] = 1e3
    x[2, 3:] = -1e3
    want, want_lengths = model(x, lengths)
    got, out_lengths = session.run(None, {"feats": x.numpy(), "lengths": lengths.numpy()})
    assert out_lengths.tolist() == want_lengths.tolist()
    for i, n in enumerate(want_lengths.tolist()):
        torch.testing.assert_close(torch.from_numpy(got[i, :n]), want[i, :n], atol=1e-5, rtol=1e-5)
