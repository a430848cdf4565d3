"""The one place that reads audio.

``wav.scp`` values are a file path or a Kaldi extended filename ``cmd args |`` whose stdout is an
audio file; ``segments`` cut recordings into utterances. soundfile (libsndfile) decodes wav, flac,
ogg and mp3; stereo is averaged to mono; any rate is resampled to the requested one.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
from collections.abc import Iterator
from functools import lru_cache
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from asr.datadir import DataDir
from asr.errors import AsrError

log = logging.getLogger(__name__)
PIPE_TIMEOUT_S = 600


def _decode(source: str | os.PathLike | BinaryIO, name: str) -> tuple[np.ndarray, int]:
    try:
        data, rate = sf.read(source, dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise AsrError(f"{name}: no such file") from None
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise AsrError(f"{name}: cannot decode audio ({str(e).strip().splitlines()[0]})") from None
    return data, rate


def _to_mono_resampled(data: np.ndarray, rate: int, sample_rate: int, name: str) -> torch.Tensor:
    """``(T, C)`` samples at ``rate`` -> ``(T',)`` mono float32 at ``sample_rate``."""
    if data.shape[0] == 0:
        raise AsrError(f"{name}: empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AsrError(f"{name}: audio contains NaN or infinite samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave


def read_audio(source: str | os.PathLike | BinaryIO, sample_rate: int, name: str | None = None) -> torch.Tensor:
    """Read a whole audio file (path or binary file object). Returns ``(T,)`` float32 mono at ``sample_rate``."""
    name = name or str(getattr(source, "name", source))
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source) and os.path.getsize(source) == 0:
        raise AsrError(f"{name}: empty file")
    data, rate = _decode(source, name)
    return _to_mono_resampled(data, rate, sample_rate, name)


def run_pipe(command: str, name: str) -> bytes:
    """Run a wav.scp pipe command (``cmd args``) through the shell and return its stdout."""
    try:
        proc = subprocess.run(command, shell=True, capture_output=True, timeout=PIPE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise AsrError(f"{name}: pipe command timed out after {PIPE_TIMEOUT_S}s: {command}") from None
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise AsrError(f"{name}: pipe command failed (exit {proc.returncode}): {command}"
                       + (f": {err[-1]}" if err else ""))
    if not proc.stdout:
        raise AsrError(f"{name}: pipe command printed nothing: {command}")
    return proc.stdout


def load_wav_scp_entry(value: str, sample_rate: int, start: float | None = None, end: float | None = None,
                       name: str | None = None) -> torch.Tensor:
    """Audio of one wav.scp value (path or ``cmd |``), optionally cut to ``[start, end)`` seconds.

    Returns ``(T,)`` float32 mono at ``sample_rate``.
    """
    name = name or value
    value = value.strip()
    if value.endswith("|"):
        source: str | BinaryIO = io.BytesIO(run_pipe(value[:-1].strip(), name))
        label = f"{name} (pipe)"
    else:
        source, label = value, name
        if not os.path.exists(value):
            raise AsrError(f"{name}: no such file: {value}")
        if os.path.getsize(value) == 0:
            raise AsrError(f"{name}: empty file: {value}")
    if start is None:
        data, rate = _decode(source, label)
    else:
        data, rate = _read_segment(source, label, start, end)
    return _to_mono_resampled(data, rate, sample_rate, label)


def _read_segment(source: str | BinaryIO, name: str, start: float, end: float | None) -> tuple[np.ndarray, int]:
    """Read only ``[start, end)`` seconds: seeking keeps segmented long recordings cheap."""
    try:
        with sf.SoundFile(source) as f:
            rate, total = f.samplerate, f.frames
            first = int(round(start * rate))
            last = total if end is None or end < 0 else min(int(round(end * rate)), total)
            if first >= total:
                raise AsrError(f"{name}: segment starts at {start}s, after the end of the audio "
                               f"({total / rate:.2f}s)")
            f.seek(first)
            data = f.read(last - first, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        raise AsrError(f"{name}: cannot decode audio ({str(e).strip()})") from None
    return data, rate


def audio_duration(value: str) -> float:
    """Duration in seconds of a wav.scp value without decoding samples (pipes are run)."""
    value = value.strip()
    source: str | BinaryIO = io.BytesIO(run_pipe(value[:-1], value)) if value.endswith("|") else value
    try:
        info = sf.info(source)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AsrError(f"{value}: cannot read audio header ({str(e).strip()})") from None
    return info.frames / info.samplerate


def load_utterance(data: DataDir, utt: str, sample_rate: int) -> torch.Tensor:
    """Audio of utterance ``utt`` of a data dir (via segments when present). Returns ``(T,)``."""
    if data.wav_scp is None:
        raise AsrError(f"{data.path}/wav.scp: no such file")
    if data.segments is not None:
        seg = data.segments.get(utt)
        if seg is None:
            raise AsrError(f"{utt}: not in {data.path}/segments")
        if seg.reco not in data.wav_scp:
            raise AsrError(f"{utt}: recording {seg.reco} not in {data.path}/wav.scp")
        value = data.wav_scp[seg.reco]
        if value.strip().endswith("|"):
            # A pipe cannot seek: decode the recording once per call and cut in memory.
            wave = _cached_pipe(value, sample_rate)
            a, b = int(seg.start * sample_rate), int(seg.end * sample_rate)
            if a >= wave.numel():
                raise AsrError(f"{utt}: segment starts after the end of recording {seg.reco}")
            return wave[a:b]
        return load_wav_scp_entry(value, sample_rate, seg.start, seg.end, name=utt)
    if utt not in data.wav_scp:
        raise AsrError(f"{utt}: not in {data.path}/wav.scp")
    return load_wav_scp_entry(data.wav_scp[utt], sample_rate, name=utt)


@lru_cache(maxsize=2)
def _cached_pipe(value: str, sample_rate: int) -> torch.Tensor:
    return load_wav_scp_entry(value, sample_rate)


def iter_utterances(data: DataDir, sample_rate: int,
                    utts: list[str] | None = None) -> Iterator[tuple[str, torch.Tensor | AsrError]]:
    """Yield ``(utt, wave (T,))`` for each utterance, or ``(utt, AsrError)`` for one that cannot be read.

    Errors are yielded, not raised, so a batch job can log the utterance and go on.
    """
    for utt in utts if utts is not None else data.utts:
        try:
            yield utt, load_utterance(data, utt, sample_rate)
        except AsrError as e:
            msg = str(e)
            yield utt, AsrError(msg if msg.startswith(utt) else f"{utt}: {msg}")
