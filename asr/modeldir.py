"""A trained model's directory describes itself (EESEN habit): everything needed to run it lies beside the weights.

``exp/<tag>/``: ``config.yaml`` (resolved train config incl. the model), ``feats.yaml`` (feature
extraction + load-time pipeline), ``cmvn_global.ark``, ``tokens.txt`` (+ ``lexicon.txt`` for phones,
``bpe.model`` for sentencepiece units),
and checkpoints (``epoch-N.pt``, ``last.pt``, ``final.pt``; :mod:`asr.checkpoint`) that each carry
``model_args`` (model config, input dim, vocabulary size), so a checkpoint alone rebuilds its network.
``asr train`` also leaves ``metrics.csv`` and ``plots/`` (:mod:`asr.metrics`) and ``train.log``.

This module owns the dir's contract: which files it holds (:data:`META_FILES`, :func:`write_meta`),
whether an existing dir may be resumed with a given config (:func:`check_exp_dir`), who writes it
while training (:func:`open_for_training`), and loading a finished one for decoding (:class:`ModelDir`).

``feats.yaml``'s ``cmvn`` records how the model's inputs were normalised in training, and decoding
does the same: ``global`` with the training set's ``cmvn_global.ark`` (copied here); ``speaker`` with
each data dir's own per-speaker ``cmvn.scp`` (:meth:`ModelDir.pipeline_for`) and, for loose files with
no speaker, the utterance's own stats with the global ones as a prior (``asr transcribe --one-speaker``
pools a speaker's files instead); ``utterance`` per utterance; ``none`` not at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from asr.checkpoint import load_checkpoint, model_from_checkpoint
from asr.config import dump, from_dict, read_yaml, to_dict
from asr.errors import AsrError
from asr.features import FeatureConfig, FeaturePipeline, compute_features, load_pipeline, read_feature_config
from asr.lock import hold
from asr.models import CTCModel
from asr.tokens import TokenTable

META_FILES = ("config.yaml", "feats.yaml", "cmvn_global.ark", "tokens.txt", "lexicon.txt", "bpe.model")
# Keys that may change between a run and its resumption (they do not change what is computed; the
# average* keys only choose which epoch checkpoints make final.pt, which is computed at the end).
RESUMABLE_KEYS = {
    "max_epochs",
    "checkpoint_every",
    "num_workers",
    "log_every",
    "average",
    "average_n",
    "average_metric",
    "tensorboard",
}


def write_meta(exp_dir: str | Path, config: Any, data_dir: str | Path, lang_dir: str | Path) -> None:
    """Write the resolved config and copy feats.yaml, cmvn_global.ark and the token table into ``exp_dir``."""
    exp_dir, data_dir, lang_dir = Path(exp_dir), Path(data_dir), Path(lang_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    dump(config, exp_dir / "config.yaml")
    # A dir of precomputed features has no feats.yaml: write the resolved (default) one.
    dump(read_feature_config(data_dir), exp_dir / "feats.yaml")
    sources = [
        (data_dir / "cmvn_global.ark", "cmvn_global.ark"),
        (lang_dir / "tokens.txt", "tokens.txt"),
        (lang_dir / "lexicon.txt", "lexicon.txt"),
        (lang_dir / "bpe.model", "bpe.model"),  # sentencepiece units: the table cannot encode without it
    ]
    for src, name in sources:
        if src.is_file():
            tmp = exp_dir / f".{name}.tmp"
            shutil.copyfile(src, tmp)
            tmp.replace(exp_dir / name)


@contextlib.contextmanager
def open_for_training(exp_dir: Path, config: Any, data_dir: Path, lang_dir: Path) -> Iterator[None]:
    """While inside: this process is ``exp_dir``'s one writer, its meta files are written (:func:`write_meta`)
    and the ``asr`` logger also writes (at INFO) to its ``train.log``."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    # One writer per model dir: a second 'asr train' here would interleave checkpoints.
    with hold(exp_dir, "asr train"):
        write_meta(exp_dir, config, data_dir, lang_dir)
        handler = logging.FileHandler(exp_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logging.getLogger("asr").addHandler(handler)
        logging.getLogger("asr").setLevel(logging.INFO)
        try:
            yield
        finally:
            logging.getLogger("asr").removeHandler(handler)
            handler.close()


def check_exp_dir(exp_dir: Path, cfg: Any, data_dir: Path, lang_dir: Path) -> None:
    """Raise one AsrError if ``exp_dir`` holds a run that this config cannot continue."""
    if not (exp_dir / "config.yaml").is_file():
        if (exp_dir / "last.pt").exists() or (exp_dir / "final.pt").exists():
            raise AsrError(f"{exp_dir}: holds checkpoints but no config.yaml; use a new EXP_DIR")
        return
    # Keys added since that run was started read as their defaults, which is what it ran with.
    old = to_dict(from_dict(type(cfg), read_yaml(exp_dir / "config.yaml"), str(exp_dir / "config.yaml")))
    new = to_dict(cfg)

    def diff(a: dict, b: dict, prefix: str = "") -> list[str]:
        out = []
        for k in sorted(set(a) | set(b)):
            if not prefix and k in RESUMABLE_KEYS:
                continue
            va, vb = a.get(k), b.get(k)
            if isinstance(va, dict) and isinstance(vb, dict):
                out += diff(va, vb, f"{prefix}{k}.")
            elif va != vb:
                out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
        return out

    changes = diff(old, new)
    if (
        (exp_dir / "tokens.txt").is_file()
        and (lang_dir / "tokens.txt").is_file()
        and (exp_dir / "tokens.txt").read_bytes() != (lang_dir / "tokens.txt").read_bytes()
    ):
        changes.append(f"tokens.txt differs from {lang_dir}/tokens.txt")
    if (exp_dir / "feats.yaml").is_file() and to_dict(read_feature_config(exp_dir)) != to_dict(
        read_feature_config(data_dir)
    ):
        changes.append(f"feats.yaml differs from {data_dir}'s")
    if changes:
        raise AsrError(
            f"{exp_dir}: holds a run with an incompatible config ({'; '.join(changes[:3])}); "
            "use a new EXP_DIR or remove this one"
        )


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu`` or ``cuda[:N]``; one AsrError if that GPU is absent."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise AsrError(f"--device {device}: expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "CPU-only torch" if torch.version.cuda is None else f"torch for CUDA {torch.version.cuda}"
            raise AsrError(f"--device {device}: no CUDA GPU is available here ({build}); use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AsrError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s) here")
    elif dev.type != "cpu":
        raise AsrError(f"--device {device}: expected cpu, cuda, cuda:N or auto")
    return dev


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask (taskset, a container's cpuset) where the OS has one."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[int]:
    """torch's intra-op threads set to ``n`` while inside, then put back.

    torch sizes its pool from ``OMP_NUM_THREADS`` when it is imported (the Makefiles export 2 for tests,
    ``egs/recipe.mk`` 1 for recipes); this overrides that for the block, so a decode's thread count is
    what its ``--threads``/``--nj`` say.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield max(1, n)
    finally:
        torch.set_num_threads(before)


class ModelDir:
    """A loaded model dir: ``.model`` (eval mode), ``.tokens``, ``.feature_config``, ``.pipeline``, ``.config``."""

    def __init__(
        self,
        path: Path,
        model: CTCModel,
        tokens: TokenTable,
        feature_config: FeatureConfig,
        pipeline: FeaturePipeline,
        config: dict,
        device: torch.device,
    ):
        self.path, self.model, self.tokens = path, model, tokens
        self.feature_config, self.pipeline, self.config, self.device = feature_config, pipeline, config, device

    @classmethod
    def load(cls, exp_dir: str | Path, checkpoint: str = "final.pt", device: str | torch.device = "cpu") -> ModelDir:
        """Load ``exp_dir/checkpoint`` (a name inside the dir or a path) with the dir's tokens and features.

        ``device``: where the model runs (:func:`resolve_device`: ``cpu``, ``cuda[:N]`` or ``auto``);
        :meth:`log_probs` takes CPU features and gives CPU log-probs either way.
        """
        exp_dir = Path(exp_dir)
        if not exp_dir.is_dir():
            raise AsrError(f"{exp_dir}: no such model dir")
        for name in ("tokens.txt", "feats.yaml"):
            if not (exp_dir / name).is_file():
                raise AsrError(f"{exp_dir}/{name}: missing (not a model dir written by 'asr train'?)")
        ckpt_path = Path(checkpoint) if Path(checkpoint).is_file() else exp_dir / checkpoint
        if not ckpt_path.is_file():
            raise AsrError(f"{ckpt_path}: no such checkpoint (training not finished?)")
        device = resolve_device(device)
        ckpt = load_checkpoint(ckpt_path)
        model, _ = model_from_checkpoint(ckpt, str(ckpt_path))
        model.to(device).eval()
        tokens = TokenTable.load(exp_dir / "tokens.txt")
        if len(tokens) != model.vocab_size:
            raise AsrError(f"{exp_dir}/tokens.txt: {len(tokens)} tokens but {ckpt_path.name} has {model.vocab_size}")
        # A speaker-normalised model keeps only the training set's global stats: data dirs bring their
        # own per-speaker stats (pipeline_for), a loose file takes its own with these as a prior.
        pipeline = load_pipeline(exp_dir, per_speaker=False)
        config = read_yaml(exp_dir / "config.yaml") if (exp_dir / "config.yaml").is_file() else {}
        return cls(exp_dir, model, tokens, pipeline.cfg, pipeline, config, device)

    def pipeline_for(self, data_dir: str | Path, speaker_stats: dict | None = None) -> FeaturePipeline:
        """The load-time pipeline for the stored features of ``data_dir``.

        As in Kaldi/EESEN (``apply-cmvn --utt2spk``), a model trained with ``cmvn: speaker`` normalises
        each test speaker with that speaker's own stats: ``speaker_stats`` (speaker -> ``(2, D+1)``) when
        given, else the dir's ``cmvn.scp`` (an error when missing). An utterance with no speaker is a loose
        file, normalised with the model's global stats as the prior, as :meth:`features` does. Global and
        per-utterance models use the model dir's pipeline as it is.
        """
        if self.feature_config.cmvn != "speaker":
            return self.pipeline
        from asr.cmvn import Cmvn

        if speaker_stats is None:
            speaker_stats = Cmvn.load(data_dir, per_speaker=True).speaker_stats
        return FeaturePipeline(self.feature_config, Cmvn(global_stats=self.pipeline.cmvn.global_stats,
                                                         speaker_stats=speaker_stats))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Audio ``(T,)`` at ``feature_config.sample_rate`` -> model input ``(N', D')`` (extraction + pipeline).

        No speaker is known here: a ``cmvn: speaker`` model normalises with the utterance's own stats and
        the global ones as a prior (:data:`asr.features.SPEAKER_PRIOR_FRAMES`).
        """
        if self.feature_config.kind == "precomputed":
            raise AsrError(f"{self.path}: trained on precomputed features; it cannot featurise audio")
        return self.pipeline(compute_features(wave, self.feature_config))

    @torch.no_grad()
    def log_probs(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Model inputs ``[(N_i, D)]`` -> ``(log_probs (B, T, V), lengths (B,))`` on CPU."""
        if not feats:
            raise AsrError("log_probs: no utterances")
        lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        x = feats[0].new_zeros(len(feats), int(lengths.max()), feats[0].shape[1])
        for i, f in enumerate(feats):
            x[i, : f.shape[0]] = f
        lp, out_lengths = self.model(x.to(self.device), lengths)
        return lp.float().cpu(), out_lengths.cpu()
