"""Acoustic models: a recurrent encoder plus a CTC head, built from a :class:`ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from asr.models.blstm import BLSTMEncoder
from asr.models.ctc import CTCHead, ctc_loss, feasible, required_frames

__all__ = [
    "ModelConfig",
    "CTCModel",
    "BLSTMEncoder",
    "CTCHead",
    "build_model",
    "ctc_loss",
    "feasible",
    "required_frames",
]


@dataclass
class ModelConfig:
    """Encoder shape; frame stacking/subsampling lives in the feature config (load-time pipeline)."""

    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    num_layers: int = 4
    hidden: int = 320
    proj: int = 0
    dropout: float = 0.2
    bidirectional: bool = True

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.hidden < 1 or self.proj < 0:
            raise ValueError("model: num_layers and hidden must be >= 1, proj >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout {self.dropout}: expected 0 <= dropout < 1")


class CTCModel(nn.Module):
    """Encoder + CTC head: ``(x (B, T, D), lengths (B,)) -> (log_probs (B, T, V), out_lengths (B,))``."""

    def __init__(self, cfg: ModelConfig, input_dim: int, vocab_size: int):
        super().__init__()
        self.input_dim, self.vocab_size = input_dim, vocab_size
        self.encoder = BLSTMEncoder(
            input_dim, cfg.hidden, cfg.num_layers, cfg.proj, cfg.dropout, cfg.cell, cfg.bidirectional
        )
        self.head = CTCHead(self.encoder.output_dim, vocab_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, out_lengths = self.encoder(x, lengths)
        return self.head(h), out_lengths


def build_model(cfg: ModelConfig, input_dim: int, vocab_size: int) -> CTCModel:
    return CTCModel(cfg, input_dim, vocab_size)
