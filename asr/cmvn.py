"""Cepstral mean and variance normalisation: Kaldi-style statistics, computed, stored and applied.

Statistics are Kaldi's ``(2, D+1)`` float64 matrix (``compute-cmvn-stats``)::

    row 0: sum_t x_t[0..D-1], count
    row 1: sum_t x_t[0..D-1]^2, 0

They are additive (a speaker's stats plus another's are the stats of both), so global stats are the sum
of the per-speaker ones. ``asr compute-cmvn DATA`` writes ``DATA/cmvn_global.ark`` (one matrix, key
``global``) and with ``--per-speaker`` also ``DATA/cmvn.ark`` + ``DATA/cmvn.scp`` (key = speaker), all
readable by kaldiio and by Kaldi's ``apply-cmvn``. Applying follows ``apply-cmvn``: mean from the sums,
variance ``sumsq/count - mean^2`` floored at 1e-10, ``y = (x - mean) / sqrt(var)``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import kaldiio
import numpy as np
import torch
from kaldiio.matio import write_array

from asr.atomic import fsync_dir, fsync_file
from asr.datadir import DataDir, write_kv
from asr.errors import AsrError
from asr.lock import hold

log = logging.getLogger(__name__)

VAR_FLOOR = 1e-10
GLOBAL_KEY = "global"


def accumulate(feats: torch.Tensor | np.ndarray, stats: np.ndarray | None = None) -> np.ndarray:
    """Add ``feats`` (N, D) to ``stats`` (2, D+1) float64 (new zero stats when None); returns the stats."""
    x = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    if x.ndim != 2:
        raise ValueError(f"expected features (N, D), got shape {x.shape}")
    x = x.astype(np.float64, copy=False)
    dim = x.shape[1]
    if stats is None:
        stats = np.zeros((2, dim + 1), dtype=np.float64)
    elif stats.shape != (2, dim + 1):
        raise AsrError(f"CMVN stats of shape {stats.shape} do not fit {dim}-dim features")
    stats[0, :dim] += x.sum(axis=0)
    stats[0, dim] += x.shape[0]
    stats[1, :dim] += np.square(x).sum(axis=0)
    return stats


def mean_scale(stats: np.ndarray, norm_vars: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (D,), scale (D,))`` float32 such that ``(x - mean) * scale`` is the normalised x."""
    stats = np.asarray(stats, dtype=np.float64)
    count = stats[0, -1]
    if stats.ndim != 2 or stats.shape[0] != 2 or count < 1:
        raise AsrError(f"CMVN stats of shape {stats.shape} with count {count}: not usable")
    mean = stats[0, :-1] / count
    if norm_vars:
        var = np.maximum(stats[1, :-1] / count - np.square(mean), VAR_FLOOR)
        scale = 1.0 / np.sqrt(var)
    else:
        scale = np.ones_like(mean)
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(scale.astype(np.float32))


def apply_cmvn(feats: torch.Tensor, stats: np.ndarray, norm_vars: bool = True) -> torch.Tensor:
    """Normalise ``feats`` (N, D) with ``stats`` (2, D+1); returns (N, D) float32."""
    mean, scale = mean_scale(stats, norm_vars)
    if feats.shape[-1] != mean.numel():
        raise AsrError(f"CMVN stats are {mean.numel()}-dim but features are {feats.shape[-1]}-dim")
    return (feats.float() - mean) * scale


def utterance_cmvn(feats: torch.Tensor, norm_vars: bool = True) -> torch.Tensor:
    """Normalise ``feats`` (N, D) with its own statistics (per-utterance CMVN). Returns (N, D)."""
    if feats.shape[0] == 0:
        return feats.float()
    return apply_cmvn(feats, accumulate(feats), norm_vars)


@dataclass
class Cmvn:
    """Global stats and optional per-speaker stats, each ``(2, D+1)`` float64.

    ``stats_for(spk)`` gives the speaker's stats, or the global ones for ``spk=None``; a speaker
    without stats is an error, never a silent fallback to other statistics.
    ``mean_scale_for`` caches the float32 mean/scale so applying costs one subtract and one multiply.
    """

    global_stats: np.ndarray | None = None
    speaker_stats: dict[str, np.ndarray] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(cls, data_dir: str | os.PathLike, per_speaker: bool = False) -> Cmvn:
        """Read ``cmvn_global.ark`` and, when present, ``cmvn.scp`` of a data (or model) dir.

        ``per_speaker=True`` (a ``cmvn: speaker`` pipeline over a data dir) requires ``cmvn.scp``: falling
        back to global statistics would silently normalise differently from training.
        """
        d = Path(data_dir)
        g = d / "cmvn_global.ark"
        if per_speaker and not (d / "cmvn.scp").is_file():
            raise AsrError(
                f"{d}/cmvn.scp: no such file, but features are normalised per speaker (cmvn: speaker); "
                f"run 'asr compute-cmvn {d} --per-speaker'"
            )
        if not g.is_file() and not (d / "cmvn.scp").is_file():
            raise AsrError(f"{d}: no cmvn_global.ark or cmvn.scp; run 'asr compute-cmvn {d}'")
        out = cls(global_stats=read_stats(g) if g.is_file() else None)
        if (d / "cmvn.scp").is_file():
            try:
                out.speaker_stats = {
                    k: np.asarray(v, dtype=np.float64) for k, v in kaldiio.load_scp_sequential(str(d / "cmvn.scp"))
                }
            except (OSError, ValueError) as e:
                raise AsrError(f"{d}/cmvn.scp: cannot read CMVN stats ({e})") from None
        if out.global_stats is None:
            out.global_stats = sum_stats(list(out.speaker_stats.values()))
        return out

    @property
    def dim(self) -> int:
        stats = self.global_stats if self.global_stats is not None else next(iter(self.speaker_stats.values()))
        return stats.shape[1] - 1

    def stats_for(self, spk: str | None = None) -> np.ndarray:
        """The stats of speaker ``spk``, or the global stats when ``spk`` is None."""
        if spk is None:
            if self.global_stats is None:
                raise AsrError("no global CMVN stats")
            return self.global_stats
        if spk not in self.speaker_stats:
            raise AsrError(
                f"no CMVN stats for speaker {spk} (cmvn.scp older than utt2spk? rerun 'asr compute-cmvn --per-speaker')"
            )
        return self.speaker_stats[spk]

    def mean_scale_for(self, spk: str | None, norm_vars: bool) -> tuple[torch.Tensor, torch.Tensor]:
        key = (spk, norm_vars)
        if key not in self._cache:
            self._cache[key] = mean_scale(self.stats_for(spk), norm_vars)
        return self._cache[key]


def sum_stats(stats: list[np.ndarray]) -> np.ndarray:
    if not stats:
        raise AsrError("no CMVN statistics to sum")
    return np.sum(np.stack(stats), axis=0)


def read_stats(path: str | os.PathLike) -> np.ndarray:
    """The single ``(2, D+1)`` matrix in a stats ark (e.g. ``cmvn_global.ark``)."""
    try:
        items = list(kaldiio.load_ark(str(path)))
    except (OSError, ValueError) as e:
        raise AsrError(f"{path}: cannot read CMVN stats ({e})") from None
    if len(items) != 1:
        raise AsrError(f"{path}: expected one stats matrix, found {len(items)}")
    stats = np.asarray(items[0][1], dtype=np.float64)
    if stats.ndim != 2 or stats.shape[0] != 2:
        raise AsrError(f"{path}: expected a (2, D+1) stats matrix, got {stats.shape}")
    return stats


def write_stats_ark(ark: str | os.PathLike, stats: dict[str, np.ndarray], scp: str | os.PathLike | None = None) -> None:
    """Write ``{key: (2, D+1)}`` float64 matrices to ``ark`` (and ``key ark:offset`` lines to ``scp``).

    The ark is written under a temp name and renamed; the scp (absolute ark path) is written last.
    """
    ark = Path(ark).absolute()
    fd, tmp = tempfile.mkstemp(prefix=f".{ark.name}.", suffix=".tmp", dir=ark.parent)
    offsets = {}
    try:
        with os.fdopen(fd, "wb") as f:
            for key in sorted(stats, key=lambda s: s.encode()):
                f.write(f"{key} ".encode())
                offsets[key] = f.tell()
                write_array(f, np.asarray(stats[key], dtype=np.float64))
        fsync_file(tmp)
        if scp is not None and Path(scp).exists():
            os.unlink(scp)  # a crash from here on leaves no scp rather than one pointing into a new ark
        os.replace(tmp, ark)
        fsync_dir(ark.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if scp is not None:
        write_kv(scp, {k: f"{ark}:{o}" for k, o in offsets.items()})


def compute_cmvn(data_dir: str | os.PathLike, per_speaker: bool = False) -> Cmvn:
    """Accumulate stats over ``DATA/feats.scp``; write ``cmvn_global.ark`` (+ ``cmvn.ark/.scp``)."""
    data = DataDir.load(data_dir)
    if data.feats_scp is None:
        raise AsrError(f"{data.path}/feats.scp: no such file; run 'asr make-feats {data.path}'")
    spk_stats: dict[str, np.ndarray] = {}
    missing = 0
    for utt, mat in kaldiio.load_scp_sequential(str(data.path / "feats.scp")):
        spk = data.utt2spk.get(utt)
        if spk is None:
            missing += 1
            spk = "<unknown>"
        spk_stats[spk] = accumulate(mat, spk_stats.get(spk))
    if not spk_stats:
        raise AsrError(f"{data.path}/feats.scp: no features")
    if missing:
        log.warning(
            "%s: %d utterance(s) of feats.scp not in utt2spk (counted in global stats only)", data.path, missing
        )
    cmvn = Cmvn(
        global_stats=sum_stats(list(spk_stats.values())),
        speaker_stats={s: v for s, v in spk_stats.items() if s != "<unknown>"},
    )
    with hold(data.path, "asr compute-cmvn"):  # not while make-feats (or another compute-cmvn) writes here
        write_stats_ark(data.path / "cmvn_global.ark", {GLOBAL_KEY: cmvn.global_stats})
        if per_speaker:
            write_stats_ark(data.path / "cmvn.ark", cmvn.speaker_stats, scp=data.path / "cmvn.scp")
    return cmvn


def _cmd_compute_cmvn(args: argparse.Namespace) -> int:
    cmvn = compute_cmvn(args.data_dir, per_speaker=args.per_speaker)
    frames = int(cmvn.global_stats[0, -1])
    what = (
        f"cmvn_global.ark + cmvn.ark/scp ({len(cmvn.speaker_stats)} speakers)"
        if args.per_speaker
        else "cmvn_global.ark"
    )
    print(f"compute-cmvn {args.data_dir}: {frames} frames, {cmvn.dim} dims -> {what}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compute-cmvn", help="CMVN stats of DATA/feats.scp: cmvn_global.ark (+ per speaker)")
    p.add_argument("data_dir")
    p.add_argument("--per-speaker", action="store_true", help="also write cmvn.ark/cmvn.scp keyed by speaker")
    p.set_defaults(func=_cmd_compute_cmvn)
