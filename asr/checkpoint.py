"""Checkpoints: ``.pt`` files of plain tensors and Python types, saved atomically and read without unpickling code.

Every checkpoint a run writes carries ``model`` (the state dict) and ``model_args`` (model config, input
dim, vocabulary size), so it alone rebuilds its network (:func:`model_from_checkpoint`). Beyond that:

- ``epoch-N.pt`` (:func:`save_epoch`): ``epoch``, ``dev_loss``, ``dev_cer``;
- ``last.pt`` (:func:`save_train_state`): what an exact resume needs: ``optimizer``, ``schedule``,
  ``scaler``, ``state`` (the run's position and metrics history), ``rng`` (every RNG), ``config``;
- ``final.pt`` (:func:`save_final`): the mean of the epoch checkpoints :func:`choose_epochs` picks,
  ``averaged_epochs``, ``config``.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asr.atomic import atomic_path
from asr.config import from_dict, to_dict
from asr.errors import AsrError
from asr.models import CTCModel, ModelConfig, build_model


def save_checkpoint(obj: dict, path: Path) -> None:
    """torch.save, atomically (a kill leaves the previous file). ``obj`` holds only tensors and plain
    Python types, so :func:`load_checkpoint` can read it with ``weights_only=True``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint without running any code from it (``weights_only=True``).

    A shared ``final.pt`` is a pickle; a full unpickle could run arbitrary code. Anything beyond
    tensors and plain containers is refused with one line naming the file.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AsrError(f"{path}: refused: not a plain-tensor checkpoint ({first[:200]})") from None
    except Exception as e:  # noqa: BLE001 - any other read failure is the same user problem
        raise AsrError(f"{path}: cannot read checkpoint: {str(e).strip().splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict):
        raise AsrError(f"{path}: not an asr checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt


def model_args(model: CTCModel, cfg: ModelConfig) -> dict:
    """What a checkpoint needs to rebuild ``model``."""
    return {"config": to_dict(cfg), "input_dim": model.input_dim, "vocab_size": model.vocab_size}


def model_from_checkpoint(ckpt: dict, where: str = "checkpoint") -> tuple[CTCModel, ModelConfig]:
    """Rebuild the network stored in a checkpoint dict (``model`` state + ``model_args``)."""
    if "model" not in ckpt or "model_args" not in ckpt:
        raise AsrError(f"{where}: not an asr checkpoint (no model/model_args)")
    args = ckpt["model_args"]
    cfg = from_dict(ModelConfig, args["config"], f"{where}: model")
    model = build_model(cfg, args["input_dim"], args["vocab_size"])
    model.load_state_dict(ckpt["model"])
    return model, cfg


def _rng_state() -> dict:
    """Every RNG's state as tensors and plain types (a checkpoint must load with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    """Restore what :func:`_rng_state` saved."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(
    path: Path, model: CTCModel, margs: dict, opt: Any, schedule: Any, scaler: Any, state: dict, config: dict
) -> None:
    """``last.pt``: weights, optimizer, schedule, AMP scaler, the run's ``state`` and every RNG."""
    save_checkpoint(
        {
            "model": model.state_dict(),
            "model_args": margs,
            "optimizer": opt.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "state": state,
            "rng": _rng_state(),
            "config": config,
        },
        path,
    )


def load_train_state(path: Path, model: CTCModel, opt: Any, schedule: Any, scaler: Any) -> dict:
    """Restore what :func:`save_train_state` wrote into the given objects and every RNG; returns ``state``."""
    ckpt = load_checkpoint(path)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    schedule.load_state_dict(ckpt["schedule"])
    scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"])
    return ckpt["state"]


def save_epoch(exp_dir: Path, epoch: int, model: CTCModel, margs: dict, dev_loss: float, dev_cer: float) -> None:
    """``epoch-N.pt``: the weights after epoch ``epoch`` (1-based) and its dev scores."""
    ckpt = {"model": model.state_dict(), "model_args": margs, "epoch": epoch, "dev_loss": dev_loss, "dev_cer": dev_cer}
    save_checkpoint(ckpt, exp_dir / f"epoch-{epoch}.pt")


def choose_epochs(history: list[dict], how: str, n: int, metric: str) -> list[int]:
    """Epochs whose weights make ``final.pt``: the best ``n`` by ``metric`` (``dev_cer`` or ``dev_loss``,
    lower is better; ties: the later epoch), the last ``n``, or with ``how == "none"`` just the last epoch
    (its weights as they are)."""
    if metric not in ("dev_cer", "dev_loss"):
        raise AsrError(f"average by {metric!r}: expected dev_cer or dev_loss")
    epochs = [r["epoch"] for r in history]
    if not epochs:
        raise AsrError("no finished epoch to make final.pt from")
    if how == "none":
        return [epochs[-1]]
    if how == "best":
        ranked = sorted(epochs, key=lambda e: (history[e - 1][metric], -e))
    else:
        ranked = epochs[::-1]
    return sorted(ranked[: max(1, n)])


def average_checkpoints(exp_dir: Path, history: list[dict], how: str, n: int, metric: str) -> tuple[dict, list[int]]:
    """Mean of the weights of the epochs :func:`choose_epochs` picks (``exp_dir/epoch-N.pt``)."""
    chosen = choose_epochs(history, how, n, metric)
    avg: dict[str, torch.Tensor] = {}
    for e in chosen:
        state = load_checkpoint(exp_dir / f"epoch-{e}.pt")["model"]
        for k, v in state.items():
            if v.is_floating_point():
                avg[k] = avg[k] + v.double() if k in avg else v.double()
            else:
                avg[k] = v
    return {k: (v / len(chosen)).float() if v.is_floating_point() else v for k, v in avg.items()}, chosen


def save_final(
    exp_dir: Path, history: list[dict], how: str, n: int, metric: str, margs: dict, config: dict
) -> list[int]:
    """``final.pt`` from :func:`average_checkpoints`; returns the epochs averaged."""
    state, chosen = average_checkpoints(exp_dir, history, how, n, metric)
    save_checkpoint(
        {"model": state, "model_args": margs, "averaged_epochs": chosen, "config": config}, exp_dir / "final.pt"
    )
    return chosen
