"""A trained model's directory describes itself (EESEN habit): everything needed to run it lies beside the weights.

``exp/<tag>/``: ``config.yaml`` (resolved train config incl. the model), ``feats.yaml`` (feature
extraction + load-time pipeline), ``cmvn_global.ark``, ``tokens.txt`` (+ ``lexicon.txt`` for phones,
``bpe.model`` for sentencepiece units),
and checkpoints (``epoch-N.pt``, ``last.pt``, ``final.pt``) that each carry ``model_args`` (model
config, input dim, vocabulary size), so a checkpoint alone rebuilds its network.

``feats.yaml``'s ``cmvn`` records how the model's inputs were normalised in training, and decoding
does the same: ``global`` with the training set's ``cmvn_global.ark`` (copied here); ``speaker`` with
each data dir's own per-speaker ``cmvn.scp`` (:meth:`ModelDir.pipeline_for`) and, for loose files with
no speaker, the utterance's own stats; ``utterance`` per utterance; ``none`` not at all.
"""

from __future__ import annotations

import csv
import io
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from asr.atomic import atomic_path, write_text
from asr.cmvn import Cmvn
from asr.config import dump, from_dict, read_yaml, to_dict
from asr.errors import AsrError
from asr.features import FeatureConfig, FeaturePipeline, compute_features, read_feature_config
from asr.models import CTCModel, ModelConfig, build_model
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
}
METRIC_COLUMNS = ["epoch", "step", "train_loss", "dev_loss", "dev_cer", "lr", "seconds"]


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


def model_args(model: CTCModel, cfg: ModelConfig) -> dict:
    """What a checkpoint needs to rebuild ``model``."""
    from asr.config import to_dict

    return {"config": to_dict(cfg), "input_dim": model.input_dim, "vocab_size": model.vocab_size}


def model_from_checkpoint(ckpt: dict, where: str = "checkpoint") -> tuple[CTCModel, ModelConfig]:
    """Rebuild the network stored in a checkpoint dict (``model`` state + ``model_args``)."""
    if "model" not in ckpt or "model_args" not in ckpt:
        raise AsrError(f"{where}: not an asr checkpoint (no model/model_args)")
    args = ckpt["model_args"]
    cfg = from_dict(ModelConfig, args["config"], f"{where}: model")
    model = build_model(cfg, args["input_dim"], args["vocab_size"])
    model.load_state_dict(ckpt["model"])
    return model, cfg


# ------------------------------------------------------------------ training outputs


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


def save_checkpoint(obj: dict, path: Path) -> None:
    """torch.save, atomically (a kill leaves the previous file). ``obj`` holds only tensors and plain
    Python types, so :func:`load_checkpoint` can read it with ``weights_only=True``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint without running any code from it (``weights_only=True``).

    A shared ``final.pt`` is a pickle; a full unpickle could run arbitrary code. Anything beyond
    tensors and plain containers is refused with one line naming the file.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AsrError(f"{path}: refused: not a plain-tensor checkpoint ({first[:200]})") from None
    except Exception as e:  # noqa: BLE001 - any other read failure is the same user problem
        raise AsrError(f"{path}: cannot read checkpoint: {str(e).strip().splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict):
        raise AsrError(f"{path}: not an asr checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt


def write_metrics(exp_dir: Path, history: list[dict]) -> None:
    """``metrics.csv`` from the history kept in the checkpoint (so a resumed run never duplicates rows)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in METRIC_COLUMNS})
    write_text(exp_dir / "metrics.csv", buf.getvalue())


def plot_metrics(exp_dir: Path, history: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    ax.plot(epochs, [r["dev_loss"] for r in history], "s-", label="dev loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("CTC loss per utterance")
    ax2 = ax.twinx()
    ax2.plot(epochs, [r["dev_cer"] for r in history], "^--", color="tab:red", label="dev CER %")
    ax2.set_ylabel("dev CER (%)")
    fig.legend(loc="upper right")
    fig.tight_layout()
    (exp_dir / "plots").mkdir(exist_ok=True)
    with atomic_path(exp_dir / "plots" / "loss.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def choose_epochs(history: list[dict], how: str, n: int, metric: str) -> list[int]:
    """Epochs whose weights make ``final.pt``: the best ``n`` by ``metric`` (``dev_cer`` or ``dev_loss``,
    lower is better; ties: the later epoch), the last ``n``, or with ``how == "none"`` just the last epoch
    (its weights as they are)."""
    if metric not in ("dev_cer", "dev_loss"):
        raise AsrError(f"average by {metric!r}: expected dev_cer or dev_loss")
    epochs = [r["epoch"] for r in history]
    if not epochs:
        raise AsrError("no finished epoch to make final.pt from")
    if how == "none":
        return [epochs[-1]]
    if how == "best":
        ranked = sorted(epochs, key=lambda e: (history[e - 1][metric], -e))
    else:
        ranked = epochs[::-1]
    return sorted(ranked[: max(1, n)])


def average_checkpoints(exp_dir: Path, history: list[dict], how: str, n: int, metric: str) -> tuple[dict, list[int]]:
    """Mean of the weights of the epochs :func:`choose_epochs` picks."""
    chosen = choose_epochs(history, how, n, metric)
    avg: dict[str, torch.Tensor] = {}
    for e in chosen:
        state = load_checkpoint(exp_dir / f"epoch-{e}.pt")["model"]
        for k, v in state.items():
            if v.is_floating_point():
                avg[k] = avg[k] + v.double() if k in avg else v.double()
            else:
                avg[k] = v
    return {k: (v / len(chosen)).float() if v.is_floating_point() else v for k, v in avg.items()}, chosen


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
        """Load ``exp_dir/checkpoint`` (a name inside the dir or a path) with the dir's tokens and features."""
        exp_dir = Path(exp_dir)
        if not exp_dir.is_dir():
            raise AsrError(f"{exp_dir}: no such model dir")
        for name in ("tokens.txt", "feats.yaml"):
            if not (exp_dir / name).is_file():
                raise AsrError(f"{exp_dir}/{name}: missing (not a model dir written by 'asr train'?)")
        ckpt_path = Path(checkpoint) if Path(checkpoint).is_file() else exp_dir / checkpoint
        if not ckpt_path.is_file():
            raise AsrError(f"{ckpt_path}: no such checkpoint (training not finished?)")
        ckpt = load_checkpoint(ckpt_path)
        model, _ = model_from_checkpoint(ckpt, str(ckpt_path))
        device = torch.device(device)
        model.to(device).eval()
        tokens = TokenTable.load(exp_dir / "tokens.txt")
        if len(tokens) != model.vocab_size:
            raise AsrError(f"{exp_dir}/tokens.txt: {len(tokens)} tokens but {ckpt_path.name} has {model.vocab_size}")
        cfg = read_feature_config(exp_dir)
        # A speaker-normalised model keeps only the training set's global stats: data dirs bring their
        # own per-speaker stats (pipeline_for), loose files are normalised per utterance.
        cmvn = Cmvn.load(exp_dir) if cfg.cmvn in ("global", "speaker") else None
        pipeline = FeaturePipeline(cfg, cmvn)
        config = read_yaml(exp_dir / "config.yaml") if (exp_dir / "config.yaml").is_file() else {}
        return cls(exp_dir, model, tokens, pipeline.cfg, pipeline, config, device)

    def pipeline_for(self, data_dir: str | Path) -> FeaturePipeline:
        """The load-time pipeline for the stored features of ``data_dir``.

        As in Kaldi/EESEN (``apply-cmvn --utt2spk``), a model trained with ``cmvn: speaker`` normalises
        each test speaker with that speaker's own stats, read from ``data_dir/cmvn.scp`` (an error when
        missing); global and per-utterance models use the model dir's pipeline as it is.
        """
        if self.feature_config.cmvn != "speaker":
            return self.pipeline
        return FeaturePipeline(self.feature_config, Cmvn.load(data_dir, per_speaker=True))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Audio ``(T,)`` at ``feature_config.sample_rate`` -> model input ``(N', D')`` (extraction + pipeline).

        No speaker is known here: a ``cmvn: speaker`` model normalises with the utterance's own stats.
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
