"""Training throughput and batching efficiency.

1. Time per training step of ``asr.train`` (reading feats.ark, pipeline, packing, CTC with the
   feasibility check, clipping, checkpoint bookkeeping) against a bare ``nn.LSTM`` + ``ctc_loss`` loop
   on the same batches, in the same run. Goal: ratio <= 1.15.
2. Fraction of padded frames with length bucketing vs random batching under the same frame cap, on the
   utterance lengths of real corpora (FSDD, speechocean762 from ../shared/data) and on synthetic ones.
   Goal: bucketing <= 10 %.

    python bench/train.py [--layers 4 --hidden 320 --utts 48 --threads 1]
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import kaldiio
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asr.config import apply_overrides, dump, from_dict
from asr.datadir import write_data_dir
from asr.dataset import BucketBatchSampler, FeatsDataset, bucket_batches, collate, padded_fraction
from asr.features import FeatureConfig, load_pipeline
from asr.tokens import TokenTable
from asr.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def synthetic_data(d: Path, n: int, seed: int = 0) -> Path:
    """``n`` utterances of random 80-dim features, 300-1000 frames, random letter transcripts."""
    rng = np.random.default_rng(seed)
    frames = {f"utt{i:04d}": int(rng.integers(300, 1000)) for i in range(n)}
    d.mkdir(parents=True)
    with kaldiio.WriteHelper(f"ark,scp:{d / 'feats.ark'},{d / 'feats.scp'}") as w:
        for u, m in frames.items():
            w(u, rng.standard_normal((m, 80)).astype(np.float32))
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    text = {u: " ".join("".join(rng.choice(list(letters), 5)) for _ in range(m // 60)) for u, m in frames.items()}
    write_data_dir(d, text=text, utt2spk={u: "spk" for u in frames}, utt2num_frames=frames)
    dump(FeatureConfig(kind="precomputed", cmvn="utterance", stack=3, subsample=3), d / "feats.yaml")
    return d


class BareModel(nn.Module):
    def __init__(self, input_dim: int, hidden: int, layers: int, vocab: int):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.out = nn.Linear(2 * hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.lstm(x)[0]).log_softmax(-1)


def bench_step(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="asr-bench-"))
    data = synthetic_data(tmp / "data", args.utts)
    dev = synthetic_data(tmp / "dev", 2, seed=1)
    texts = [line.split(maxsplit=1)[1] for line in (data / "text").read_text().splitlines()]
    tokens = TokenTable.from_texts(texts)
    tokens.save(tmp / "lang")
    sets = [
        f"model.num_layers={args.layers}",
        f"model.hidden={args.hidden}",
        "model.dropout=0",
        "schedule.name=none",
        "max_epochs=1",
        "sortagrad=false",
        f"frames_per_batch={args.frames_per_batch}",
        "average=last",
        "average_n=1",
        "log_every=100000",
    ]
    cfg = from_dict(TrainConfig, apply_overrides({}, sets))
    marks: list[float] = []
    t_start = time.perf_counter()
    marks.append(t_start)
    train(data, dev, tmp / "lang", tmp / "exp", cfg, on_step=lambda step: marks.append(time.perf_counter()))
    ours = [b - a for a, b in zip(marks, marks[1:], strict=False)]

    # The same batches, pre-collated, through a bare padded nn.LSTM + ctc_loss + Adam loop.
    ds = FeatsDataset(data, tokens, load_pipeline(data))
    sampler = BucketBatchSampler(ds.lengths, cfg.frames_per_batch, sortagrad=False, seed=cfg.seed)
    sampler.set_epoch(0)
    batches = [collate([ds[i] for i in b]) for b in sampler]
    torch.manual_seed(0)
    model = BareModel(ds.feat_dim, args.hidden, args.layers, len(tokens))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bare = []
    for x, x_lens, y, y_lens in batches:
        t0 = time.perf_counter()
        lp = model(x)
        loss = F.ctc_loss(lp.transpose(0, 1), y, x_lens, y_lens, zero_infinity=True, reduction="sum") / len(x_lens)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        bare.append(time.perf_counter() - t0)
    frames = [int(b[1].sum()) for b in batches]
    # Step 1 of each carries one-off costs (allocator, oneDNN kernels): compare the rest.
    return {
        "steps": len(bare),
        "ours": statistics.mean(ours[1:]),
        "bare": statistics.mean(bare[1:]),
        "frames_per_step": statistics.mean(frames),
        "padded": padded_fraction(list(sampler.global_batches()), ds.lengths),
    }


def real_lengths() -> dict[str, list[int]]:
    """Frame counts (10 ms, before subsampling) of the real corpora present, from the audio headers."""
    import soundfile as sf

    out: dict[str, list[int]] = {}
    fsdd = sorted((SHARED / "fsdd" / "recordings").glob("*.wav"))
    if fsdd:
        out["fsdd"] = [int(sf.info(str(f)).duration * 100) for f in fsdd]
    so = SHARED / "speechocean762" / "train" / "wav.scp"
    if so.is_file():
        paths = [line.split(maxsplit=1)[1] for line in so.read_text().splitlines()]
        out["speechocean762"] = [int(sf.info(str(SHARED / "speechocean762" / p)).duration * 100) for p in paths]
    rng = random.Random(0)
    out["synthetic lognormal"] = [max(50, int(math.exp(rng.gauss(6.0, 0.6)))) for _ in range(5000)]
    return out


def random_batches(lengths: list[int], cap: int, seed: int = 0) -> list[list[int]]:
    """Shuffled order cut under the same cap: what batching without bucketing gives."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and (len(cur) + 1) * max(lengths[j] for j in [*cur, i]) > cap:
            batches.append(cur)
            cur = []
        cur.append(i)
    return batches + ([cur] if cur else [])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=320)
    p.add_argument("--utts", type=int, default=48)
    p.add_argument("--frames-per-batch", type=int, default=1600, help="after 3x stacking/subsampling")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    print("== padded frames, bucketing vs random batching (cap 16 x 500 = 8000 frames)")
    print(f"{'lengths':<22}{'utts':>7}{'bucketed':>11}{'random':>10}")
    for name, lengths in real_lengths().items():
        cap = 8000
        b = padded_fraction(bucket_batches(lengths, cap), lengths)
        r = padded_fraction(random_batches(lengths, cap), lengths)
        print(f"{name:<22}{len(lengths):>7}{100 * b:>10.1f}%{100 * r:>9.1f}%")

    print(
        f"\n== time per training step: {args.layers}x{args.hidden} BiLSTM, 80-dim fbank stacked 3x -> 240-dim, "
        f"{args.threads} thread(s)"
    )
    r = bench_step(args)
    print(f"{'':<24}{'s/step':>9}{'frames/s':>11}")
    for name in ("bare nn.LSTM loop", "asr.train"):
        t = r["bare" if name.startswith("bare") else "ours"]
        print(f"{name:<24}{t:>9.3f}{r['frames_per_step'] / t:>11.0f}")
    ratio = r["ours"] / r["bare"]
    print(
        f"ratio asr.train / bare: {ratio:.2f}x over {r['steps'] - 1} steps of ~{r['frames_per_step']:.0f} frames "
        f"(goal <= 1.15x); padding in these batches {100 * r['padded']:.1f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
