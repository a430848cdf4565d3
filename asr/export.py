"""Export a model dir's network for deployment: ``asr export MODEL_DIR --format torchscript|onnx``.

The exported network takes padded input and is exact for any batch, like the eager model: it is the
model's own :meth:`~asr.models.CTCModel.forward_padded`, the forward pass without trimming the batch
to its longest utterance (the one data-dependent step, which TorchScript and the ONNX tracer cannot
keep). Each direction of each recurrent layer reads every utterance within its own length (the
backward one reversed by :func:`asr.models.blstm.reverse_padded`), and a convolutional front-end
zeroes the padded frames before and after each convolution, so every utterance of a batch gets what
it gets alone.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from torch import nn

from asr.errors import AsrError
from asr.models import CTCModel

log = logging.getLogger(__name__)


class PaddedCTC(nn.Module):
    """``CTCModel`` for export: ``(x (B, T, D), lengths (B,)) -> (log_probs (B, T', V), out_lengths (B,))``.

    ``T' = T`` and ``out_lengths = lengths`` without a front-end; with one, both are reduced by the
    convolution formula (``ceil(T / time_reduction)``). The trained model is wrapped, not copied.
    """

    def __init__(self, model: CTCModel):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_padded(x, lengths)


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
