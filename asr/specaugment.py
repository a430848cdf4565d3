"""SpecAugment (Park et al., "SpecAugment", Interspeech 2019): frequency masks, time masks and optional
time warp on ``(T, D)`` or ``(B, T, D)`` features.

Applied after CMVN, inside the feature pipeline's training hook (:mod:`asr.augment`), before deltas and
frame stacking; masked values are set to ``cfg.fill`` (0 = the normalised mean). Padding frames beyond
``lengths`` are never touched, so a padded batch gives the same result per utterance as it would alone
(given the same draws).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


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
