"""Deep bidirectional recurrent encoder (EESEN's BiLSTM stack) on padded batches that padding cannot reach.

PyTorch's packed sequences would keep padding out but run ~3x slower on CPU than the fused padded
kernels, so each direction runs as its own one-layer module on a padded tensor: the forward direction
sees padding only after an utterance's last frame, and the backward direction runs forward over each
utterance reversed *within its length* (padding stays at the end), then is reversed back. Valid frames
therefore never depend on padding, and a batch gives the outputs of one utterance at a time.
"""

from __future__ import annotations

import torch
from torch import nn

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def reverse_index(lengths: torch.Tensor, t_max: int) -> torch.Tensor:
    """(B, T) time index reversing each row within its length; positions past the length stay put."""
    t = torch.arange(t_max, device=lengths.device).unsqueeze(0)
    n = lengths.unsqueeze(1)
    return torch.where(t < n, n - 1 - t, t)


def reverse_padded(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` (B, T, D) within its length, ``index = reverse_index(lengths, T)``;
    frames past the length stay put. Its own inverse."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class BLSTMEncoder(nn.Module):
    """``num_layers`` recurrent layers of ``hidden`` units per direction.

    - ``cell``: ``lstm`` (default), ``gru`` or ``rnn`` (Elman, tanh).
    - ``proj`` > 0: each layer's output is projected to ``proj`` units per direction. For LSTM this is
      LSTMP (Sak et al. 2014, ``nn.LSTM(proj_size=...)``: the projected state is also the recurrent one);
      for GRU/RNN a linear layer follows each direction of each layer.
    - ``dropout`` between layers (not after the last one).
    """

    def __init__(
        self,
        input_dim: int,
        hidden: int = 320,
        num_layers: int = 4,
        proj: int = 0,
        dropout: float = 0.0,
        cell: str = "lstm",
        bidirectional: bool = True,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell {cell!r}: expected one of {', '.join(CELLS)}")
        self.input_dim, self.hidden, self.num_layers, self.proj = input_dim, hidden, num_layers, proj
        self.cell, self.bidirectional = cell, bidirectional
        dirs = 2 if bidirectional else 1
        rnn_cls = CELLS[cell]
        kw = {"proj_size": proj} if proj and cell == "lstm" else {}
        out = proj or hidden
        self.fwd, self.bwd, self.projs = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        d = input_dim
        for _ in range(num_layers):
            self.fwd.append(rnn_cls(d, hidden, batch_first=True, **kw))
            if bidirectional:
                self.bwd.append(rnn_cls(d, hidden, batch_first=True, **kw))
            # Identity without a projection (no parameters): one entry per layer, so that the layer loop
            # zips the lists, which TorchScript compiles where it rejects indexing them by a variable.
            self.projs.append(nn.Linear(dirs * hidden, dirs * proj) if proj and cell != "lstm" else nn.Identity())
            d = dirs * out
        self.drop = nn.Dropout(dropout)
        self.output_dim = d

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, T, D) padded, ``lengths`` (B,) -> ``(y (B, T', H), lengths (B,))``, T' = max(lengths).

        Outputs past each utterance's length are zero.
        """
        lengths = lengths.to(device=x.device, dtype=torch.long)
        t_max = int(lengths.max()) if lengths.numel() else 0
        if t_max == 0:  # recurrent kernels reject empty sequences
            return x.new_zeros(x.shape[0], 0, self.output_dim), lengths
        return self.forward_padded(x[:, :t_max], lengths), lengths

    def forward_padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``x`` (B, T, D), ``lengths`` (B,), T >= 1 -> ``y`` (B, T, H), zero past each length.

        ``forward`` without trimming ``x`` to the longest utterance: no data-dependent shapes or
        branches, so TorchScript and the ONNX exporter take it as it is (see asr/export.py).
        """
        lengths = lengths.to(device=x.device, dtype=torch.long)
        if self.bidirectional:
            rev = reverse_index(lengths, x.shape[1])
            for i, (fwd, bwd, proj) in enumerate(zip(self.fwd, self.bwd, self.projs)):  # noqa: B905 (TorchScript)
                if i > 0:
                    x = self.drop(x)
                y = fwd(x)[0]
                back = reverse_padded(bwd(reverse_padded(x, rev))[0], rev)
                x = proj(torch.cat([y, back], dim=-1))
        else:
            for i, (fwd, proj) in enumerate(zip(self.fwd, self.projs)):  # noqa: B905 (TorchScript)
                if i > 0:
                    x = self.drop(x)
                x = proj(fwd(x)[0])
        mask = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        return x * mask.unsqueeze(-1).to(x.dtype)
