"""A model dir's tuned LM (``lm.arpa`` + ``lm_tuned.yaml`` from ``asr tune-lm``) and how decoding uses it.

``asr decode`` and ``asr transcribe`` call :func:`apply_tuned`: with ``--lm`` of the same content they
take the tuned weights; without ``--lm`` and without ``--decoder greedy`` they search with the model
dir's LM; a TLG graph keeps its own. Precedence, highest first: ``--set`` > the tuned weights >
``--conf`` > built-in defaults. Kept apart from :mod:`asr.tune_lm` (which decodes a dev set to tune)
so that decoding does not import the tuning command.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

from asr.config import read_yaml
from asr.decoders import DecodeConfig
from asr.errors import AsrError

log = logging.getLogger(__name__)

TUNED = "lm_tuned.yaml"
TUNED_KEYS = ("alpha", "beta", "unk_penalty")


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_tuned(exp_dir: str | Path) -> dict | None:
    """The model dir's tuned LM settings (with ``lm`` as a full path), or None when it has none."""
    path = Path(exp_dir) / TUNED
    if not path.is_file():
        return None
    info = read_yaml(path)
    missing = [k for k in ("lm", "sha256", *TUNED_KEYS) if k not in info]
    if missing:
        raise AsrError(f"{path}: missing {', '.join(missing)}; rerun 'asr tune-lm'")
    info["lm"] = str(Path(exp_dir) / info["lm"])
    if not Path(info["lm"]).is_file():
        raise AsrError(f"{info['lm']}: the tuned LM is missing from the model dir; rerun 'asr tune-lm'")
    return info


def explicit_keys(overrides: list[str] | None) -> set[str]:
    """Top-level keys set with ``--set key=value``."""
    return {kv.split("=", 1)[0].strip() for kv in overrides or [] if "=" in kv}


def named_decoder(args: argparse.Namespace, cfg: DecodeConfig) -> str | None:
    """The decoder the user chose (``--decoder``, ``--set decoder=``, or a ``--conf`` file), else None."""
    if getattr(args, "decoder", None):
        return args.decoder
    if "decoder" in explicit_keys(args.set) or getattr(args, "conf", None):
        return cfg.decoder
    return None


def apply_tuned(
    cfg: DecodeConfig, exp_dir: str | Path, explicit: set[str], lm_given: bool, decoder_named: str | None
) -> DecodeConfig:
    """Use the model dir's tuned LM settings where the user did not choose otherwise (see module doc)."""
    info = read_tuned(exp_dir)
    if info is None or decoder_named == "greedy" or cfg.decoder == "wfst":  # a graph holds its own LM
        return cfg
    if lm_given:
        if not cfg.lm or not Path(cfg.lm).is_file() or sha256(cfg.lm) != info["sha256"]:
            log.info("%s: tuned for another LM; using the configured weights for %s", exp_dir, cfg.lm)
            return cfg
    elif "lm" not in explicit:
        cfg.lm, cfg.decoder = info["lm"], "beam"
    for key in TUNED_KEYS:
        if key not in explicit:
            setattr(cfg, key, float(info[key]))
    log.info("%s: LM weights tuned on %s: alpha %g beta %g unk_penalty %g", exp_dir, info.get("tuned_on"),
             cfg.alpha, cfg.beta, cfg.unk_penalty)
    return cfg
