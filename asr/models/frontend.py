"""Convolutional front-end with time subsampling, before the recurrent encoder.

Two 3x3 convolutions + ReLU over (time, feature) as in ESPnet's ``vgg_rnn`` and deepspeech.pytorch:
local spectral patterns are learnt once for every position instead of by each LSTM gate, and fewer,
longer frames make the BiLSTM cheaper. The feature axis (mel bins, or the stacked frames of the
load-time pipeline) is the "frequency" axis and is halved by each layer; time is reduced by
``subsample`` (1, 2 or 4) in total.

Lengths stay whole numbers, by the exact convolution formula per layer:
``L_out = (L_in + 2 * pad - kernel) // stride + 1``; with kernel 3 and padding 1 that is
``ceil(L_in / stride)``, so an utterance of ``n`` frames gives ``ceil(n / subsample)`` (stride 2 twice
for 4: ``ceil(ceil(n / 2) / 2)``, the same number).

Padding never reaches valid frames: the padded input frames and every layer's padded output frames
are zeroed, so each valid frame sees exactly what it would see as a single utterance, where the
convolution's own zero padding stands beyond the last frame.
"""

from __future__ import annotations

import torch
from torch import nn

KERNEL = 3
PAD = 1
FREQ_STRIDE = 2
# Time stride of each of the two layers per total time reduction: the earlier layer reduces first.
TIME_STRIDES = {1: (1, 1), 2: (2, 1), 4: (2, 2)}


def conv_length(n: int, stride: int) -> int:
    """Output length of one layer for ``n`` input frames (or bins): ``(n + 2*pad - kernel) // stride + 1``."""
    return (n + 2 * PAD - KERNEL) // stride + 1


def frontend_length(n: int, subsample: int) -> int:
    """Frames out of the whole front-end for ``n`` frames in: ``ceil(n / subsample)``."""
    for s in TIME_STRIDES[subsample]:
        n = conv_length(n, s)
    return n


def _time_mask(lengths: torch.Tensor, t_max: int) -> torch.Tensor:
    """(B, T) True on valid frames."""
    return torch.arange(t_max, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


class MaskedConv2d(nn.Module):
    """Conv2d(3x3, padding 1, stride (``time_stride``, 2)) + ReLU; the output's padded frames are zero."""

    def __init__(self, in_channels: int, out_channels: int, time_stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, KERNEL, stride=(time_stride, FREQ_STRIDE), padding=PAD)
        # ``(L + 2*pad - kernel) // stride + 1`` as ``(L + offset) // stride``: the numerator stays >= 0,
        # so floor and truncating division agree and a 0-frame utterance stays at 0 in every exporter.
        self.time_stride, self.offset = time_stride, 2 * PAD - KERNEL + time_stride

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, C, T, F), ``lengths`` (B,) -> ``(y (B, C', T', F'), lengths' (B,))``."""
        y = torch.relu(self.conv(x))
        lengths = torch.div(lengths + self.offset, self.time_stride, rounding_mode="floor")
        # The bias and ReLU make padded frames nonzero, and the next layer reads one frame past the end.
        keep = _time_mask(lengths, y.shape[2]).unsqueeze(1).unsqueeze(3)
        return y.masked_fill(torch.logical_not(keep), 0.0), lengths


class Conv2dFrontend(nn.Module):
    """``(x (B, T, D), lengths (B,)) -> (y (B, T', output_dim), lengths' (B,))``, ``T' = ceil(T / subsample)``.

    Two :class:`MaskedConv2d` of ``channels`` channels (strides per :data:`TIME_STRIDES`, frequency
    halved by each), then a linear layer from ``channels * ceil(ceil(D / 2) / 2)`` to ``output_dim``.
    The forward pass does no data-dependent slicing, so TorchScript and ONNX export take it as it is.
    """

    def __init__(self, input_dim: int, channels: int = 32, subsample: int = 2, output_dim: int = 320):
        super().__init__()
        if subsample not in TIME_STRIDES:
            raise ValueError(f"frontend subsample {subsample}: expected one of {', '.join(map(str, TIME_STRIDES))}")
        s1, s2 = TIME_STRIDES[subsample]
        self.convs = nn.ModuleList([MaskedConv2d(1, channels, s1), MaskedConv2d(channels, channels, s2)])
        freq = conv_length(conv_length(input_dim, FREQ_STRIDE), FREQ_STRIDE)
        self.linear = nn.Linear(channels * freq, output_dim)
        self.input_dim, self.channels, self.output_dim = input_dim, channels, output_dim
        self.time_reduction = subsample

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames out for ``lengths`` (B,) frames in (the formula, without running the network)."""
        for conv in self.convs:
            lengths = torch.div(lengths + conv.offset, conv.time_stride, rounding_mode="floor")
        return lengths

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, D) padded with anything, T >= 1 -> ``(y (B, T', H), lengths' (B,))``.

        Frames of ``y`` past ``lengths'`` are the linear layer's bias; the encoder masks them.
        """
        lengths = lengths.to(device=x.device, dtype=torch.long)
        # Zeroed rather than multiplied by a mask: padding may hold inf or NaN.
        h = x.masked_fill(torch.logical_not(_time_mask(lengths, x.shape[1])).unsqueeze(2), 0.0).unsqueeze(1)
        for conv in self.convs:
            h, lengths = conv(h, lengths)
        return self.linear(h.transpose(1, 2).flatten(2)), lengths
