"""CTC output layer and loss (blank = 0) with an explicit feasibility check.

CTC needs at least ``U + r`` output frames for ``U`` labels with ``r`` adjacent repeats (a blank must
separate repeated labels). ``F.ctc_loss(zero_infinity=True)`` would silently zero such utterances;
we drop them explicitly and report how many, so a bad subsampling setting is visible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CTCHead(nn.Module):
    """Linear projection to the vocabulary followed by log-softmax."""

    def __init__(self, input_dim: int, vocab_size: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, H) -> log-probabilities (B, T, V), float32 even under autocast."""
        return F.log_softmax(self.linear(x).float(), dim=-1)


def required_frames(targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Minimum output frames per utterance: ``U + number of adjacent repeats``. (B, U), (B,) -> (B,)."""
    if targets.numel() == 0 or targets.size(1) < 2:
        return target_lengths.clone()
    same = targets[:, 1:] == targets[:, :-1]
    pos = torch.arange(1, targets.size(1), device=targets.device)
    valid = pos.unsqueeze(0) < target_lengths.unsqueeze(1)
    return target_lengths + (same & valid).sum(1)


def feasible(lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor) -> torch.Tensor:
    """Bool mask (B,): which utterances have enough frames (``lengths`` (B,)) for their labels."""
    return lengths.to(target_lengths.device) >= required_frames(targets, target_lengths)


def ctc_loss(
    log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed CTC loss over the feasible utterances and the number dropped as infeasible.

    ``log_probs`` (B, T, V), ``lengths`` (B,), ``targets`` (B, U) padded, ``target_lengths`` (B,).
    Returns ``(loss_sum (), n_dropped)``; the sum is over utterances (negative log-likelihood each).
    """
    ok = feasible(lengths, targets, target_lengths)
    n_bad = int((~ok).sum())
    if n_bad == len(ok):
        return log_probs.sum() * 0.0, n_bad  # keeps the graph (DDP needs every rank to run backward)
    per_utt = F.ctc_loss(
        log_probs.transpose(0, 1), targets, lengths, target_lengths, blank=0, reduction="none", zero_infinity=True
    )
    return (per_utt * ok.to(per_utt.dtype)).sum(), n_bad
