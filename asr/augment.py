"""The training-time augmentation hook: what happens to one utterance's normalised frames in training.

:func:`augment_frames` runs VTLP (:mod:`asr.vtlp`) and then SpecAugment (:mod:`asr.specaugment`); the
feature pipeline calls it after CMVN and before deltas and frame stacking. Data-dir augmentations that
write new copies of a training set live beside it: speed perturbation of audio in
:mod:`asr.perturb_speed`, of stored features in :mod:`asr.perturb_feats`, additive noise in :mod:`asr.noise`.
"""

from __future__ import annotations

import torch

from asr.specaugment import SpecAugConfig, spec_augment
from asr.vtlp import VtlpConfig, freq_warp


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
