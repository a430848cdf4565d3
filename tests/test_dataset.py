"""Bucketing sampler, collate, and the feats.scp dataset (with the real feature pipeline)."""

from __future__ import annotations

import random
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from asr.config import dump
from asr.datadir import write_data_dir
from asr.dataset import BucketBatchSampler, FeatsDataset, bucket_batches, collate, padded_fraction
from asr.errors import AsrError
from asr.features import FeatureConfig, load_pipeline
from asr.tokens import TokenTable


def _lengths(n: int = 500, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(50, 1500) for _ in range(n)]


def test_buckets_respect_cap_and_cover_everything() -> None:
    lengths = _lengths() + [5000]  # one utterance longer than the cap gets a batch of its own
    batches = bucket_batches(lengths, 4000, max_batch_size=16)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 4000
    assert padded_fraction(batches, lengths) < 0.05


def test_sortagrad_then_shuffled_and_deterministic() -> None:
    lengths = _lengths()
    s = BucketBatchSampler(lengths, 4000, seed=3)
    first = list(s)
    maxes = [max(lengths[i] for i in b) for b in first]
    assert maxes == sorted(maxes)  # epoch 0: shortest first
    s.set_epoch(1)
    second = list(s)
    assert [max(lengths[i] for i in b) for b in second] != sorted(maxes)
    s2 = BucketBatchSampler(lengths, 4000, seed=3)
    s2.set_epoch(1, start=5)
    assert list(s2) == second[5:] and len(s2) == len(second) - 5
    s.set_epoch(2)
    assert list(s) != second


def test_distributed_ranks_share_each_global_batch() -> None:
    lengths = _lengths(101)
    ranks = [BucketBatchSampler(lengths, 3000, seed=1, rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(1)
    glob = ranks[0].global_batches()
    for g, a, b in zip(glob, ranks[0], ranks[1], strict=True):
        assert len(g) >= 2 and sorted(a + b) == sorted(g) and a and b


def test_collate_shapes() -> None:
    items = [("a", torch.ones(3, 2), torch.tensor([1, 2])), ("b", torch.ones(5, 2), torch.tensor([3]))]
    x, x_lens, y, y_lens = collate(items)
    assert x.shape == (2, 5, 2) and x_lens.tolist() == [3, 5]
    assert y.tolist() == [[1, 2], [3, 0]] and y_lens.tolist() == [2, 1]
    assert x[0, 3:].abs().sum() == 0


def _feats_dir(tmp: Path, frames: dict[str, int], text: dict[str, str], **cfg) -> Path:
    d = tmp / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    with kaldiio.WriteHelper(f"ark,scp:{d / 'feats.ark'},{d / 'feats.scp'}") as w:
        for u in sorted(frames):
            w(u, rng.standard_normal((frames[u], 4)).astype(np.float32))
    write_data_dir(d, text=text, utt2spk={u: "s" for u in frames}, utt2num_frames=frames)
    dump(FeatureConfig(kind="precomputed", cmvn="utterance", **cfg), d / "feats.yaml")
    return d


def test_dataset_pipeline_and_infeasible_drop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frames = {"u1": 30, "u2": 9, "u3": 4}
    text = {"u1": "AB BA", "u2": "AAA", "u3": "AB"}
    d = _feats_dir(tmp_path, frames, text, stack=3, subsample=3)
    tokens = TokenTable.from_texts(text.values())
    ds = FeatsDataset(d, tokens, load_pipeline(d))
    # u2: 3 frames after subsampling, "AAA" needs 5 -> dropped; u3: 2 frames, "AB" needs 2 -> kept.
    assert ds.utts == ["u1", "u3"] and ds.lengths == [10, 2] and ds.n_dropped == 1
    assert "dropped 1 utterance(s)" in caplog.text
    utt, x, y = ds[0]
    assert utt == "u1" and x.shape == (10, 12) and tokens.decode(y.tolist()) == "AB BA"
    assert ds.feat_dim == 12


def test_dataset_errors(tmp_path: Path) -> None:
    d = _feats_dir(tmp_path, {"u1": 5}, {"u1": "A"})
    (d / "feats.scp").unlink()
    with pytest.raises(AsrError, match="feats.scp: no such file"):
        FeatsDataset(d, TokenTable.from_texts(["A"]))
