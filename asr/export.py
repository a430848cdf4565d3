"""Export a model dir's network for deployment: ``asr export MODEL_DIR --format torchscript|onnx``.

The exported network takes padded input and is exact for any batch, like the encoder itself: each
direction of each layer is a separate unidirectional RNN, and the backward one reads every
utterance reversed *within its own length*, so padding only ever follows the valid frames. A
convolutional front-end zeroes the padded frames before and after each convolution, so it too
gives every utterance of a batch what it gives it alone.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asr.errors import AsrError
from asr.models import CTCModel

log = logging.getLogger(__name__)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of ``x`` (B, T, D) within its length; frames past the length stay put."""
    t = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # (1, T)
    n = lengths.to(x.device).unsqueeze(1)  # (B, 1)
    idx = torch.where(t < n, n - 1 - t, t)  # (B, T)
    return torch.gather(x, 1, idx.unsqueeze(2).expand(-1, -1, x.shape[2]))


class UniLayer(nn.Module):
    """One forward-only recurrent layer, optional linear projection after it."""

    def __init__(self, fwd: nn.RNNBase, proj: nn.Module | None):
        super().__init__()
        self.fwd = fwd
        self.proj = proj if proj is not None else nn.Identity()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y, _ = self.fwd(x)
        return self.proj(y)


class BiLayer(nn.Module):
    """One bidirectional recurrent layer on padded input, optional linear projection after it.

    (Two classes rather than a flag: TorchScript compiles both branches of an ``if``.)
    """

    def __init__(self, fwd: nn.RNNBase, bwd: nn.RNNBase, proj: nn.Module | None):
        super().__init__()
        self.fwd, self.bwd = fwd, bwd
        self.proj = proj if proj is not None else nn.Identity()

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y, _ = self.fwd(x)
        r, _ = self.bwd(reverse_padded(x, lengths))
        return self.proj(torch.cat([y, reverse_padded(r, lengths)], dim=2))


class NoFrontend(nn.Module):
    """Stands in for an absent front-end (TorchScript compiles a module attribute, not ``None`` checks)."""

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, lengths


class PaddedCTC(nn.Module):
    """``CTCModel`` for export: ``(x (B, T, D), lengths (B,)) -> (log_probs (B, T', V), out_lengths (B,))``.

    ``T' = T`` and ``out_lengths = lengths`` without a front-end; with one, both are reduced by the
    convolution formula (``ceil(T / time_reduction)``), and frames past ``out_lengths`` are zero
    before the output layer, as without.

    The encoder already runs on padded input; this restates its forward pass in the subset of Python
    that TorchScript and the ONNX exporter accept (a loop over layer modules instead of indexing, no
    data-dependent slicing), sharing the trained modules rather than copying them.
    """

    def __init__(self, model: CTCModel):
        super().__init__()
        # The front-end's own forward pass is already export-safe: shared as it is.
        self.frontend = model.frontend if model.frontend is not None else NoFrontend()
        enc = model.encoder
        layers = []
        for i in range(enc.num_layers):
            proj = enc.projs[i] if len(enc.projs) else None
            layers.append(BiLayer(enc.fwd[i], enc.bwd[i], proj) if enc.bidirectional else UniLayer(enc.fwd[i], proj))
        self.layers = nn.ModuleList(layers)
        self.linear = model.head.linear

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, lengths = self.frontend(x, lengths)
        for layer in self.layers:
            x = layer(x, lengths)
        # Zero the padded frames like the encoder does, so outputs match the eager model.
        mask = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)
        x = x * mask.unsqueeze(2).to(x.dtype)
        return F.log_softmax(self.linear(x), dim=-1), lengths


def export(
    model_dir: str | Path, fmt: str = "torchscript", output: str | Path | None = None, checkpoint: str = "final.pt"
) -> Path:
    """Write ``model.ts`` (TorchScript) or ``model.onnx`` into the model dir (or ``output``)."""
    from asr.atomic import atomic_path
    from asr.modeldir import ModelDir

    md = ModelDir.load(model_dir, checkpoint=checkpoint)
    net = PaddedCTC(md.model).eval()
    dim = md.model.input_dim
    out = Path(output) if output else Path(model_dir) / ("model.ts" if fmt == "torchscript" else "model.onnx")
    x, lengths = torch.zeros(2, 50, dim), torch.tensor([50, 30])
    if fmt == "torchscript":
        scripted = torch.jit.script(net)
        with atomic_path(out) as tmp:
            scripted.save(str(tmp))
    elif fmt == "onnx":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise AsrError("ONNX export needs the onnx package: pip install 'asr[export]'") from None
        with atomic_path(out) as tmp, torch.no_grad():
            torch.onnx.export(
                net,
                (x, lengths),
                str(tmp),
                input_names=["feats", "lengths"],
                output_names=["log_probs", "out_lengths"],
                dynamo=False,
                dynamic_axes={
                    "feats": {0: "batch", 1: "time"},
                    "lengths": {0: "batch"},
                    "log_probs": {0: "batch", 1: "time"},
                    "out_lengths": {0: "batch"},
                },
            )
    else:
        raise AsrError(f"unknown export format {fmt!r}: torchscript | onnx")
    log.info("exported %s -> %s", model_dir, out)
    return out


def _cmd_export(args: argparse.Namespace) -> int:
    print(export(args.model_dir, args.format, args.output, args.checkpoint))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the network (TorchScript or ONNX, padded input)")
    p.add_argument("model_dir")
    p.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript")
    p.add_argument("-o", "--output", help="default: MODEL_DIR/model.ts or model.onnx")
    p.add_argument("--checkpoint", default="final.pt")
    p.set_defaults(func=_cmd_export)
