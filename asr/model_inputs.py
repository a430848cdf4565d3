"""A data dir's model inputs and log-posteriors, batched by length: what ``decode``, ``tune-lm``, ``align``
and speaker adaptation (asr.adapt) all read through a model dir.

Features come from the data dir's ``feats.scp`` through the model dir's load-time pipeline, else from its
audio. A ``cmvn: speaker`` model normalises each speaker with the dir's own per-speaker stats: its
``cmvn.scp``, or, where it has none, stats accumulated in memory from its features or audio, so a dir of
bare recordings decodes as one through ``make-feats`` and ``compute-cmvn --per-speaker`` does; a speaker
of one utterance is normalised as ``asr transcribe`` normalises a loose file. An
utterance that cannot be read is logged with its id and counted; its batch-mates go on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch

from asr.errors import AsrError

log = logging.getLogger(__name__)
Batch = tuple[list[str], torch.Tensor, torch.Tensor, int]  # utts, log_probs (B, T, V), lengths (B,), n_failed
BATCH_FRAMES = 20000  # as training's frames_per_batch: padded model-input frames per forward pass
BATCH_SIZE = 64  # utterances per forward pass at most (0: no cap beyond --batch-frames)
POOL_BATCHES = 8  # features read ahead and sorted together, in batches' worth of frames


class ModelInputs:
    """A data dir's model inputs one utterance at a time: ``feats.scp`` through the model dir's pipeline, else audio."""

    def __init__(self, md, data_dir: Path):
        from asr.datadir import DataDir

        self.md, self.data_dir = md, data_dir
        self.data = DataDir.load(data_dir, read_text=False)  # decoding never reads the reference
        self.ds = None
        speaker = md.feature_config.cmvn == "speaker"
        # A cmvn: speaker model over a dir without per-speaker stats: each speaker's are accumulated here,
        # in memory, from the dir's features (or its audio), as 'compute-cmvn --per-speaker' would write them.
        own = speaker and not (Path(data_dir) / "cmvn.scp").is_file()
        self.pipeline = md.pipeline_for(data_dir, self._speaker_stats() if own else None)
        # A speaker of one utterance (Kaldi's utt2spk for "speaker unknown") is a loose file: no speaker, so
        # its own stats with the training set's global ones as a prior, exactly as 'asr transcribe' does.
        counts = Counter(self.data.utt2spk.values())
        self.utt2spk = {u: s for u, s in self.data.utt2spk.items() if not speaker or counts[s] > 1}
        if self.data.feats_scp is not None:
            from asr.dataset import FeatsDataset

            self.ds = FeatsDataset(data_dir, md.tokens, pipeline=self.pipeline, need_text=False)
            self.ds.utt2spk = self.utt2spk
            self.index = {u: i for i, u in enumerate(self.ds.utts)}

    def _speaker_stats(self) -> dict:
        """Each speaker's CMVN stats from this dir's features, else its audio (read again to decode, rather
        than holding every utterance's features). An unreadable utterance is left to :meth:`read` to name."""
        import kaldiio

        from asr.audio import load_utterance
        from asr.cmvn import accumulate
        from asr.features import compute_features

        cfg, stats = self.md.feature_config, {}
        for u in self.data.utts:
            try:
                if self.data.feats_scp is not None:
                    x = kaldiio.load_mat(self.data.feats_scp[u])
                else:
                    x = compute_features(load_utterance(self.data, u, cfg.sample_rate), cfg)
            except (AsrError, OSError, ValueError, KeyError):
                continue
            spk = self.data.utt2spk.get(u, u)
            stats[spk] = accumulate(x, stats.get(spk))
        log.info("%s: no cmvn.scp; per-speaker CMVN stats of its %d speaker(s) computed from its %s", self.data_dir,
                 len(stats), "features" if self.data.feats_scp is not None else "audio")
        return stats

    def order(self, utts: list[str]) -> list[str]:
        """``utts`` shortest first where every length is known up front, else as given."""
        if self.ds is not None:
            return sorted(utts, key=lambda u: self.ds.lengths[self.index[u]] if u in self.index else 0)
        data = self.data
        # Reading a pipe's recording out of order would run the pipe again for each of its segments.
        if any(v.strip().endswith("|") for v in (data.wav_scp or {}).values()):
            return utts
        durs = {u: s.end - s.start for u, s in (data.segments or {}).items()}
        if (data.path / "utt2dur").is_file():
            from asr.datadir import read_kv

            for u, v in read_kv(data.path / "utt2dur").items():
                try:
                    durs[u] = float(v)
                except ValueError:
                    return utts
        return sorted(utts, key=durs.__getitem__) if all(u in durs for u in utts) else utts

    def read(self, u: str) -> tuple[torch.Tensor, float]:
        """``(model input (N', D'), seconds of audio)``, or an AsrError naming ``u``."""
        cfg = self.md.feature_config
        if self.ds is not None:
            if u not in self.index:
                raise AsrError(f"{u}: no usable features in {self.data_dir}/feats.scp")
            x = self.ds[self.index[u]][1]
            frames = (self.data.utt2num_frames or {}).get(u, x.shape[0] * cfg.subsample)
            return x, frames * cfg.frame_shift_ms / 1000
        from asr.audio import load_utterance

        try:
            wave = load_utterance(self.data, u, cfg.sample_rate)
            if cfg.cmvn != "speaker":
                return self.md.features(wave), wave.numel() / cfg.sample_rate
            from asr.features import compute_features

            return self.pipeline(compute_features(wave, cfg), self.utt2spk.get(u)), wave.numel() / cfg.sample_rate
        except AsrError as e:
            msg = str(e)
            raise AsrError(msg if msg.startswith(u) else f"{u}: {msg}") from None


def _forward(md, names: list[str], feats: list[torch.Tensor]) -> Iterator[Batch]:
    """One batch through the model; if it fails as a whole (e.g. out of GPU memory), one utterance at a time."""
    try:
        lp, lens = md.log_probs(feats)
    except RuntimeError as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if len(feats) == 1:
            log.warning("%s: the model failed on it: %s", names[0], why)
            yield [], torch.zeros(0, 1, 1), torch.zeros(0, dtype=torch.long), 1
            return
        log.warning("a batch of %d utterances failed (%s); running them one at a time", len(feats), why)
        for n, f in zip(names, feats, strict=True):
            yield from _forward(md, [n], [f])
        return
    yield names, lp, lens, 0


def log_probs_of(
    md, data_dir: Path, utts: list[str] | None, batch_size: int = BATCH_SIZE, batch_frames: int = BATCH_FRAMES,
    stats: dict | None = None, src: ModelInputs | None = None,
) -> Iterator[Batch]:
    """Batches ``(utts, log_probs (B, T, V), lengths (B,), n_failed_since_last)`` of a data dir, sorted by length.

    A batch holds utterances of similar length (``B x T <= batch_frames``, ``B <= batch_size`` unless 0),
    rows in the data dir's order; an unreadable utterance is logged, counted and left out. ``stats``,
    if given, gets ``audio_s`` (seconds of audio read) added to. ``src``: the dir's :class:`ModelInputs`
    (features through ``md``'s pipeline) when the caller already has one, so that several passes over
    parts of a dir (one per speaker, asr.adapt) read its index once.
    """
    from asr.dataset import bucket_batches

    if batch_frames < 1 or batch_size < 0:
        raise AsrError(f"--batch-frames {batch_frames} must be >= 1 and --batch-size {batch_size} >= 0")
    src = src or ModelInputs(md, data_dir)
    utts = list(src.data.utts if utts is None else utts)
    rank = {u: i for i, u in enumerate(utts)}
    pool_frames, pool_utts = POOL_BATCHES * batch_frames, POOL_BATCHES * (batch_size or batch_frames)
    names, feats, failed, seconds, pooled = [], [], 0, 0.0, 0

    def flush() -> Iterator[Batch]:
        nonlocal failed, pooled
        for b in bucket_batches([f.shape[0] for f in feats], batch_frames, batch_size):
            b.sort(key=lambda i: rank[names[i]])
            for batch in _forward(md, [names[i] for i in b], [feats[i] for i in b]):
                yield *batch[:3], batch[3] + failed
                failed = 0
        names.clear()
        feats.clear()
        pooled = 0

    for k, u in enumerate(src.order(utts)):
        try:
            x, dur = src.read(u)
        except AsrError as e:
            log.warning("%s", e)
            failed += 1
        else:
            names.append(u)
            feats.append(x)
            seconds, pooled = seconds + dur, pooled + x.shape[0]
        if feats and (pooled >= pool_frames or len(feats) >= pool_utts or k == len(utts) - 1):
            yield from flush()
    if failed:
        yield [], torch.zeros(0, 1, 1), torch.zeros(0, dtype=torch.long), failed
    if stats is not None:
        stats["audio_s"] = stats.get("audio_s", 0.0) + seconds
