"""Acoustic models: an optional convolutional front-end, a recurrent encoder and a CTC head, built from a
:class:`ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from asr.models.blstm import BLSTMEncoder
from asr.models.ctc import CTCHead, ctc_loss, feasible, required_frames
from asr.models.frontend import TIME_STRIDES, Conv2dFrontend, frontend_length

__all__ = [
    "ModelConfig",
    "CTCModel",
    "BLSTMEncoder",
    "Conv2dFrontend",
    "CTCHead",
    "build_model",
    "ctc_loss",
    "feasible",
    "required_frames",
]


@dataclass
class ModelConfig:
    """Encoder shape; frame stacking/subsampling lives in the feature config (load-time pipeline).

    ``frontend: conv2d`` puts two 3x3 convolutions (``frontend_channels`` channels, ReLU) before the
    recurrent layers, reducing time by ``frontend_subsample`` (1, 2 or 4) on top of the feature
    pipeline's subsampling and the feature axis by 4, then a linear layer to ``hidden`` units.
    ``none`` (the default) builds exactly the network of configs written before these keys existed.
    """

    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    num_layers: int = 4
    hidden: int = 320
    proj: int = 0
    dropout: float = 0.2
    bidirectional: bool = True
    frontend: Literal["none", "conv2d"] = "none"
    frontend_channels: int = 32
    frontend_subsample: int = 2

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.hidden < 1 or self.proj < 0:
            raise ValueError("model: num_layers and hidden must be >= 1, proj >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout {self.dropout}: expected 0 <= dropout < 1")
        if self.frontend_channels < 1:
            raise ValueError(f"model.frontend_channels {self.frontend_channels}: expected >= 1")
        if self.frontend_subsample not in TIME_STRIDES:
            raise ValueError(
                f"model.frontend_subsample {self.frontend_subsample}: expected one of "
                f"{', '.join(map(str, TIME_STRIDES))}"
            )

    @property
    def time_reduction(self) -> int:
        """Input frames (after the feature pipeline) per output frame of the model."""
        return self.frontend_subsample if self.frontend == "conv2d" else 1

    def output_length(self, n: int) -> int:
        """Output frames for ``n`` input frames: ``ceil(n / time_reduction)`` (known before building a model)."""
        return frontend_length(n, self.frontend_subsample) if self.frontend == "conv2d" else n


class CTCModel(nn.Module):
    """[Front-end +] encoder + CTC head: ``(x (B, T, D), lengths (B,)) -> (log_probs (B, T', V), out_lengths (B,))``.

    ``out_lengths = output_lengths(lengths)`` (``ceil(lengths / time_reduction)``) and
    ``T' = max(out_lengths)``.
    """

    def __init__(self, cfg: ModelConfig, input_dim: int, vocab_size: int):
        super().__init__()
        self.input_dim, self.vocab_size = input_dim, vocab_size
        # Built only when asked for: a model without it has the parameters, state-dict keys and
        # random initialisation of the models from before the front-end existed.
        self.frontend: Conv2dFrontend | None = None
        enc_dim = input_dim
        if cfg.frontend == "conv2d":
            self.frontend = Conv2dFrontend(input_dim, cfg.frontend_channels, cfg.frontend_subsample, cfg.hidden)
            enc_dim = self.frontend.output_dim
        self.time_reduction = cfg.time_reduction
        self.encoder = BLSTMEncoder(
            enc_dim, cfg.hidden, cfg.num_layers, cfg.proj, cfg.dropout, cfg.cell, cfg.bidirectional
        )
        self.head = CTCHead(self.encoder.output_dim, vocab_size)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Output frames (B,) for ``lengths`` (B,) input frames."""
        return self.frontend.output_lengths(lengths) if self.frontend is not None else lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frontend is not None:
            lengths = lengths.to(device=x.device, dtype=torch.long)
            t_max = int(lengths.max()) if lengths.numel() else 0
            if t_max == 0:  # convolutions reject inputs shorter than their kernel even with padding
                x = x.new_zeros(x.shape[0], 0, self.frontend.output_dim)
            else:
                x, lengths = self.frontend(x[:, :t_max], lengths)
        h, out_lengths = self.encoder(x, lengths)
        return self.head(h), out_lengths

    def forward_padded(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` for export (TorchScript, ONNX): no data-dependent shapes or branches, ``T >= 1``.

        The same outputs on every utterance's frames; ``T'`` follows the input's ``T``
        (``ceil(T / time_reduction)``) rather than the longest length, and frames past ``out_lengths``
        are what the output layer makes of zeros.
        """
        if self.frontend is not None:
            x, lengths = self.frontend(x, lengths)
        return self.head(self.encoder.forward_padded(x, lengths)), lengths


def build_model(cfg: ModelConfig, input_dim: int, vocab_size: int) -> CTCModel:
    return CTCModel(cfg, input_dim, vocab_size)
