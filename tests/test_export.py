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
