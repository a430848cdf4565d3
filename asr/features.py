"""Acoustic features: extraction (fbank / MFCC), storage as Kaldi ark/scp, and load-time processing.

Two halves:

* **Extraction** (``asr make-feats DATA``): ``compute_features(wave, cfg)`` turns ``(T,)`` audio into
  ``(N, D)`` log-mel filterbanks or MFCCs, Kaldi-compatible via ``torchaudio.compliance.kaldi`` (default)
  or with ``torchaudio.transforms``. ``make_feats`` writes ``feats.ark``/``feats.scp`` (kaldiio; readable
  by Kaldi), ``utt2num_frames`` and the resolved config ``feats.yaml``.
* **Load time** (``FeaturePipeline(cfg, cmvn)``): CMVN -> deltas -> frame stacking + subsampling, in
  Kaldi/EESEN order, applied when a dataset reads ``(N, D)`` stored features, giving ``(N', D')``.

A data dir with ``feats.scp`` but no ``wav.scp`` holds precomputed features (e.g. from another toolkit);
``make-feats`` leaves it alone and ``read_feature_config`` returns ``kind: precomputed`` for it.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi

from asr import cmvn as cmvn_mod
from asr.config import from_dict, load, read_yaml
from asr.errors import AsrError

log = logging.getLogger(__name__)

WINDOWS = ("povey", "hamming", "hanning", "rectangular", "blackman")


@dataclass
class FeatureConfig:
    """How features are extracted (first block) and processed at load time (second block).

    Saved as ``DATA/feats.yaml`` by make-feats and copied into the model dir, so a trained model
    carries its feature definition.
    """

    # whisper: the frozen encoder of Whisper base (asr.whisper_encoder), 512-dim at 20 ms, 16 kHz input
    kind: Literal["fbank", "mfcc", "whisper", "precomputed"] = "fbank"
    backend: Literal["kaldi", "torchaudio"] = "kaldi"
    sample_rate: int = 16000
    num_mel_bins: int = 80
    num_ceps: int = 13  # MFCC only
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    dither: float = 0.0  # off: features are bit-for-bit reproducible
    preemphasis: float = 0.97  # kaldi backend only
    window: str = "povey"  # kaldi backend: povey|hamming|hanning|rectangular|blackman; torchaudio: Hann
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0: offset from Nyquist (Kaldi convention)
    use_energy: bool = False  # kaldi fbank: prepend log energy (D = num_mel_bins + 1)
    cepstral_lifter: float = 22.0
    snip_edges: bool = True  # Kaldi default: N = 1 + (T - window) // shift
    # audio.py gives samples in [-1, 1); Kaldi reads int16 values as floats. Scaling keeps our values
    # identical to Kaldi's compute-fbank-feats output (only an additive constant in the log domain).
    waveform_scale: float = 32768.0

    cmvn: Literal["global", "speaker", "utterance", "none"] = "global"
    cmvn_norm_vars: bool = True
    delta_order: int = 0  # 0: none, 1: +deltas, 2: +deltas +delta-deltas (Kaldi add-deltas)
    delta_window: int = 2
    stack: int = 1  # frames concatenated per output frame
    subsample: int = 1  # keep every m-th stacked frame

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window {self.window!r} is not one of {', '.join(WINDOWS)}")
        if not 0 <= self.delta_order <= 2:
            raise ValueError(f"delta_order must be 0, 1 or 2, got {self.delta_order}")
        if self.delta_window < 1 or self.stack < 1 or self.subsample < 1:
            raise ValueError("delta_window, stack and subsample must be >= 1")
        if self.sample_rate <= 0 or self.frame_shift_ms <= 0 or self.frame_length_ms <= 0:
            raise ValueError("sample_rate, frame_length_ms and frame_shift_ms must be positive")
        frames = (self.sample_rate, self.frame_length_ms, self.frame_shift_ms)
        if self.kind == "whisper" and frames != (16000, 25.0, 20.0):
            # The encoder fixes these; the fields describe its output frames for every later stage.
            raise ValueError("kind: whisper needs sample_rate: 16000, frame_length_ms: 25.0, frame_shift_ms: 20.0")

    @property
    def window_samples(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def shift_samples(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    def raw_dim(self) -> int | None:
        """Dimension of the stored features (None for precomputed: read it from the data)."""
        if self.kind == "fbank":
            return self.num_mel_bins + int(self.use_energy)
        if self.kind == "mfcc":
            return self.num_ceps
        if self.kind == "whisper":
            from asr.whisper_encoder import DIM

            return DIM
        return None


def load_feature_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> FeatureConfig:
    """FeatureConfig from a YAML file (e.g. ``conf/fbank.yaml``) plus ``k=v`` overrides; defaults if None."""
    return load(FeatureConfig, path, overrides)


def read_feature_config(data_dir: str | os.PathLike) -> FeatureConfig:
    """The config the features of ``data_dir`` were made with (``feats.yaml``).

    A dir with ``feats.scp`` but no ``feats.yaml`` holds precomputed features: ``kind: precomputed``
    with the default load-time settings.
    """
    d = Path(data_dir)
    if (d / "feats.yaml").is_file():
        return from_dict(FeatureConfig, read_yaml(d / "feats.yaml"), str(d / "feats.yaml"))
    if (d / "feats.scp").is_file():
        return FeatureConfig(kind="precomputed")
    raise AsrError(f"{d}: no feats.yaml or feats.scp; run 'asr make-feats {d}'")


# ---------------------------------------------------------------- extraction


def _kaldi_kwargs(cfg: FeatureConfig) -> dict:
    return dict(
        sample_frequency=float(cfg.sample_rate),
        frame_length=cfg.frame_length_ms,
        frame_shift=cfg.frame_shift_ms,
        dither=cfg.dither,
        preemphasis_coefficient=cfg.preemphasis,
        window_type=cfg.window,
        low_freq=cfg.low_freq,
        high_freq=cfg.high_freq,
        num_mel_bins=cfg.num_mel_bins,
        snip_edges=cfg.snip_edges,
        use_energy=cfg.use_energy,
        energy_floor=0.0,
    )


def _key(cfg: FeatureConfig) -> tuple:
    """Hashable cache key: the field values in order (cheaper than dataclasses.astuple per utterance)."""
    return tuple(cfg.__dict__.values())


@functools.lru_cache(maxsize=8)
def _torchaudio_transform(key: tuple) -> torch.nn.Module:
    import torchaudio.transforms as T

    cfg = FeatureConfig(*key)
    n_fft = 1 << (cfg.window_samples - 1).bit_length()  # next power of two, like Kaldi
    high = cfg.high_freq if cfg.high_freq > 0 else cfg.sample_rate / 2 + cfg.high_freq
    mel = dict(
        n_fft=n_fft,
        win_length=cfg.window_samples,
        hop_length=cfg.shift_samples,
        f_min=cfg.low_freq,
        f_max=high,
        n_mels=cfg.num_mel_bins,
        center=not cfg.snip_edges,
        power=2.0,
        mel_scale="htk",
        norm=None,
    )
    if cfg.kind == "mfcc":
        return T.MFCC(sample_rate=cfg.sample_rate, n_mfcc=cfg.num_ceps, log_mels=True, melkwargs=mel)
    return T.MelSpectrogram(sample_rate=cfg.sample_rate, **mel)


class _KaldiFast:
    """``torchaudio.compliance.kaldi`` fbank/MFCC with the window, mel banks and DCT built once.

    torchaudio rebuilds them on every call, which is a third of the time for typical utterances. The
    operations and their order are torchaudio's, so the output is bit-identical (tested). Covers the
    usual settings (snip_edges, no dither, no energy); anything else goes through torchaudio itself.
    """

    def __init__(self, cfg: FeatureConfig):
        self.cfg, self.size, self.shift = cfg, cfg.window_samples, cfg.shift_samples
        self.padded = 1 << (self.size - 1).bit_length()
        cpu = torch.device("cpu")
        # Private helpers of the pinned torchaudio; the equality test catches any change in them.
        self.window = kaldi._feature_window_function(cfg.window, self.size, 0.42, cpu, torch.float32).unsqueeze(0)
        mel, _ = kaldi.get_mel_banks(
            cfg.num_mel_bins, self.padded, float(cfg.sample_rate), cfg.low_freq, cfg.high_freq, 100.0, -500.0, 1.0
        )
        self.mel_t = torch.nn.functional.pad(mel, (0, 1)).T  # (padded/2 + 1, bins), a view like torchaudio's
        self.eps = torch.tensor(torch.finfo(torch.float32).eps)
        if cfg.kind == "mfcc":
            self.dct = kaldi._get_dct_matrix(cfg.num_ceps, cfg.num_mel_bins)
            self.lifter = kaldi._get_lifter_coeffs(cfg.num_ceps, cfg.cepstral_lifter).unsqueeze(0)

    @staticmethod
    def handles(cfg: FeatureConfig) -> bool:
        return cfg.backend == "kaldi" and cfg.snip_edges and cfg.dither == 0.0 and not cfg.use_energy

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (T,) float32, T >= window -> (N, D)."""
        # Same arithmetic as torchaudio, but in place where it allocates a temporary (values identical).
        frames = x.unfold(0, self.size, self.shift)  # (N, window): snip_edges framing
        frames = frames - torch.mean(frames, dim=1).unsqueeze(1)
        if self.cfg.preemphasis != 0.0:
            prev = torch.cat((frames[:, :1], frames[:, :-1]), dim=1)  # = torchaudio's replicate pad
            frames.sub_(prev.mul_(self.cfg.preemphasis))
        # Windowed frames written straight into the zero-padded FFT buffer (saves a pad copy).
        padded = frames.new_zeros(frames.shape[0], self.padded)
        torch.mul(frames, self.window, out=padded[:, : self.size])
        spectrum = torch.fft.rfft(padded).abs().pow_(2.0)
        feats = torch.mm(spectrum, self.mel_t).clamp_min_(self.eps).log_()
        if self.cfg.kind == "mfcc":
            feats = feats.matmul(self.dct)
            if self.cfg.cepstral_lifter != 0.0:
                feats *= self.lifter
        return feats


@functools.lru_cache(maxsize=8)
def _kaldi_fast(key: tuple) -> _KaldiFast:
    return _KaldiFast(FeatureConfig(*key))


def compute_features(wave: torch.Tensor, cfg: FeatureConfig, name: str = "utterance") -> torch.Tensor:
    """Features of one utterance: ``wave`` (T,) float at ``cfg.sample_rate`` -> (N, D) float32.

    Raises AsrError naming ``name`` when the audio is shorter than one analysis window.
    """
    if cfg.kind == "precomputed":
        raise AsrError(f"{name}: feature kind 'precomputed' cannot be computed from audio")
    if wave.dim() != 1:
        raise AsrError(f"{name}: expected mono audio (T,), got shape {tuple(wave.shape)}")
    if wave.numel() < cfg.window_samples:
        raise AsrError(f"{name}: {wave.numel()} samples, fewer than one {cfg.window_samples}-sample window")
    if cfg.kind == "whisper":
        from asr import whisper_encoder

        return whisper_encoder.encode(wave, name)
    x = wave.float() * cfg.waveform_scale
    with torch.no_grad():
        if _KaldiFast.handles(cfg):
            feats = _kaldi_fast(_key(cfg))(x)
        elif cfg.backend == "kaldi":
            if cfg.kind == "fbank":
                feats = kaldi.fbank(x.unsqueeze(0), **_kaldi_kwargs(cfg))
            else:
                kw = _kaldi_kwargs(cfg)
                feats = kaldi.mfcc(x.unsqueeze(0), num_ceps=cfg.num_ceps, cepstral_lifter=cfg.cepstral_lifter, **kw)
        else:
            out = _torchaudio_transform(_key(cfg))(x)  # (D, N)
            feats = out.T if cfg.kind == "mfcc" else out.clamp_min(1e-10).log().T
    return feats.contiguous()


# ---------------------------------------------------------------- load-time processing


@functools.lru_cache(maxsize=8)
def delta_scales(order: int, window: int = 2) -> tuple[torch.Tensor, ...]:
    """Kaldi's ``DeltaFeatures`` filters: ``scales[i]`` (2*i*window + 1,) for orders 0..order.

    Order i is order i-1 convolved with ``j / sum_{k=-w..w} k^2`` for ``j = -w..w``, so delta-deltas
    come from the raw features in one pass (with edge frames repeated), as in ``add-deltas``.
    """
    scales = [torch.ones(1, dtype=torch.float64)]
    normalizer = sum(j * j for j in range(-window, window + 1))
    for _ in range(order):
        prev = scales[-1]
        cur = torch.zeros(prev.numel() + 2 * window, dtype=torch.float64)
        for j in range(-window, window + 1):
            cur[window + j : window + j + prev.numel()] += j * prev
        scales.append(cur / normalizer)
    return tuple(scales)


def add_deltas(feats: torch.Tensor, order: int = 2, window: int = 2) -> torch.Tensor:
    """``feats`` (N, D) -> (N, D * (order + 1)): ``[x, delta x, delta^2 x]`` like Kaldi's add-deltas."""
    if order == 0:
        return feats
    n = feats.shape[0]
    if n == 0:
        return feats.new_zeros(0, feats.shape[1] * (order + 1))
    outs = [feats]
    for s in delta_scales(order, window)[1:]:
        half = (s.numel() - 1) // 2
        idx = (torch.arange(n).unsqueeze(1) + torch.arange(-half, half + 1)).clamp_(0, n - 1)  # (N, K)
        outs.append(torch.einsum("nkd,k->nd", feats[idx], s.to(feats.dtype)))
    return torch.cat(outs, dim=1)


def stack_frames(feats: torch.Tensor, stack: int, subsample: int) -> torch.Tensor:
    """Stack and subsample: ``feats`` (N, D) -> (ceil(N / subsample), D * stack).

    Output frame j is the concatenation of input frames ``j*subsample .. j*subsample + stack - 1``; past
    the last input frame the last frame is repeated. Hence ``N' = ceil(N / m) = (N + m - 1) // m``.
    """
    if stack == 1 and subsample == 1:
        return feats
    n = feats.shape[0]
    if n == 0:
        return feats.new_zeros(0, feats.shape[1] * stack)
    starts = torch.arange(0, n, subsample)
    idx = (starts.unsqueeze(1) + torch.arange(stack)).clamp_(max=n - 1)  # (N', stack)
    return feats[idx].reshape(starts.numel(), stack * feats.shape[1])


# A loose file's stats under a per-speaker model are its own plus this many frames of the training
# set's global stats. One digit's own stats (0.3 s, half of it silence) are far from its speaker's: on two
# FSDD leave-one-speaker-out folds, greedy %WER per file was 34.4 / 49.0 with its own stats, 29.6 / 32.6
# with the global ones, 24.6 / 34.4 with this prior (RESULTS.md); a long file's chunk (3000 frames)
# outweighs it.
SPEAKER_PRIOR_FRAMES = 100


class FeaturePipeline:
    """Load-time processing of stored features: CMVN -> deltas -> stacking + subsampling.

    ``pipeline(feats (N, D), spk=None) -> (N', D')`` with ``N' = output_length(N)`` and
    ``D' = output_dim(D)``. CMVN mode is ``cfg.cmvn``:

    * ``global``: ``cmvn`` stats (a :class:`asr.cmvn.Cmvn` or a ``(2, D+1)`` array) for every utterance;
    * ``speaker``: the stats of ``spk`` from ``cmvn.speaker_stats`` (the data dir's own, as Kaldi's
      ``apply-cmvn --utt2spk``); with ``spk=None`` (a loose file at transcription, no speaker known)
      the utterance's own stats plus :data:`SPEAKER_PRIOR_FRAMES` frames' worth of the global stats,
      as Kaldi's online CMVN starts from global stats; a speaker without stats is an error;
    * ``utterance``: each utterance's own stats (``cmvn`` is not needed);
    * ``none``: features pass through.
    """

    def __init__(self, cfg: FeatureConfig, cmvn: cmvn_mod.Cmvn | np.ndarray | None = None):
        self.cfg = cfg
        if isinstance(cmvn, (np.ndarray, torch.Tensor)):
            cmvn = cmvn_mod.Cmvn(global_stats=np.asarray(cmvn, dtype=np.float64))
        if cfg.cmvn in ("global", "speaker") and cmvn is None:
            raise AsrError(
                f"feature config says cmvn: {cfg.cmvn} but no CMVN stats were given; "
                "run 'asr compute-cmvn DATA' (or set cmvn: utterance | none)"
            )
        self.cmvn = cmvn

    def output_dim(self, raw_dim: int) -> int:
        """Feature dimension after the pipeline: ``raw_dim * (delta_order + 1) * stack``."""
        return raw_dim * (self.cfg.delta_order + 1) * self.cfg.stack

    def output_length(self, n: int) -> int:
        """Frames after the pipeline: ``ceil(n / subsample)``."""
        return (n + self.cfg.subsample - 1) // self.cfg.subsample

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """``output_length`` of a LongTensor of lengths (B,)."""
        return torch.div(lengths + self.cfg.subsample - 1, self.cfg.subsample, rounding_mode="floor")

    def __call__(
        self,
        feats: torch.Tensor | np.ndarray,
        spk: str | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``feats`` (N, D) -> (N', D'). ``augment`` (training: SpecAugment) runs on the normalised
        ``(N, D)`` frames before deltas and stacking, so its masks cover whole mel bins in every
        stacked sub-frame and its widths count input frames."""
        # kaldiio may hand out read-only arrays; np.array copies (cheap next to the rest).
        x = feats.float() if isinstance(feats, torch.Tensor) else torch.from_numpy(np.array(feats, np.float32))
        if x.dim() != 2:
            raise AsrError(f"expected features (N, D), got shape {tuple(x.shape)}")
        mode = self.cfg.cmvn
        if mode == "speaker" and spk is None and self.cmvn is not None and self.cmvn.global_stats is not None:
            g = self.cmvn.global_stats
            x = cmvn_mod.apply_cmvn(x, cmvn_mod.accumulate(x) + g * (SPEAKER_PRIOR_FRAMES / g[0, -1]),
                                    self.cfg.cmvn_norm_vars)
        elif mode == "utterance" or (mode == "speaker" and spk is None):
            x = cmvn_mod.utterance_cmvn(x, self.cfg.cmvn_norm_vars)
        elif mode in ("global", "speaker"):
            mean, scale = self.cmvn.mean_scale_for(spk if mode == "speaker" else None, self.cfg.cmvn_norm_vars)
            if mean.numel() != x.shape[1]:
                raise AsrError(f"CMVN stats are {mean.numel()}-dim but features are {x.shape[1]}-dim")
            x = (x - mean) * scale
        if augment is not None:
            x = augment(x)
        x = add_deltas(x, self.cfg.delta_order, self.cfg.delta_window)
        return stack_frames(x, self.cfg.stack, self.cfg.subsample)


def load_pipeline(
    feats_dir: str | os.PathLike, cmvn_dir: str | os.PathLike | None = None, per_speaker: bool | None = None
) -> FeaturePipeline:
    """The load-time pipeline described by ``feats_dir/feats.yaml`` (a data dir or a model dir), with CMVN
    stats from ``cmvn_dir`` (default: ``feats_dir``).

    ``per_speaker`` (default: when the config says ``cmvn: speaker``) reads the per-speaker stats
    (``cmvn.scp``, an error when missing); False reads the global stats, which is what a speaker-normalised
    model dir keeps for lack of speakers. ``cmvn: utterance`` and ``none`` need no stats.
    """
    cfg = read_feature_config(feats_dir)
    if cfg.cmvn not in ("global", "speaker"):
        return FeaturePipeline(cfg)
    if per_speaker is None:
        per_speaker = cfg.cmvn == "speaker"
    return FeaturePipeline(cfg, cmvn_mod.Cmvn.load(cmvn_dir or feats_dir, per_speaker=per_speaker))
