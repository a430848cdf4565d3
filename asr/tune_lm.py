"""``asr tune-lm``: pick the LM weight (alpha), word bonus (beta) and OOV penalty on a dev set, and keep them.

The grid point with the lowest dev %WER wins; among equals the one nearest the configured weights
(``--conf``/``--set``), so a dev set that cannot tell them apart leaves them where they were. The
model's posteriors are computed once; each grid point is one beam search over them. Results go to
``EXP/tune_lm_<dev>/results.tsv`` and ``best.yaml``, and the winner is installed in the model dir,
which is what makes the tuning stick:

- ``EXP/lm.arpa``: a copy of the LM (the model dir describes itself and outlives data/lm);
- ``EXP/lm_tuned.yaml``: ``lm`` (file name in EXP), ``sha256`` of it, ``alpha``, ``beta``,
  ``unk_penalty``, the dev set and its %WER.

``asr decode`` and ``asr transcribe`` then use them by default (:func:`asr.lm_tuned.apply_tuned`): with ``--lm`` of
the same content (the recipe's data/lm/lm.arpa) they take the tuned weights; without ``--lm`` and
without ``--decoder greedy`` they search with the model dir's LM. Precedence, highest first:
``--set`` > the tuned weights > ``--conf`` > built-in defaults.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import shutil
from pathlib import Path

import torch

from asr.atomic import atomic_open, atomic_path
from asr.config import dump
from asr.decoders import DecodeConfig
from asr.errors import AsrError
from asr.lm_tuned import TUNED, sha256

log = logging.getLogger(__name__)

Batch = tuple[list[str], torch.Tensor, torch.Tensor]  # (utts, log_probs (B, T, V), lengths (B,))


def grid_search(
    batches: list[Batch],
    refs: dict[str, str],
    symbols: list[str],
    cfg: DecodeConfig,
    lm,
    alphas: list[float],
    betas: list[float],
    penalties: list[float],
) -> list[tuple[float, float, float, float]]:
    """``(wer %, alpha, beta, unk_penalty)`` for every grid point, in grid order.

    ``batches`` hold the dev set's posteriors: ``log_probs`` (B, T, V) with ``lengths`` (B,).
    """
    from asr.decoders.beam import BeamSearchDecoder
    from asr.scoring import score

    rows = []
    for alpha, beta, pen in itertools.product(alphas, betas, penalties):
        cfg.alpha, cfg.beta, cfg.unk_penalty = alpha, beta, pen
        dec = BeamSearchDecoder(symbols, cfg, lm=lm)
        hyp = {}
        for names, lp, lens in batches:
            for u, h in zip(names, dec.decode(lp, lens), strict=True):
                hyp[u] = " ".join(h[0].words)
        res = score(refs, hyp)
        wer = 100.0 * res.totals()["errors"] / max(res.ref_words, 1)
        rows.append((wer, alpha, beta, pen))
        log.info("alpha %.3g beta %.3g unk_penalty %.3g: WER %.2f %%", alpha, beta, pen, wer)
    return rows


def best(
    rows: list[tuple[float, float, float, float]], prior: tuple[float, float, float] | None = None
) -> tuple[float, float, float, float]:
    """The row of lowest WER. Among equals, the one nearest the configured ``prior`` (alpha, beta,
    unk_penalty): a dev set that cannot tell the weights apart should not move them (a small or
    easy dev set often scores the whole grid alike). Without a prior, the first in grid order."""
    low = min(r[0] for r in rows)
    ties = [r for r in rows if r[0] == low]
    if prior is None:
        return ties[0]
    return min(ties, key=lambda r: sum(abs(a - b) for a, b in zip(r[1:], prior, strict=True)))


def install(exp_dir: Path, lm_path: str | Path, row: tuple[float, float, float, float], dev: str) -> Path:
    """Copy the LM into ``exp_dir`` and write ``lm_tuned.yaml`` (atomically); returns its path."""
    wer, alpha, beta, pen = row
    target = exp_dir / "lm.arpa"
    if Path(lm_path).resolve() != target.resolve():
        with atomic_path(target) as tmp:
            shutil.copyfile(lm_path, tmp)
    info = {"lm": target.name, "sha256": sha256(target), "alpha": alpha, "beta": beta, "unk_penalty": pen,
            "tuned_on": dev, "dev_wer": round(wer, 2)}
    dump(info, exp_dir / TUNED)
    return exp_dir / TUNED


def _cmd_tune_lm(args: argparse.Namespace) -> int:
    from asr.datadir import DataDir
    from asr.decode import _config
    from asr.lm.backends import load_lm
    from asr.model_inputs import log_probs_of
    from asr.modeldir import ModelDir

    exp_dir, data_dir = Path(args.exp_dir), Path(args.data_dir)
    args.decoder, args.nbest = "beam", None
    cfg = _config(args)
    if not cfg.lm:
        raise AsrError("tune-lm needs --lm (or lm: in --conf)")
    if cfg.adapt_epochs:
        raise AsrError("tune-lm: adapt_epochs > 0 is not tuned with (the grid decodes the model as trained); "
                       "give it to 'asr decode'")
    data = DataDir.load(data_dir)
    if not data.text:
        raise AsrError(f"{data_dir}/text: needed to tune on")
    md = ModelDir.load(exp_dir, args.checkpoint)
    batches = [(n, lp, lens) for n, lp, lens, _ in log_probs_of(md, data_dir, None, args.batch_size) if n]
    prior = (cfg.alpha, cfg.beta, cfg.unk_penalty)
    rows = grid_search(batches, data.text, md.tokens.symbols, cfg, load_lm(cfg.lm), args.alpha, args.beta,
                       args.unk_penalty)
    row = best(rows, prior)
    out_dir = Path(args.out) if args.out else exp_dir / f"tune_lm_{data_dir.name}"
    with atomic_open(out_dir / "results.tsv", "w") as f:
        f.write("alpha\tbeta\tunk_penalty\twer\n")
        for w, a, b, p in rows:
            f.write(f"{a}\t{b}\t{p}\t{w:.2f}\n")
    cfg.alpha, cfg.beta, cfg.unk_penalty = row[1:]
    dump(cfg, out_dir / "best.yaml")
    where = f"{out_dir}/best.yaml"
    if not args.no_install:
        where += f" and {install(exp_dir, cfg.lm, row, str(data_dir))}"
    print(f"best: alpha {row[1]} beta {row[2]} unk_penalty {row[3]} WER {row[0]:.2f} % (written to {where})")
    return 0


def register(subparsers) -> None:
    from asr.decode import _common

    p = subparsers.add_parser("tune-lm", help="pick LM weight, word bonus and OOV penalty on a dev set")
    _common(p)
    p.add_argument("--alpha", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0, 1.5])
    p.add_argument("--beta", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    p.add_argument("--unk-penalty", type=float, nargs="+", default=[-10.0])
    p.add_argument("--no-install", action="store_true",
                   help="only report: do not copy the LM and the winning weights into the model dir")
    p.set_defaults(func=_cmd_tune_lm)
