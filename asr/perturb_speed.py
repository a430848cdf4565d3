"""``asr perturb-speed SRC DST --factor F``: a copy of a data dir whose audio is played F times faster
(tempo and pitch change together, like sox ``speed``; Kaldi's ``perturb_data_dir_speed.sh``), with
utterance, speaker and recording ids prefixed ``sp{F}-`` and segment times divided by F.

The perturbed audio is resampled once and written as FLAC (see :mod:`asr.audio_copy`); factor 1.0 reuses
the source wav.scp entries unchanged (no copy of the audio). Speed perturbation of stored features (for
corpora without audio) is :mod:`asr.perturb_feats`.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
from pathlib import Path

import torch
import torchaudio.functional as AF
from tqdm import tqdm

from asr.audio import load_wav_scp_entry
from asr.audio_copy import audio_copy_dirs, init_worker, write_flac
from asr.datadir import DataDir, Segment, write_data_dir
from asr.errors import AsrError
from asr.lock import hold

log = logging.getLogger(__name__)


def speed_prefix(factor: float) -> str:
    """``sp0.9-``, ``sp1.0-``, ``sp1.1-`` (Kaldi's naming)."""
    return f"sp{float(factor)!r}-"


def perturb_wave(wave: torch.Tensor, factor: float, sample_rate: int) -> torch.Tensor:
    """Play ``wave`` (T,) ``factor`` times faster: read it as if sampled at ``rate * factor``, resample.

    Returns (about T / factor,) at the same rate.
    """
    if factor == 1.0:
        return wave
    return AF.resample(wave, int(round(sample_rate * factor)), sample_rate)


def _perturb_one(job: tuple[str, str, str, float, int]) -> tuple[str, str | None]:
    reco, value, out, factor, rate = job
    try:
        wave = perturb_wave(load_wav_scp_entry(value, rate, name=reco), factor, rate)
    except AsrError as e:
        return reco, str(e)
    write_flac(out, wave, rate)
    return reco, None


def perturb_speed(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    factor: float,
    sample_rate: int = 16000,
    nj: int = 1,
    progress: bool = True,
) -> tuple[Path, list[str]]:
    """Write the speed-perturbed copy of data dir ``src`` to ``dst``. Returns (dst, skipped recordings).

    Recordings that cannot be read are skipped with a warning line each, with their utterances.
    """
    if not 0.5 <= factor <= 2.0:
        raise AsrError(f"speed factor {factor}: expected a value in [0.5, 2.0], e.g. 0.9 or 1.1")
    data, dst = audio_copy_dirs(src, dst, "speed perturbation")
    with hold(dst, "asr perturb-speed"):
        return _write_speed_copy(data, dst, factor, sample_rate, nj, progress)


def _write_speed_copy(
    data: DataDir, dst: Path, factor: float, sample_rate: int, nj: int, progress: bool
) -> tuple[Path, list[str]]:
    pre = speed_prefix(factor)
    bad: list[str] = []
    if factor == 1.0:
        wav_scp = {pre + r: v for r, v in data.wav_scp.items()}
    else:
        wav_dir = (dst / "wav").absolute()
        wav_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(r, v, str(wav_dir / f"{pre}{r}.flac"), factor, sample_rate) for r, v in data.wav_scp.items()]
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = ctx.Pool(nj, initializer=init_worker) if nj > 1 else None
        results = pool.imap_unordered(_perturb_one, jobs, chunksize=4) if pool else map(_perturb_one, jobs)
        wav_scp = {}
        try:
            for reco, err in tqdm(
                results,
                total=len(jobs),
                desc=f"perturb-speed {factor}",
                unit="rec",
                disable=None if progress else True,
                leave=False,
            ):
                if err:
                    log.warning("perturb-speed: skipping %s", err)
                    bad.append(reco)
                else:
                    wav_scp[pre + reco] = str(wav_dir / f"{pre}{reco}.flac")
        finally:
            if pool:
                pool.close()
                pool.join()
    if not wav_scp:
        raise AsrError(f"{data.path}: no recording could be perturbed")
    if data.segments is not None:
        segs = {
            pre + u: Segment(pre + s.reco, s.start / factor, s.end / factor)
            for u, s in data.segments.items()
            if pre + s.reco in wav_scp
        }
        keep = {u[len(pre) :] for u in segs}
    else:
        segs, keep = None, {u for u in data.utts if pre + u in wav_scp}
    write_data_dir(
        dst,
        wav_scp=wav_scp,
        segments=segs,
        text={pre + u: t for u, t in data.text.items() if u in keep} if data.text is not None else None,
        utt2spk={pre + u: pre + s for u, s in data.utt2spk.items() if u in keep},
        reco2dur={pre + r: d / factor for r, d in data.reco2dur.items() if pre + r in wav_scp}
        if data.reco2dur is not None
        else None,
    )
    return dst, sorted(bad)


def _cmd_perturb_speed(args: argparse.Namespace) -> int:
    dst, bad = perturb_speed(args.src, args.dst, args.factor, args.sample_rate, args.nj, not args.no_progress)
    n = len(DataDir.load(dst).utts)
    print(
        f"perturb-speed {args.src} -> {dst}: factor {args.factor}, {n} utterances"
        + (f"; skipped {len(bad)} recording(s): {', '.join(bad[:10])}" if bad else "")
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perturb-speed", help="speed-perturbed copy of a data dir (ids prefixed sp{F}-)")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--factor", type=float, required=True, help="speed factor, e.g. 0.9 or 1.1")
    p.add_argument("--sample-rate", type=int, default=16000, help="rate of the written FLAC audio")
    p.add_argument("--nj", type=int, default=1, help="parallel processes")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_perturb_speed)
