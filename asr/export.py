"""Export a model dir's network for deployment: ``asr export MODEL_DIR [--format pt2|onnx|torchscript]``.

- ``pt2`` (default): :func:`torch.export.export` with dynamic batch and time axes, saved by
  :func:`torch.export.save` as ``model.pt2``; ``torch.export.load(path).module()`` runs it.
- ``onnx``: the same exported program through the dynamo ONNX exporter, ``model.onnx``
  (``pip install 'asr[export]'``: onnx, onnxscript, onnxruntime).
- ``torchscript``: ``model.ts`` by ``torch.jit.script``, only when asked for (deprecated upstream).

The exported network takes padded input and is exact for any batch, like the eager model: it is the
model's own :meth:`~asr.models.CTCModel.forward_padded`, the forward pass without trimming the batch
to its longest utterance (the one data-dependent shape, which no exporter can keep). Each direction
of each recurrent layer reads every utterance within its own length (the backward one reversed by a
gather with an index tensor, :func:`asr.models.blstm.reverse_padded`), and a convolutional front-end
zeroes the padded frames before and after each convolution, so every utterance of a batch gets what
it gets alone.

The time axis stays dynamic only with help: torch computes the shapes of ``nn.LSTM``/``GRU``/``RNN``
by decomposing them into a Python loop over frames, which fixes the sequence length of the example
input. :func:`_rnn_while_loops` swaps in while-loop decompositions for the duration of an export
(torch's own ones from ``torch.export._patches``, which ``torch.onnx`` applies to its own capture
but not to its later decomposition pass, plus one for the tanh RNN that torch lacks). The exported
program keeps each recurrent layer as one fused ``aten`` op; ONNX gets native ``LSTM``/``GRU``
nodes, or a ``Loop`` where ONNX has no such op (LSTM with projections, tanh RNN).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asr.errors import AsrError
from asr.models import CTCModel

log = logging.getLogger(__name__)

FORMATS = {"pt2": "model.pt2", "onnx": "model.onnx", "torchscript": "model.ts"}
INPUT_NAMES, OUTPUT_NAMES = ["feats", "lengths"], ["log_probs", "out_lengths"]
TORCHSCRIPT_NOTE = "TorchScript is deprecated upstream (torch.jit); --format pt2 or onnx is the supported path"
# Raised inside torch by its own export machinery (torch.export._patches' while loops call
# torch._check_is_size; nn.RNN keeps its weights in a list attribute); nothing a caller can act on.
_TORCH_NOISE = [
    (FutureWarning, r"_check_is_size will be removed"),
    (UserWarning, r"The tensor attributes .*_flat_weights"),
]


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


def _rnn_tanh_layer(inp, hidden, params, has_biases, reverse=False):
    """One direction of one tanh-RNN layer, ``inp`` (T, B, D), as a ``torch.while_loop`` over frames."""
    from torch.export._patches import _clone_tensors_that_alias

    w_hh, b_hh = _clone_tensors_that_alias((params[1], params[3] if has_biases else None))
    pre = F.linear(inp, params[0], params[2] if has_biases else None)
    pre = pre.flip(0) if reverse else pre
    h0 = hidden.unsqueeze(0)
    out0 = torch.empty(pre.size(0), *h0.shape[1:], dtype=h0.dtype, device=h0.device)

    def cond_fn(i, out, h):
        return i < pre.size(0)

    def body_fn(i, out, h):
        t = i.item()
        torch._check(t >= 0)
        torch._check(t < pre.size(0))
        h = torch.tanh(F.linear(h, w_hh, b_hh) + pre[t])
        out = out.clone()
        out[t] = h.squeeze(0)
        return i + 1, out, h

    _, out, h = torch.while_loop(cond_fn, body_fn, (torch.tensor(0), out0, h0))
    return (out.flip(0) if reverse else out), h.squeeze(0)


def _rnn_tanh_impl(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    from torch.export._patches import _rnn_helper, gather_params

    params = gather_params(params, has_biases, False)
    out, final = _rnn_helper(
        input, list(hx.unbind(0)), params, has_biases, num_layers, dropout, train, bidirectional, batch_first,
        _rnn_tanh_layer,
    )
    return out, torch.stack(final, 0)


@contextlib.contextmanager
def _rnn_while_loops() -> Iterator[None]:
    """Recurrent layers decomposed by while loops (dynamic time axis); torch's noise about them filtered."""
    try:
        from torch.export import _patches
    except ImportError:
        raise AsrError(
            f"torch {torch.__version__} cannot export a recurrent network with a dynamic time axis "
            "(no torch.export._patches); upgrade torch or use --format torchscript"
        ) from None
    # torch.while_loop compiles its body with dynamo, whose cache would turn the sizes seen by an earlier
    # export of the same body into dynamic int inputs, which the ONNX Loop translation rejects.
    torch.compiler.reset()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patches.register_lstm_while_loop_decomposition())
        stack.enter_context(_patches.register_gru_while_loop_decomposition())
        rnn_tanh = torch.ops.aten.rnn_tanh.input
        stack.enter_context(_patches._register_rnn_while_loop_decomposition(rnn_tanh, _rnn_tanh_impl))
        stack.enter_context(warnings.catch_warnings())
        for category, message in _TORCH_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@contextlib.contextmanager
def _quiet(*loggers: str) -> Iterator[None]:
    """Only errors from these loggers (the ONNX exporter logs each optimisation step, and that
    torchvision's ops are not there)."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def min_frames(model: CTCModel) -> int:
    """Fewest input frames the exported program accepts (the ONNX model has no such bound).

    torch.export assumes every size it cannot prove otherwise is not 1 (its 0/1 specialisation); a
    strided convolution's output length is derived from ``T``, so it must stay >= 2 frames:
    ``T >= time_reduction + 1``. Without a strided front-end any ``T >= 1`` goes.
    """
    return 1 if model.time_reduction == 1 else model.time_reduction + 1


def export_program(model: CTCModel) -> torch.export.ExportedProgram:
    """``PaddedCTC(model)`` through :func:`torch.export.export`, batch and time dynamic."""
    net = PaddedCTC(model).eval()
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time", min=min_frames(model))
    x, lengths = torch.zeros(2, 50, model.input_dim), torch.tensor([50, 30])
    with _rnn_while_loops():
        return torch.export.export(
            net, (x, lengths), dynamic_shapes={"x": {0: batch, 1: time}, "lengths": {0: batch}}, strict=False
        )


def _onnx_program(ep: torch.export.ExportedProgram, model: CTCModel):
    """The dynamo ONNX exporter on ``ep``, axes named ``batch``/``time``."""
    for mod in ("onnx", "onnxscript"):
        try:
            __import__(mod)
        except ImportError:
            raise AsrError(f"ONNX export needs the {mod} package: pip install 'asr[export]'") from None
    with _rnn_while_loops(), _quiet("onnxscript", "onnx_ir", "torch.onnx"):
        enc = model.encoder
        if enc.cell == "lstm" and enc.proj:  # ONNX's LSTM has no projection: a Loop instead
            from torch.export._patches import lstm_while_loop_impl

            ep = ep.run_decompositions({torch.ops.aten.lstm.input: lstm_while_loop_impl})
        prog = torch.onnx.export(ep, dynamo=True, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES, verbose=False)
    shape = prog.model.graph.inputs[0].shape
    prog.rename_axes({shape[0]: "batch", shape[1]: "time"})
    return prog


def export(
    model_dir: str | Path, fmt: str = "pt2", output: str | Path | None = None, checkpoint: str = "final.pt"
) -> Path:
    """Write ``model.pt2``, ``model.onnx`` or ``model.ts`` (per ``fmt``) into the model dir (or ``output``)."""
    from asr.atomic import atomic_path
    from asr.modeldir import ModelDir

    if fmt not in FORMATS:
        raise AsrError(f"unknown export format {fmt!r}: {' | '.join(FORMATS)}")
    md = ModelDir.load(model_dir, checkpoint=checkpoint)
    model = md.model.eval()
    out = Path(output) if output else Path(model_dir) / FORMATS[fmt]
    if fmt == "torchscript":
        log.warning(TORCHSCRIPT_NOTE)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
            scripted = torch.jit.script(PaddedCTC(model).eval())
        with atomic_path(out) as tmp:
            scripted.save(str(tmp))
    else:
        ep = export_program(model)
        if fmt == "pt2":
            with atomic_path(out) as tmp, open(tmp, "wb") as f:
                torch.export.save(ep, f)
        else:
            prog = _onnx_program(ep, model)
            with atomic_path(out) as tmp:
                prog.save(tmp)
    log.info("exported %s -> %s", model_dir, out)
    return out


def load_exported(path: str | Path) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """An exported network as ``(feats (B, T, D), lengths (B,)) -> (log_probs (B, T', V), out_lengths (B,))``
    on CPU tensors, whatever its format (by suffix: ``.pt2``, ``.onnx``, else TorchScript)."""
    path = Path(path)
    if not path.is_file():
        raise AsrError(f"{path}: no such exported model (run 'asr export')")
    if path.suffix == ".pt2":
        return torch.export.load(path).module()
    if path.suffix == ".onnx":
        try:
            import onnxruntime
        except ImportError:
            raise AsrError("running an ONNX model needs onnxruntime: pip install 'asr[export]'") from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

        def run(feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            lp, n = session.run(None, {"feats": feats.numpy(), "lengths": lengths.to(torch.int64).numpy()})
            return torch.from_numpy(lp), torch.from_numpy(n)

        return run
    log.warning(TORCHSCRIPT_NOTE)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def _cmd_export(args: argparse.Namespace) -> int:
    print(export(args.model_dir, args.format, args.output, args.checkpoint))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the network (torch.export .pt2, ONNX, or TorchScript; padded input)")
    p.add_argument("model_dir")
    p.add_argument(
        "--format", choices=list(FORMATS), default="pt2",
        help="pt2 (default; torch.export), onnx (dynamo exporter), torchscript (deprecated upstream)",
    )
    p.add_argument("-o", "--output", help="default: MODEL_DIR/model.pt2, model.onnx or model.ts")
    p.add_argument("--checkpoint", default="final.pt")
    p.set_defaults(func=_cmd_export)
