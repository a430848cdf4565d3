"""Feature extraction throughput (x real time) on real audio from ../shared/data.

Compares, in one process on the same utterances (speechocean762 train, 16 kHz FLAC):

* ``torchaudio loop``: soundfile read + ``torchaudio.compliance.kaldi.fbank`` per utterance, nothing written;
* ``librosa loop``: soundfile read + ``librosa.feature.melspectrogram`` + log, nothing written;
* ``make-feats --nj 1/2``: ``asr.make_feats.make_feats`` (reads through asr.audio, writes feats.ark/scp,
  utt2num_frames, feats.yaml), timed in-process so interpreter start-up is not counted.

Each is run ``--repeats`` times, interleaved, and the best wall time is kept (the machine is shared).
Usage: ``python bench/features.py [--utts 300] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import librosa  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402
import torchaudio.compliance.kaldi as kaldi  # noqa: E402

from asr.datadir import DataDir, read_kv, write_data_dir  # noqa: E402
from asr.features import FeatureConfig  # noqa: E402
from asr.make_feats import make_feats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ASR_SHARED_DATA", ROOT.parent / "shared" / "data"))


def build_dir(n: int, dst: Path) -> tuple[Path, float]:
    corpus = SHARED / "speechocean762"
    wav = read_kv(corpus / "train" / "wav.scp")
    utt2spk = read_kv(corpus / "train" / "utt2spk")
    utts = sorted(wav)[:n]
    d = write_data_dir(dst, wav_scp={u: str(corpus / wav[u]) for u in utts}, utt2spk={u: utt2spk[u] for u in utts})
    seconds = sum(sf.info(str(corpus / wav[u])).duration for u in utts)
    return d, seconds


def torchaudio_loop(paths: list[str]) -> None:
    for p in paths:
        data, _ = sf.read(p, dtype="float32")
        kaldi.fbank(torch.from_numpy(data).unsqueeze(0) * 32768, num_mel_bins=80, dither=0.0)


def librosa_loop(paths: list[str]) -> None:
    for p in paths:
        data, rate = sf.read(p, dtype="float32")
        mel = librosa.feature.melspectrogram(y=data, sr=rate, n_fft=512, hop_length=160, win_length=400,
                                             n_mels=80, fmin=20, center=False)
        np.log(np.maximum(mel, 1e-10))


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_all(methods: list[tuple[str, object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best (wall, cpu) seconds per method; methods are interleaved round by round so that load from
    other jobs on a shared machine hits them all alike."""
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        for name, fn in methods:
            c0, t0 = cpu_seconds(), time.perf_counter()
            fn()
            wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], wall), min(old[1], cpu))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--utts", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if not (SHARED / "speechocean762").is_dir():
        print(f"skipped: {SHARED}/speechocean762 not found (set ASR_SHARED_DATA)")
        return 0
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        d, audio_s = build_dir(args.utts, Path(tmp) / "data")
        paths = list(DataDir.load(d).wav_scp.values())
        torchaudio_loop(paths[:5])  # warm-up: first-call costs (mel banks, FFT plans, imports)
        librosa_loop(paths[:5])
        cfg = FeatureConfig()
        methods = [
            ("torchaudio.compliance.kaldi.fbank loop", lambda: torchaudio_loop(paths)),
            ("librosa melspectrogram loop", lambda: librosa_loop(paths)),
            ("asr make-feats --nj 1", lambda: make_feats(d, cfg, nj=1, progress=False)),
            ("asr make-feats --nj 2", lambda: make_feats(d, cfg, nj=2, progress=False)),
        ]
        best = run_all(methods, args.repeats)
    base = best[methods[0][0]][0]
    print(f"{args.utts} utterances, {audio_s / 60:.1f} min of 16 kHz audio (speechocean762 train), "
          f"80-dim fbank, 1 torch thread per process, {os.cpu_count()} CPUs, best of {args.repeats} "
          f"(interleaved); CPU s = user + system of all processes")
    base_cpu = best[methods[0][0]][1]
    print(f"| {'method':40s} | {'wall s':>6s} | {'CPU s':>6s} | {'x real time':>11s} | {'vs torchaudio (wall)':>20s} "
          f"| {'x real time per CPU s':>21s} | {'vs torchaudio (CPU)':>19s} |")
    print(f"|{'-' * 42}|{'-' * 8}|{'-' * 8}|{'-' * 13}|{'-' * 22}|{'-' * 23}|{'-' * 21}|")
    for name, _ in methods:
        wall, cpu = best[name]
        print(f"| {name:40s} | {wall:6.2f} | {cpu:6.2f} | {audio_s / wall:11.0f} | {base / wall:19.2f}x "
              f"| {audio_s / cpu:21.0f} | {base_cpu / cpu:18.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
