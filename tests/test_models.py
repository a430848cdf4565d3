"""Encoder shapes for every cell, batch == single utterance, and CTC loss/gradient vs enumeration."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from asr.models import CTCModel, ModelConfig, ctc_loss, feasible, required_frames

CELLS = [("lstm", 0), ("lstm", 6), ("gru", 0), ("gru", 6), ("rnn", 0), ("rnn", 6)]


@pytest.mark.parametrize("cell,proj", CELLS)
@pytest.mark.parametrize("bidirectional", [True, False])
def test_output_shapes_and_lengths(cell: str, proj: int, bidirectional: bool) -> None:
    torch.manual_seed(0)
    model = CTCModel(
        ModelConfig(cell=cell, num_layers=2, hidden=8, proj=proj, dropout=0.1, bidirectional=bidirectional),
        input_dim=5,
        vocab_size=7,
    )
    x = torch.randn(3, 11, 5)
    lengths = torch.tensor([7, 11, 3])
    lp, out_lengths = model(x, lengths)
    assert lp.shape == (3, 11, 7)
    assert out_lengths.tolist() == [7, 11, 3]
    assert model.encoder.output_dim == (2 if bidirectional else 1) * (proj or 8)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3, 11), atol=1e-5)


@pytest.mark.parametrize("cell,proj", CELLS)
def test_batch_equals_single_utterance(cell: str, proj: int) -> None:
    torch.manual_seed(1)
    model = CTCModel(ModelConfig(cell=cell, num_layers=3, hidden=8, proj=proj, dropout=0.5), 4, 5).eval()
    lengths = [9, 4, 6]
    utts = [torch.randn(n, 4) for n in lengths]
    x = torch.full((3, 9, 4), 1e3)  # loud padding: any leak shows
    for i, u in enumerate(utts):
        x[i, : len(u)] = u
    with torch.no_grad():
        lp, _ = model(x, torch.tensor(lengths))
        for i, u in enumerate(utts):
            single, _ = model(u.unsqueeze(0), torch.tensor([len(u)]))
            assert torch.allclose(lp[i, : len(u)], single[0], atol=1e-5), (cell, proj, i)


def test_empty_utterances() -> None:
    model = CTCModel(ModelConfig(num_layers=2, hidden=4), 3, 5).eval()
    lp, lens = model(torch.zeros(2, 0, 3), torch.tensor([0, 0]))
    assert lp.shape == (2, 0, 5) and lens.tolist() == [0, 0]
    lp, lens = model(torch.randn(2, 4, 3), torch.tensor([0, 4]))
    assert lp.shape == (2, 4, 5)


def _enumerated_nll(logits: torch.Tensor, target: list[int]) -> torch.Tensor:
    """-log sum over every alignment (path in V^T) that collapses to ``target``. logits (T, V)."""
    lp = logits.log_softmax(-1)
    T, V = lp.shape
    total = []
    for path in itertools.product(range(V), repeat=T):
        collapsed = [k for i, k in enumerate(path) if k != 0 and (i == 0 or k != path[i - 1])]
        if collapsed == target:
            total.append(sum(lp[t, k] for t, k in enumerate(path)))
    return -torch.logsumexp(torch.stack(total), 0)


def test_ctc_uniform_hand_value() -> None:
    # T=2, V=2, target "a": paths aa, a-, -a out of 4 equally likely ones -> P = 3/4.
    lp = torch.full((1, 2, 2), math.log(0.5))
    loss, dropped = ctc_loss(lp, torch.tensor([2]), torch.tensor([[1]]), torch.tensor([1]))
    assert dropped == 0
    assert loss.item() == pytest.approx(math.log(4 / 3), abs=1e-6)


@pytest.mark.parametrize("target,T", [([1], 2), ([1, 2], 3), ([1, 1], 3), ([2, 1, 2], 4)])
def test_ctc_loss_and_gradient_match_enumeration(target: list[int], T: int) -> None:
    torch.manual_seed(len(target) * 10 + T)
    logits = torch.randn(T, 3, dtype=torch.float64, requires_grad=True)
    ref = _enumerated_nll(logits, target)
    (g_ref,) = torch.autograd.grad(ref, logits)
    logits2 = logits.detach().clone().requires_grad_(True)
    loss, dropped = ctc_loss(
        logits2.log_softmax(-1).unsqueeze(0), torch.tensor([T]), torch.tensor([target]), torch.tensor([len(target)])
    )
    loss.backward()
    assert dropped == 0
    assert loss.item() == pytest.approx(ref.item(), abs=1e-9)
    assert torch.allclose(logits2.grad, g_ref, atol=1e-9)


def test_infeasible_utterances_are_dropped_and_counted() -> None:
    y = torch.tensor([[1, 1, 2], [1, 2, 0], [3, 3, 3]])
    y_lens = torch.tensor([3, 2, 3])
    assert required_frames(y, y_lens).tolist() == [4, 2, 5]
    lengths = torch.tensor([3, 3, 5])
    assert feasible(lengths, y, y_lens).tolist() == [False, True, True]
    torch.manual_seed(0)
    lp = torch.randn(3, 5, 4).log_softmax(-1).requires_grad_(True)
    loss, dropped = ctc_loss(lp, lengths, y, y_lens)
    assert dropped == 1
    ok, _ = ctc_loss(lp[1:], lengths[1:], y[1:], y_lens[1:])
    assert loss.item() == pytest.approx(ok.item())
    loss.backward()
    assert torch.isfinite(lp.grad).all() and lp.grad[0].abs().sum() == 0


def test_all_infeasible_keeps_graph() -> None:
    lp = torch.randn(1, 1, 3).log_softmax(-1).requires_grad_(True)
    loss, dropped = ctc_loss(lp, torch.tensor([1]), torch.tensor([[1, 2]]), torch.tensor([2]))
    assert dropped == 1 and loss.item() == 0.0
    loss.backward()
