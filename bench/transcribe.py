"""Transcription speed and memory: real-time factor on one core, peak RSS for 10 vs 60 minutes.

The network is the default size (4 x 320 BiLSTM, 80-dim fbank, 3-frame stacking) with random
weights and a blank bias that makes its output peaky like a trained CTC model's: speed and memory
do not depend on what the weights are otherwise. Baseline in the same run: the bare
``nn.LSTM`` forward over the same frames, which is what the transcriber adds features, chunking
and decoding to. Each measurement runs in a fresh process so peak RSS belongs to it alone.

    python bench/transcribe.py [--minutes 10 60] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.checkpoint import model_args
from asr.config import dump
from asr.features import FeatureConfig
from asr.models import ModelConfig, build_model

RATE = 16000
SYMBOLS = ["<blk>", "<unk>", "<space>", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]


def make_model_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    feats = FeatureConfig(num_mel_bins=80, cmvn="none", stack=3, subsample=3)
    dump(feats, path / "feats.yaml")
    (path / "tokens.txt").write_text("".join(f"{s} {i}\n" for i, s in enumerate(SYMBOLS)))
    cfg = ModelConfig(num_layers=4, hidden=320, dropout=0.0)
    model = build_model(cfg, 80 * 3, len(SYMBOLS))
    with torch.no_grad():  # mostly blank, like a trained CTC model, so decoding sees peaky output
        model.head.linear.bias[0] = 8.0
    torch.save({"model": model.state_dict(), "model_args": model_args(model, cfg)}, path / "final.pt")
    return path


def make_audio(path: Path, minutes: float) -> Path:
    """Speech-like noise bursts and pauses, written block by block (the bench must not hold it all)."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", RATE, 1, "PCM_16") as f:
        for _ in range(int(minutes * 60)):
            burst = rng.standard_normal(RATE).astype(np.float32) * 0.1
            burst[int(RATE * rng.uniform(0.5, 0.9)):] *= 0.01
            f.write(burst)
    return path


def child(model_dir: str, audio: str, threads: int, mode: str) -> None:
    torch.set_num_threads(threads)
    from asr.transcribe import AudioSource, Transcriber

    tr = Transcriber(model_dir, progress=False)
    src = AudioSource.open(audio, RATE)
    t0 = time.perf_counter()
    if mode == "asr":
        tr.transcribe(src)
        frames = None
    else:  # baseline: a bare 4x320 nn.LSTM over as many stacked frames, chunk by chunk
        frames = 0
        lstm = torch.nn.LSTM(tr.md.model.input_dim, 320, num_layers=4, bidirectional=True, batch_first=True)
        with torch.no_grad():
            for a in range(0, src.num_samples, tr.chunk):
                n = min(tr.chunk, src.num_samples - a) // tr.hop
                x = torch.randn(1, n, lstm.input_size)
                lstm(x)
                frames += n
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss, "audio_s": src.num_samples / RATE}))


def run(model_dir: Path, audio: Path, threads: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(model_dir), str(audio), str(threads), mode],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"bench child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 60])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = make_model_dir(tmp / "exp")
        print(f"{'audio':>8} {'what':<26} {'seconds':>8} {'RTF':>7} {'peak RSS MB':>12}")
        for minutes in args.minutes:
            audio = make_audio(tmp / f"a{minutes:g}.wav", minutes)
            for mode, label in (("lstm", "bare nn.LSTM (baseline)"), ("asr", "asr transcribe (greedy)")):
                r = run(model_dir, audio, args.threads, mode)
                rtf = r["seconds"] / r["audio_s"]
                print(f"{minutes:>6g} m {label:<26} {r['seconds']:>8.1f} {rtf:>7.4f} {r['rss_mb']:>12.0f}")
            audio.unlink()
    print(f"threads: {args.threads}; goal: RTF <= 0.02 and flat peak memory from 10 to 60 minutes")


if __name__ == "__main__":
    main()
