"""VTLP-style frequency warping (Jaitly & Hinton, "Vocal Tract Length Perturbation (VTLP) improves speech
recognition", 2013) of log-mel frames ``(..., D)`` along the bin axis, a speaker-robustness augmentation.

:func:`freq_warp` warps with a given factor; :func:`asr.augment.augment_frames` draws one per utterance
during training. Fbank features only (:func:`vtlp_first_bin` refuses MFCC and precomputed features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asr.errors import AsrError
from asr.features import FeatureConfig


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
