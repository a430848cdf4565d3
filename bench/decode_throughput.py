"""Decoding throughput of ``asr decode``: utterances/second for one utterance at a time vs length-sorted batches,
with 1 and 2 processes, on a real test set (features made on the fly in a temp dir).

The network is the default size (4 x 320 BiLSTM, 3-frame stacking) with random weights and a blank bias
that makes its output peaky like a trained CTC model's: speed does not depend on what the weights are
otherwise. Greedy search, so the table measures the acoustic model and the batching around it.
Baseline in the same run: ``--batch-size 1 --nj 1`` (each utterance alone, all cores). On a machine that
other jobs keep busy, torch threads beyond the free cores run many times slower (OpenMP spin-waits):
compare the 1-thread row, or set OMP_WAIT_POLICY=PASSIVE.

    python bench/decode_throughput.py [--corpus speechocean762|fsdd] [--utts 80] [--data DIR] [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import soundfile as sf
import torch

from asr.checkpoint import model_args
from asr.config import dump
from asr.datadir import read_kv, write_data_dir
from asr.decode import BATCH_FRAMES, BATCH_SIZE, decode_dir
from asr.decoders import DecodeConfig
from asr.features import FeatureConfig
from asr.make_feats import make_feats
from asr.modeldir import available_cores
from asr.models import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SYMBOLS = ["<blk>", "<unk>", "<space>", "'"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]


def test_set(corpus: str, out: Path, n: int, given: str | None = None) -> tuple[Path, FeatureConfig]:
    """The first ``n`` utterances of the corpus's test set (or of the data dir ``given``) with features."""
    if given:  # any data dir with wav.scp and utt2spk (its own features are not used)
        scp, spk = read_kv(Path(given) / "wav.scp"), read_kv(Path(given) / "utt2spk")
        wav = dict(list(scp.items())[:n])
        rate = sf.info(next(iter(wav.values())).split()[-1]).samplerate
        cfg = FeatureConfig(sample_rate=rate, num_mel_bins=80 if rate >= 16000 else 40, cmvn="none", stack=3,
                            subsample=3)
    elif corpus == "fsdd":  # official split: index 0-4 is test
        files = sorted((SHARED / "fsdd" / "recordings").glob("*_[0-4].wav"))[:n]
        wav = {f"{f.stem.split('_')[1]}-{f.stem}": str(f) for f in files}
        spk = {u: u.split("-")[0] for u in wav}
        cfg = FeatureConfig(sample_rate=8000, num_mel_bins=40, cmvn="none", stack=3, subsample=3)
    else:
        root = SHARED / "speechocean762"
        scp, spk = read_kv(root / "test" / "wav.scp"), read_kv(root / "test" / "utt2spk")
        wav = {u: str(root / p) for u, p in list(scp.items())[:n]}
        cfg = FeatureConfig(sample_rate=16000, num_mel_bins=80, cmvn="none", stack=3, subsample=3)
    write_data_dir(out, wav_scp=wav, utt2spk={u: spk[u] for u in wav})
    dump(cfg, out / "feats.yaml")
    make_feats(out, cfg, progress=False)
    return out, cfg


def model_dir(path: Path, feats: FeatureConfig) -> Path:
    path.mkdir(parents=True)
    dump(feats, path / "feats.yaml")
    (path / "tokens.txt").write_text("".join(f"{s} {i}\n" for i, s in enumerate(SYMBOLS)))
    cfg = ModelConfig(num_layers=4, hidden=320, dropout=0.0)
    model = build_model(cfg, feats.num_mel_bins * feats.stack, len(SYMBOLS))
    with torch.no_grad():  # mostly blank, like a trained CTC model
        model.head.linear.bias[0] = 8.0
    torch.save({"model": model.state_dict(), "model_args": model_args(model, cfg)}, path / "final.pt")
    return path


def rows(device: str) -> list[tuple[str, str, int, int, int, int]]:
    """``(label, device, nj, threads, batch_size, batch_frames)``; threads 0: cores / nj."""
    out = [("batch 1 (baseline)", "cpu", 1, 0, 1, BATCH_FRAMES),
           ("sorted", "cpu", 1, 1, BATCH_SIZE, BATCH_FRAMES),
           ("sorted", "cpu", 1, 0, BATCH_SIZE, BATCH_FRAMES),
           ("batch 1", "cpu", 2, 0, 1, BATCH_FRAMES),
           ("sorted", "cpu", 2, 0, BATCH_SIZE, BATCH_FRAMES)]
    if device != "cpu":
        out += [("batch 1", device, 1, 0, 1, BATCH_FRAMES),
                ("sorted", device, 1, 0, BATCH_SIZE, BATCH_FRAMES),
                ("sorted, 200000 frames", device, 1, 0, 0, 200000)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=["speechocean762", "fsdd"], default="speechocean762")
    ap.add_argument("--utts", type=int, default=80, help="first N utterances of the test set")
    ap.add_argument("--data", help="any data dir with wav.scp instead of --corpus (no ../shared needed)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to add its rows to the CPU ones")
    args = ap.parse_args()
    if not args.data and not (SHARED / args.corpus).is_dir():
        raise SystemExit(f"{SHARED / args.corpus}: not found (the bench reads ../shared/data)")
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data, feats = test_set(args.corpus, Path(tmp) / "test", args.utts, args.data)
        exp = model_dir(Path(tmp) / "exp", feats)
        texts: dict[str, set[str]] = {}
        base = None
        print(f"{args.data or args.corpus + ' test'}, {args.utts} utts at most, {available_cores()} cores, greedy, "
              f"default --batch-frames {BATCH_FRAMES} --batch-size {BATCH_SIZE}")
        print(f"{'batches':<22} {'device':>6} {'nj':>3} {'threads':>7} {'seconds':>8} {'utt/s':>8} {'RTF':>7} "
              f"{'x base':>7}")
        for i, (label, device, nj, threads, size, frames) in enumerate(rows(args.device)):
            stats: dict = {}
            t0 = time.perf_counter()
            result, _ = decode_dir(exp, data, DecodeConfig(decoder="greedy"), Path(tmp) / f"d{i}", nj=nj,
                                   batch_size=size, batch_frames=frames, device=device, threads=threads, stats=stats)
            wall = time.perf_counter() - t0
            texts.setdefault(device, set()).add((Path(tmp) / f"d{i}" / "text").read_text())
            ups = len(result) / wall
            base = base or ups
            print(f"{label:<22} {device:>6} {stats['nj']:>3} {stats['threads']:>7} {wall:>8.2f} {ups:>8.1f} "
                  f"{wall / stats['audio_s']:>7.4f} {ups / base:>6.2f}x")
        same = ", ".join(f"{d}: {len(t) == 1}" for d, t in texts.items())
        print(f"{len(result)} utts, {stats['audio_s']:.0f} s of audio; every setting wrote the same text ({same})")


if __name__ == "__main__":
    main()
