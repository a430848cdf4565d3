"""Training data: features from ``feats.scp`` + token ids from ``text``, length-bucketed batches.

- :class:`FeatsDataset` reads each utterance's matrix with kaldiio and runs the load-time
  :class:`asr.features.FeaturePipeline` (CMVN, deltas, stacking/subsampling) on it.
- :class:`BucketBatchSampler` sorts by length and cuts batches so that ``batch size x longest
  utterance`` stays under a frame cap (padding stays small and one long utterance cannot blow the
  memory); the first epoch runs shortest-first (sortagrad), later ones in a shuffled batch order. The
  order depends only on (seed, epoch), so a run resumes at batch k of epoch e exactly; with
  ``world_size`` > 1 each global batch is dealt out across ranks.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kaldiio
import numpy as np
import torch
from torch.utils.data import Dataset

from asr.datadir import DataDir
from asr.errors import AsrError
from asr.features import FeaturePipeline
from asr.models.ctc import required_frames
from asr.tokens import TokenTable, check_coverage

log = logging.getLogger(__name__)


def pipeline_length(pipeline: Any | None, n: int) -> int:
    """Frames after the pipeline for ``n`` input frames."""
    if pipeline is None:
        return n
    if hasattr(pipeline, "output_length"):
        return int(pipeline.output_length(n))
    return int(pipeline(torch.zeros(n, 1)).shape[0])


def _resolve_rxfile(value: str, data_dir: Path) -> str:
    # make-feats may write ark paths relative to the data dir or to the recipe dir.
    path, sep, offset = value.rpartition(":")
    if sep and offset.isdigit() and not Path(path).is_absolute() and not Path(path).exists():
        if (data_dir / path).exists():
            return f"{data_dir / path}:{offset}"
        if (data_dir / Path(path).name).exists():
            return f"{data_dir / Path(path).name}:{offset}"
    return value


class FeatsDataset(Dataset):
    """Utterances of a data dir with features and text: item ``i`` is ``(utt, feats (N', D'), labels (U,))``.

    Utterances whose (post-pipeline) frame count cannot fit their labels under CTC are dropped up front
    with one warning giving the count and an example.
    """

    def __init__(
        self,
        data_dir: str | Path,
        tokens: TokenTable,
        pipeline: Any | None = None,
        need_text: bool = True,
        max_unk_fraction: float = 0.05,
        output_length: Callable[[int], int] | None = None,
    ):
        self.data_dir = Path(data_dir)
        data = DataDir.load(self.data_dir, read_text=need_text)
        if data.feats_scp is None:
            raise AsrError(f"{self.data_dir}/feats.scp: no such file (run 'asr make-feats {self.data_dir}')")
        if need_text and data.text is None:
            raise AsrError(f"{self.data_dir}/text: no such file")
        missing = [u for u in data.utts if u not in data.feats_scp]
        if missing:
            raise AsrError(
                f"{self.data_dir}/feats.scp: {len(missing)} utterance(s) have no features, "
                f"e.g. {missing[0]} (run 'asr fix-data-dir' or 'asr make-feats')"
            )
        self.pipeline = pipeline
        # Training-time augmentation of the normalised frames, inside the pipeline (before stacking).
        self.augment: Callable[[torch.Tensor], torch.Tensor] | None = None
        # Training (cmvn: speaker): this share of utterances, drawn from the torch RNG (which checkpoints
        # restore), is normalised with no speaker, as asr transcribe does a loose file.
        self.loose_share = 0.0
        self.tokens = tokens
        self.utt2spk = data.utt2spk
        texts = (data.text or {}) if need_text else {}
        if need_text:
            missing = [u for u in data.utts if u not in texts]
            if missing:
                raise AsrError(
                    f"{self.data_dir}/text: {len(missing)} utterance(s) have no transcript, e.g. {missing[0]}"
                )
            check_coverage(tokens, {u: texts[u] for u in data.utts}, f"{self.data_dir}/text", max_unk_fraction)
        nframes = data.utt2num_frames or {}
        utts, lengths, labels, dropped = [], [], [], []
        self._rx: dict[str, str] = {}
        for u in data.utts:
            self._rx[u] = _resolve_rxfile(data.feats_scp[u], self.data_dir)
            n = nframes.get(u)
            if n is None:
                n = self._read(u).shape[0]
            length = pipeline_length(pipeline, n)
            # Decoding (need_text=False) never looks at the reference: an utterance is kept whatever its
            # text says, so a test utterance can never be dropped (and scored as deletions) for its label.
            ids = tokens.encode(texts[u]) if need_text else []
            y = torch.tensor(ids, dtype=torch.long)
            need = int(required_frames(y.unsqueeze(0), torch.tensor([len(ids)]))[0]) if ids else 0
            # The model may subsample further (conv front-end): CTC needs the frames it outputs.
            out = output_length(length) if output_length is not None else length
            if out < max(need, 1):
                dropped.append((u, out, need))
                continue
            utts.append(u)
            lengths.append(length)
            labels.append(y)
        if dropped:
            u, n, need = dropped[0]
            log.warning(
                "%s: dropped %d utterance(s) with too few frames for their labels, e.g. %s (%d frames, needs %d)",
                self.data_dir,
                len(dropped),
                u,
                n,
                need,
            )
        if not utts:
            raise AsrError(f"{self.data_dir}: no usable utterances (all {len(dropped)} too short for their labels)")
        self.utts, self.lengths, self.labels = utts, lengths, labels
        self.n_dropped = len(dropped)

    def set_loose_share(self, share: float) -> None:
        """Training: normalise this share of utterances with no speaker (own stats + the global prior), as
        ``asr transcribe`` does a loose file; for a ``cmvn: speaker`` pipeline only."""
        if not 0.0 <= share <= 1.0:
            raise AsrError(f"loose_cmvn is a share of utterances, in [0, 1]; got {share}")
        mode = self.pipeline.cfg.cmvn if isinstance(self.pipeline, FeaturePipeline) else None
        if share and mode != "speaker":
            raise AsrError(f"loose_cmvn: {share} needs cmvn: speaker features; {self.data_dir} has cmvn: {mode}")
        self.loose_share = share

    def _read(self, utt: str) -> np.ndarray:
        try:
            return kaldiio.load_mat(self._rx[utt])
        except (OSError, ValueError, KeyError) as e:
            raise AsrError(f"{self.data_dir}/feats.scp: {utt}: cannot read features: {e}") from None

    @property
    def feat_dim(self) -> int:
        """Feature dimension after the pipeline."""
        return int(self[0][1].shape[1])

    def __len__(self) -> int:
        return len(self.utts)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        utt = self.utts[i]
        x = torch.from_numpy(np.array(self._read(utt), dtype=np.float32))  # copy: kaldiio may hand a read-only view
        if self.pipeline is not None:
            spk = self.utt2spk.get(utt)
            if self.loose_share and float(torch.rand(())) < self.loose_share:
                spk = None
            try:
                x = (
                    self.pipeline(x, spk, self.augment)
                    if isinstance(self.pipeline, FeaturePipeline)
                    else self.pipeline(x)
                )
            except AsrError as e:
                raise AsrError(f"{self.data_dir}: {utt}: {e}") from None
        return utt, x, self.labels[i]


def collate(
    items: list[tuple[str, torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a list of ``(utt, x (N_i, D), y (U_i,))`` into ``(x (B, T, D), x_lens (B,), y (B, U), y_lens (B,))``.

    Features pad with 0, labels with 0 (blank; never read past ``y_lens``).
    """
    xs = [it[1] for it in items]
    ys = [it[2] for it in items]
    x_lens = torch.tensor([x.shape[0] for x in xs], dtype=torch.long)
    y_lens = torch.tensor([y.shape[0] for y in ys], dtype=torch.long)
    x = xs[0].new_zeros(len(xs), int(x_lens.max()), xs[0].shape[1])
    y = torch.zeros(len(ys), max(int(y_lens.max()), 1), dtype=torch.long)
    for i, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        x[i, : xi.shape[0]] = xi
        y[i, : yi.shape[0]] = yi
    return x, x_lens, y, y_lens


def bucket_batches(
    lengths: list[int], frames_per_batch: int, max_batch_size: int = 0, min_batch_size: int = 1, seed: int = 0
) -> list[list[int]]:
    """Cut length-sorted indices into batches with ``size x max length <= frames_per_batch``.

    Equal lengths are ordered randomly (``seed``) so batches vary between epochs. A batch never has
    fewer than ``min_batch_size`` utterances (one per rank), even if that exceeds the cap.
    """
    rng = random.Random(seed)
    ties = list(range(len(lengths)))
    rng.shuffle(ties)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], ties[i]))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        full = (len(cur) + 1) * lengths[i] > frames_per_batch or (max_batch_size and len(cur) >= max_batch_size)
        if cur and full and len(cur) >= min_batch_size:
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        if len(cur) < min_batch_size and batches:
            batches[-1].extend(cur)
        else:
            batches.append(cur)
    return batches


class BucketBatchSampler:
    """Batch sampler over utterance ``lengths`` (post-pipeline frames); yields this rank's index lists.

    Epoch 0 runs shortest-first when ``sortagrad``; other epochs shuffle the batch order with
    ``seed + epoch``. ``set_epoch(epoch, start)`` skips the first ``start`` batches (resume).
    """

    def __init__(
        self,
        lengths: list[int],
        frames_per_batch: int,
        max_batch_size: int = 0,
        sortagrad: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if frames_per_batch < 1:
            raise AsrError(f"frames_per_batch {frames_per_batch}: must be positive")
        self.lengths, self.frames_per_batch, self.max_batch_size = list(lengths), frames_per_batch, max_batch_size
        self.sortagrad, self.shuffle, self.seed = sortagrad, shuffle, seed
        self.rank, self.world_size = rank, world_size
        if len(self.lengths) < world_size:
            raise AsrError(f"{len(self.lengths)} utterance(s) cannot be shared among {world_size} processes")
        self.epoch, self.start = 0, 0
        self._cache: tuple[int, list[list[int]]] | None = None
        too_long = sum(n > frames_per_batch for n in self.lengths)
        if too_long:
            log.warning(
                "%d utterance(s) are longer than frames_per_batch=%d and form batches of their own",
                too_long,
                frames_per_batch,
            )

    def global_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of ``epoch`` (every rank's share together), in the order they run."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        shuffled = self.shuffle and not (self.sortagrad and epoch == 0)
        batches = bucket_batches(
            self.lengths,
            self.frames_per_batch,
            self.max_batch_size,
            self.world_size,
            seed=self.seed * 1_000_003 + epoch if shuffled else self.seed,
        )
        if shuffled:
            random.Random(self.seed * 7919 + epoch).shuffle(batches)
        self._cache = (epoch, batches)
        return batches

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.start :]:
            yield batch[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.global_batches()) - self.start


def padded_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    """Share of padding in the padded tensors of ``batches``: 1 - real frames / (B x T_max) summed."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - real / padded if padded else 0.0
