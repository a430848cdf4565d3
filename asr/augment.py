"""Training-time augmentation: SpecAugment on features, speed perturbation of data dirs.

* ``spec_augment(x, lengths, cfg)``: frequency masks, time masks and optional time warp (Park et al.,
  "SpecAugment", Interspeech 2019) on ``(T, D)`` or ``(B, T, D)`` features, applied after CMVN (masked
  values are set to ``cfg.fill``, 0 = the normalised mean). Padding frames beyond ``lengths`` are never
  touched, so a padded batch gives the same result per utterance as it would alone (given the same draws).
* ``freq_warp(x, alpha)``: VTLP-style frequency warping (Jaitly & Hinton, "Vocal Tract Length
  Perturbation (VTLP) improves speech recognition", 2013) of ``(..., D)`` log-mel frames along the bin
  axis; ``augment_frames`` draws alpha per utterance and then runs SpecAugment (the training hook).
* ``asr perturb-speed SRC DST --factor F``: a copy of a data dir whose audio is played F times faster
  (tempo and pitch change together, like sox ``speed``; Kaldi's ``perturb_data_dir_speed.sh``), with
  utterance, speaker and recording ids prefixed ``sp{F}-`` and segment times divided by F.

Additive noise is in :mod:`asr.noise`, speed perturbation of stored features in :mod:`asr.perturb_feats`.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from tqdm import tqdm

from asr.atomic import atomic_path
from asr.audio import load_wav_scp_entry
from asr.datadir import DataDir, Segment, write_data_dir
from asr.errors import AsrError
from asr.features import FeatureConfig
from asr.lock import hold
from asr.make_feats import check_audio_dir

log = logging.getLogger(__name__)


@dataclass
class SpecAugConfig:
    """SpecAugment policy. Widths are maxima; each mask's width is drawn uniformly from ``[0, max]``."""

    freq_masks: int = 2
    freq_width: int = 27  # F, in feature bins
    time_masks: int = 2
    time_width: int = 40  # T, in frames
    time_width_ratio: float = 0.2  # p: a time mask covers at most this share of the utterance
    time_warp: int = 0  # W, in frames; 0 = no warping (it rarely helps CTC much and costs a resample)
    fill: float = 0.0

    def __post_init__(self) -> None:
        if min(self.freq_masks, self.freq_width, self.time_masks, self.time_width, self.time_warp) < 0:
            raise ValueError("mask counts, widths and time_warp must be >= 0")
        if not 0.0 <= self.time_width_ratio <= 1.0:
            raise ValueError(f"time_width_ratio must be in [0, 1], got {self.time_width_ratio}")


# The name tests/test_config.py looks up; train.py uses SpecAugConfig. Same class.
SpecAugmentConfig = SpecAugConfig


def _rand_int(high: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Uniform integers in ``[0, high]`` (inclusive), elementwise for a LongTensor ``high``."""
    u = torch.rand(high.shape, generator=gen)
    return (u * (high + 1).double()).long().clamp_(max=high)


def _masks(
    lengths: torch.Tensor, size: int, count: int, max_width: torch.Tensor, gen: torch.Generator | None
) -> torch.Tensor:
    """``(B, size)`` boolean: ``count`` random spans per row inside ``[0, lengths[b])``."""
    pos = torch.arange(size)
    out = torch.zeros(lengths.numel(), size, dtype=torch.bool)
    for _ in range(count):
        width = _rand_int(torch.minimum(max_width, lengths), gen)
        start = _rand_int(lengths - width, gen)
        out |= (pos >= start[:, None]) & (pos < (start + width)[:, None])
    return out


def time_warp(x: torch.Tensor, window: int, gen: torch.Generator | None = None) -> torch.Tensor:
    """Warp ``x`` (T, D) in time: a random point c moves by w in [-W, W]; both sides are stretched linearly.

    Returns (T, D). Utterances shorter than ``2W + 2`` frames are returned unchanged.
    """
    t = x.shape[0]
    if window <= 0 or t < 2 * window + 2:
        return x
    c = int(torch.randint(window, t - window, (1,), generator=gen))
    w = int(torch.randint(-window, window + 1, (1,), generator=gen))
    if w == 0:
        return x
    left = F.interpolate(x[:c].T.unsqueeze(0), size=c + w, mode="linear", align_corners=False)
    right = F.interpolate(x[c:].T.unsqueeze(0), size=t - c - w, mode="linear", align_corners=False)
    return torch.cat([left, right], dim=2)[0].T


def spec_augment(
    x: torch.Tensor,
    lengths: torch.Tensor | None = None,
    cfg: SpecAugConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment ``x`` (T, D) or (B, T, D) with valid lengths (B,) (default: all T). Returns a new tensor.

    Order as in the paper: time warp, then frequency masks, then time masks.
    """
    cfg = cfg or SpecAugConfig()
    single = x.dim() == 2
    xb = x.unsqueeze(0) if single else x
    b, t, d = xb.shape
    lens = torch.full((b,), t, dtype=torch.long) if lengths is None else lengths.to("cpu", torch.long)
    out = xb.clone()
    if cfg.time_warp > 0:
        for i in range(b):
            n = int(lens[i])
            out[i, :n] = time_warp(out[i, :n], cfg.time_warp, generator)
    if cfg.freq_masks and cfg.freq_width:
        fmask = _masks(
            torch.full((b,), d, dtype=torch.long),
            d,
            cfg.freq_masks,
            torch.full((b,), cfg.freq_width, dtype=torch.long),
            generator,
        )
        valid = torch.arange(t)[None, :] < lens[:, None]  # (B, T)
        out.masked_fill_((valid[:, :, None] & fmask[:, None, :].to(valid.device)).to(out.device), cfg.fill)
    if cfg.time_masks and cfg.time_width:
        max_w = torch.minimum(
            torch.full((b,), cfg.time_width, dtype=torch.long), (lens.double() * cfg.time_width_ratio).long()
        )
        tmask = _masks(lens, t, cfg.time_masks, max_w, generator)
        out.masked_fill_(tmask[:, :, None].to(out.device), cfg.fill)
    return out[0] if single else out


# ---------------------------------------------------------------- VTLP


@dataclass
class VtlpConfig:
    """Per-utterance warp factor alpha, uniform in ``[low, high]``; ``boundary_ratio`` is the knee.

    Jaitly & Hinton put the knee at 4800 Hz of an 8 kHz band, which on the mel scale (20 Hz to 8 kHz)
    is 0.8 of the bin axis: hence the default.
    """

    enabled: bool = False
    low: float = 0.9
    high: float = 1.1
    boundary_ratio: float = 0.8

    def __post_init__(self) -> None:
        if not 0.0 < self.low <= self.high:
            raise ValueError(f"VTLP needs 0 < low <= high, got low={self.low} high={self.high}")
        if not 0.0 < self.boundary_ratio < 1.0:
            raise ValueError(f"boundary_ratio must be in (0, 1), got {self.boundary_ratio}")


def vtlp_first_bin(feature_cfg: FeatureConfig) -> int:
    """Index of the first mel bin of features made with ``feature_cfg``: 1 with ``use_energy`` (Kaldi
    puts log energy first, and energy has no frequency to warp), else 0.

    Raises AsrError for MFCC or precomputed features: cepstra are not bins on a frequency axis, and
    precomputed features say nothing about what they are, so warping them would be silent noise.
    """
    if feature_cfg.kind != "fbank":
        raise AsrError(
            f"VTLP warps log-mel filterbank bins; these features are kind: {feature_cfg.kind} "
            "(make fbank features, or turn vtlp off)"
        )
    return int(feature_cfg.use_energy)


def warp_sources(num_bins: int, alpha: float, boundary_ratio: float = 0.8) -> torch.Tensor:
    """Where each output bin reads from: ``(num_bins,)`` float64 positions in ``[0, num_bins - 1]``.

    The forward warp (Jaitly & Hinton eq. 1, on bin positions with top ``T = num_bins - 1`` and knee
    ``b = boundary_ratio * T``) is ``w(f) = alpha * f`` up to ``f0 = b * min(alpha, 1) / alpha``, then the
    straight line from ``(f0, alpha * f0)`` to ``(T, T)``. Output bin j takes the input at ``w^-1(j)``, so
    alpha > 1 moves spectral content up (a shorter vocal tract) and both ends of the axis stay put.
    """
    top = float(num_bins - 1)
    j = torch.arange(num_bins, dtype=torch.float64)
    if num_bins < 2 or alpha == 1.0:
        return j
    knee_in = boundary_ratio * top * min(alpha, 1.0) / alpha
    knee_out = knee_in * alpha
    upper = top - (top - knee_in) / (top - knee_out) * (top - j)
    return torch.where(j <= knee_out, j / alpha, upper).clamp_(0.0, top)


def freq_warp(x: torch.Tensor, alpha: float, boundary: float = 0.8, first_bin: int = 0) -> torch.Tensor:
    """VTLP-warp log-mel frames ``x`` (..., D), e.g. (N, D), along the last axis; returns the same shape.

    Bins ``first_bin..D-1`` are resampled by linear interpolation at :func:`warp_sources` positions
    (``boundary`` is the knee as a share of the bin axis); bins before ``first_bin`` (log energy) are
    kept. For fbank features only (see :func:`vtlp_first_bin`). ``alpha == 1`` returns ``x`` itself.

    Jaitly & Hinton warp the linear spectrum before the mel filters; warping the (normalised) log-mel
    bins instead works on stored features at load time, at the cost of ignoring the filters' overlap.
    """
    if alpha <= 0:
        raise ValueError(f"warp factor must be > 0, got {alpha}")
    d = x.shape[-1] - first_bin
    if alpha == 1.0 or d < 2:
        return x
    pos = warp_sources(d, alpha, boundary)
    lo = pos.floor().long().clamp_(max=d - 2)
    frac = (pos - lo).to(x.dtype)
    bins = x[..., first_bin:]
    warped = bins[..., lo] * (1 - frac) + bins[..., lo + 1] * frac
    return torch.cat([x[..., :first_bin], warped], dim=-1)


def augment_frames(
    x: torch.Tensor,
    specaug_cfg: SpecAugConfig | None = None,
    vtlp_cfg: VtlpConfig | None = None,
    generator: torch.Generator | None = None,
    first_bin: int = 0,
) -> torch.Tensor:
    """Training-time augmentation of one utterance's normalised frames ``x`` (N, D) -> (N, D).

    VTLP (when ``vtlp_cfg`` is given and enabled; alpha uniform in ``[low, high]``) and then SpecAugment
    (when ``specaug_cfg`` is given), so masks are not smeared by the warp. Every draw comes from
    ``generator`` or, when None, the global torch RNG, which training checkpoints save and restore.
    ``first_bin``: from :func:`vtlp_first_bin`.
    """
    if vtlp_cfg is not None and vtlp_cfg.enabled:
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        x = freq_warp(x, vtlp_cfg.low + (vtlp_cfg.high - vtlp_cfg.low) * u, vtlp_cfg.boundary_ratio, first_bin)
    if specaug_cfg is not None:
        x = spec_augment(x, cfg=specaug_cfg, generator=generator)
    return x


# ---------------------------------------------------------------- speed perturbation

# Realisation: the perturbed audio is resampled once and written as 16-bit FLAC under DST/wav/, and
# DST/wav.scp points at those files. Kaldi instead writes ``sox ... speed F |`` pipes into wav.scp, but
# sox is not installed everywhere, and a pipe into Python would start an interpreter (and torch) for
# every read of every utterance. FLAC is lossless at 16 bits, about half the size of WAV, and libsndfile
# decodes it quickly; the data dir stays a plain path-based wav.scp that any tool can read. Factor 1.0
# reuses the source wav.scp entries unchanged (no copy of the audio).


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


def write_flac(path: str | os.PathLike, wave: torch.Tensor, rate: int) -> None:
    """Write ``wave`` (T,) in [-1, 1] atomically as 16-bit FLAC (see the realisation note above)."""
    with atomic_path(path) as tmp:
        sf.write(tmp, np.clip(wave.numpy(), -1.0, 1.0), rate, format="FLAC", subtype="PCM_16")


def init_worker() -> None:
    """Pool initializer of the data-dir jobs: one torch thread per process, ``--nj`` is the parallelism."""
    torch.set_num_threads(1)


def audio_copy_dirs(src: str | Path, dst: str | Path, what: str) -> tuple[DataDir, Path]:
    """Checks shared by the jobs that write a modified copy of a data dir's audio: the loaded source
    (which must have readable audio) and the created destination, which must be another dir."""
    data = DataDir.load(src)
    if data.wav_scp is None:
        raise AsrError(f"{data.path}/wav.scp: no such file ({what} needs audio)")
    check_audio_dir(data.path)
    dst = Path(dst)
    if dst.resolve() == data.path.resolve():
        raise AsrError(f"{dst}: destination must differ from the source")
    dst.mkdir(parents=True, exist_ok=True)
    return data, dst


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
