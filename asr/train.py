"""``asr train``: BiLSTM-CTC training with bucketing, newbob, exact resume, DDP and checkpoint averaging.

The whole training state (model, optimizer, schedule, sampler position, RNG states, metrics history)
goes atomically into ``EXP_DIR/last.pt`` every ``checkpoint_every`` steps and after each epoch;
rerunning the same command resumes from it and ends with the weights an uninterrupted run would
have (CPU, same seed). Batch order depends only on (seed, epoch), dropout draws from the restored
torch RNG, and the DataLoader gets its own generator so that creating it draws nothing.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each global batch is dealt out across ranks and every rank
scales its loss by ``world_size / global_batch``: DDP's gradient averaging then yields exactly the
single-process gradient of the same global batch. Only rank 0 writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from asr.augment import augment_frames
from asr.checkpoint import load_train_state, model_args, save_epoch, save_final, save_train_state
from asr.config import load, to_dict
from asr.dataset import BucketBatchSampler, FeatsDataset, collate
from asr.errors import AsrError
from asr.features import load_pipeline, read_feature_config
from asr.metrics import METRIC_COLUMNS, TensorBoardLog, greedy_errors, plot_metrics, write_metrics
from asr.modeldir import check_exp_dir, open_for_training
from asr.models import CTCModel, ModelConfig, build_model, ctc_loss
from asr.schedule import Schedule, ScheduleConfig
from asr.specaugment import SpecAugConfig
from asr.tokens import TokenTable
from asr.vtlp import VtlpConfig, vtlp_first_bin

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    name: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0
    grad_clip: float = 5.0  # max global gradient norm; 0 = off


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    max_epochs: int = 20
    frames_per_batch: int = 20000  # cap on batch_size x longest utterance (post-pipeline frames), global
    max_batch_size: int = 0  # 0 = no cap beyond frames_per_batch
    sortagrad: bool = True
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = per epoch only)
    average: Literal["best", "last", "none"] = "best"  # final.pt = mean of the best/last N epochs
    average_n: int = 3
    # What "best" ranks epochs by: the schedule's metric, or dev CER / dev loss whatever the schedule uses.
    average_metric: Literal["schedule", "dev_cer", "dev_loss"] = "schedule"
    seed: int = 0
    specaug: bool = False
    # Masks on the normalised features before deltas/stacking: widths in stored feature bins and frames.
    specaug_opts: SpecAugConfig = field(default_factory=SpecAugConfig)
    # Vocal-tract-length perturbation: a random warp of the mel axis per utterance (fbank features only).
    vtlp: VtlpConfig = field(default_factory=VtlpConfig)
    loose_cmvn: float = 0.0  # share normalised as transcribe does a loose file (FeatsDataset.set_loose_share)
    amp: bool = True  # CUDA only
    num_workers: int = 0
    max_unk_fraction: float = 0.05  # more uncovered text than this is an error
    log_every: int = 50
    tensorboard: bool = True  # scalars per step and epoch in EXP_DIR/tensorboard/ (needs the tensorboard package)


# ------------------------------------------------------------------ distributed


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ------------------------------------------------------------------ training


def train(
    data_dir: str | Path,
    dev_dir: str | Path,
    lang_dir: str | Path,
    exp_dir: str | Path,
    cfg: TrainConfig,
    on_step: Callable[[int], None] | None = None,
) -> Path:
    """Train (or resume) into ``exp_dir``; returns the path of ``final.pt``.

    ``on_step(global_step)`` runs after each optimizer step (tests use it to simulate a kill).
    """
    data_dir, dev_dir, lang_dir, exp_dir = Path(data_dir), Path(dev_dir), Path(lang_dir), Path(exp_dir)
    rank, world, local_rank = _dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    check_exp_dir(exp_dir, cfg, data_dir, lang_dir)
    if (exp_dir / "final.pt").is_file():
        log.info("%s: training already finished (final.pt exists)", exp_dir)
        return exp_dir / "final.pt"
    train_set, dev_set = _datasets(cfg, data_dir, dev_dir, lang_dir)
    with open_for_training(exp_dir, cfg, data_dir, lang_dir) if rank == 0 else contextlib.nullcontext():
        run = _build(cfg, train_set, exp_dir, device, rank, world)
        return _run(run, train_set, dev_set, on_step)


def _datasets(cfg: TrainConfig, data_dir: Path, dev_dir: Path, lang_dir: Path) -> tuple[FeatsDataset, FeatsDataset]:
    """Training and dev sets, their features made the same way; dev normalised as decoding will."""
    tokens = TokenTable.load(lang_dir / "tokens.txt")
    pipeline = load_pipeline(data_dir)
    if cfg.vtlp.enabled:
        vtlp_first_bin(pipeline.cfg)  # MFCC / precomputed features have no mel axis: one clear error, up front
    if cfg.model.frontend == "conv2d" and pipeline.cfg.kind == "whisper":  # encoder channels have no frequency order
        raise AsrError(f"{data_dir}: model.frontend conv2d reads mel bins, kind: whisper has none; use frontend=none")
    train_cfg_feats, dev_cfg_feats = to_dict(read_feature_config(data_dir)), to_dict(read_feature_config(dev_dir))
    if train_cfg_feats != dev_cfg_feats:
        raise AsrError(f"{dev_dir}/feats.yaml: differs from {data_dir}/feats.yaml; make dev features the same way")
    # Dev uses the training CMVN (as decoding will), except per-speaker stats which are the dev set's own.
    dev_pipeline = load_pipeline(dev_dir, dev_dir) if pipeline.cfg.cmvn == "speaker" else pipeline
    kw = {"max_unk_fraction": cfg.max_unk_fraction, "output_length": cfg.model.output_length}
    train_set = FeatsDataset(data_dir, tokens, pipeline, **kw)
    train_set.set_loose_share(cfg.loose_cmvn)
    dev_set = FeatsDataset(dev_dir, tokens, dev_pipeline, **kw)
    return train_set, dev_set


# ------------------------------------------------------------------ one run: set up, epochs, finish


def _new_state() -> dict:
    """Where a run stands: position, metrics history, running sums of the current epoch."""
    return dict(epoch=0, batch=0, step=0, history=[], loss_sum=0.0, utts=0, seconds=0.0, skipped=0, dropped=0)


@dataclass
class _Run:
    """What a training run carries from step to step; ``st`` is its resumable part (saved in ``last.pt``)."""

    cfg: TrainConfig
    exp_dir: Path
    device: torch.device
    rank: int
    world: int
    use_amp: bool
    model: CTCModel
    opt: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    margs: dict
    st: dict = field(default_factory=_new_state)
    net: torch.nn.Module | None = None  # the model, DDP-wrapped on more than one process
    tb: TensorBoardLog = field(default_factory=TensorBoardLog)  # writes nothing until _run opens it

    @property
    def main(self) -> bool:
        return self.rank == 0

    def save_state(self, path: Path) -> None:
        """``last.pt``: everything an exact resume needs (TensorBoard's points so far go to disk first)."""
        self.tb.flush()
        save_train_state(path, self.model, self.margs, self.opt, self.schedule, self.scaler, self.st, to_dict(self.cfg))


def _build(
    cfg: TrainConfig, train_set: FeatsDataset, exp_dir: Path, device: torch.device, rank: int, world: int
) -> _Run:
    """Seed every RNG, then build the model (its initial weights draw from torch's), optimizer, schedule, scaler."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg.model, train_set.feat_dim, len(train_set.tokens)).to(device)
    if cfg.optim.name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
    schedule = Schedule(cfg.schedule, cfg.optim.lr)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    margs = model_args(model, cfg.model)
    return _Run(cfg, exp_dir, device, rank, world, use_amp, model, opt, schedule, scaler, margs)


def _resume_or_announce(run: _Run, train_set: FeatsDataset, dev_set: FeatsDataset) -> None:
    """Restore ``last.pt`` (weights, optimizer, schedule, scaler, position, RNGs) when there is one."""
    if (run.exp_dir / "last.pt").is_file():
        run.st = st = load_train_state(run.exp_dir / "last.pt", run.model, run.opt, run.schedule, run.scaler)
        log.info("resuming %s at epoch %d, batch %d (step %d)", run.exp_dir, st["epoch"] + 1, st["batch"], st["step"])
        return
    log.info(
        "training %s on %d process(es): %d train / %d dev utterances, input dim %d, %d tokens, %.2fM parameters",
        run.exp_dir,
        run.world,
        len(train_set),
        len(dev_set),
        train_set.feat_dim,
        run.model.vocab_size,
        sum(p.numel() for p in run.model.parameters()) / 1e6,
    )


def _batching(run: _Run, train_set: FeatsDataset, dev_set: FeatsDataset) -> tuple[BucketBatchSampler, DataLoader]:
    """The training sampler (reset per epoch) and the dev loader; sizes the schedule's total steps."""
    cfg = run.cfg
    if cfg.specaug or cfg.vtlp.enabled:
        # Applied per utterance inside the feature pipeline, before stacking. With num_workers=0 it draws
        # from the torch RNG, which checkpoints restore, so a resumed run stays exact.
        train_set.augment = functools.partial(
            augment_frames,
            specaug_cfg=cfg.specaug_opts if cfg.specaug else None,
            vtlp_cfg=cfg.vtlp if cfg.vtlp.enabled else None,
            first_bin=vtlp_first_bin(train_set.pipeline.cfg) if cfg.vtlp.enabled else 0,
        )
    sampler = BucketBatchSampler(
        train_set.lengths, cfg.frames_per_batch, cfg.max_batch_size, cfg.sortagrad, True, cfg.seed, run.rank, run.world
    )
    dev_sampler = BucketBatchSampler(
        dev_set.lengths, cfg.frames_per_batch, cfg.max_batch_size, False, False, 0, run.rank, run.world
    )
    dev_loader = DataLoader(
        dev_set, batch_sampler=dev_sampler, collate_fn=collate, num_workers=cfg.num_workers, generator=torch.Generator()
    )
    run.schedule.set_total_steps(cfg.max_epochs * len(sampler.global_batches(0)))  # every epoch has as many batches
    return sampler, dev_loader


def _train_step(run: _Run, batch: tuple[torch.Tensor, ...], global_size: int) -> None:
    """One optimizer step on this rank's share of a global batch of ``global_size`` utterances.

    A non-finite loss or gradient skips the update; utterances too short for their labels are left out.
    """
    st, device, epoch, k = run.st, run.device, run.st["epoch"], run.st["batch"]
    x, x_lens, y, y_lens = (t.to(device) for t in batch)
    with torch.autocast(device.type, dtype=torch.float16, enabled=run.use_amp):
        lp, out_lens = run.net(x, x_lens)
    loss_sum, n_bad = ctc_loss(lp.float(), out_lens, y, y_lens)
    loss = loss_sum * (run.world / global_size)  # DDP averages over ranks: the result is sum / global batch
    run.opt.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.opt)
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.cfg.optim.grad_clip or math.inf)
    loss_all, n_bad = _all_sum([loss_sum.item(), float(n_bad)], device)
    if math.isfinite(loss_all) and torch.isfinite(norm):
        run.schedule.apply(run.opt, st["step"])
        run.scaler.step(run.opt)
        run.tb.step(st["step"] + 1, loss_all / global_size, run.schedule.lr_at(st["step"]), float(norm))
        st["loss_sum"] += loss_all
        st["utts"] += global_size
    else:
        st["skipped"] += 1
        if not run.use_amp:  # with AMP an overflow is how the loss scale calibrates itself
            log.warning(
                "epoch %d batch %d: non-finite loss %.4g / gradient norm %.4g; step skipped",
                epoch + 1,
                k,
                loss_all,
                float(norm),
            )
    run.scaler.update()
    if n_bad:
        st["dropped"] += int(n_bad)
        log.warning("epoch %d batch %d: %d utterance(s) too short for their labels left out", epoch + 1, k, int(n_bad))
    st["batch"] += 1
    st["step"] += 1


def _train_one_epoch(
    run: _Run, train_set: FeatsDataset, sampler: BucketBatchSampler, on_step: Callable[[int], None] | None
) -> None:
    """The rest of epoch ``st["epoch"]`` from batch ``st["batch"]``, with mid-epoch checkpoints."""
    cfg, st, epoch = run.cfg, run.st, run.st["epoch"]
    sampler.set_epoch(epoch, st["batch"])
    sizes = [len(b) for b in sampler.global_batches()]
    loader = DataLoader(
        train_set,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.num_workers,
        # Seeds the workers' RNGs (augmentation) anew for each epoch and resume point, without
        # drawing from the global RNG.
        generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 10_007 + st["batch"]),
    )
    bar = tqdm(
        total=len(sizes),
        initial=st["batch"],
        desc=f"epoch {epoch + 1}",
        disable=None if run.main else True,
        leave=False,
    )
    t0 = time.time()
    for batch in loader:
        _train_step(run, batch, sizes[st["batch"]])
        bar.update(1)
        if run.main and st["step"] % cfg.log_every == 0:
            loss, lr = st["loss_sum"] / max(st["utts"], 1), run.schedule.lr_at(st["step"] - 1)
            log.info("epoch %d step %d: train loss %.4f, lr %.3g", epoch + 1, st["step"], loss, lr)
        if cfg.checkpoint_every and st["step"] % cfg.checkpoint_every == 0 and st["batch"] < len(sizes):
            st["seconds"] += time.time() - t0
            t0 = time.time()
            if run.main:
                run.save_state(run.exp_dir / "last.pt")
        if on_step is not None:
            on_step(st["step"])
    bar.close()
    st["seconds"] += time.time() - t0


@torch.no_grad()
def evaluate(model: CTCModel, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """Dev ``(loss per utterance, greedy token error rate in %)``, summed over all ranks."""
    model.eval()
    loss = utts = errs = toks = 0.0
    for x, x_lens, y, y_lens in loader:
        lp, out_lens = model(x.to(device), x_lens.to(device))
        loss_sum, _ = ctc_loss(lp, out_lens, y.to(device), y_lens.to(device))
        e, t = greedy_errors(lp, out_lens, y, y_lens)
        loss, utts, errs, toks = loss + float(loss_sum), utts + len(x_lens), errs + e, toks + t
    loss, utts, errs, toks = _all_sum([loss, utts, errs, toks], device)
    model.train()
    return loss / max(utts, 1), 100.0 * errs / max(toks, 1)


def _end_epoch(run: _Run, dev_loss: float, dev_cer: float) -> None:
    """Step the schedule on the dev metric, log the epoch's row, and (rank 0) write its outputs."""
    cfg, st, epoch = run.cfg, run.st, run.st["epoch"]
    lr_used = run.schedule.lr_at(st["step"] - 1)  # metrics.csv: the rate of the epoch's last step
    train_loss = st["loss_sum"] / max(st["utts"], 1)
    run.schedule.step(dev_cer if cfg.schedule.metric == "dev_cer" else dev_loss, epoch + 1)
    row = (epoch + 1, st["step"], train_loss, dev_loss, dev_cer, lr_used, st["seconds"])
    st["history"].append(dict(zip(METRIC_COLUMNS, row, strict=True)))  # a metrics.csv row
    run.tb.epoch(st["history"][-1])
    log.info(
        "epoch %d: train loss %.4f, dev loss %.4f, dev CER %.2f%%, lr %.3g, %d step(s) skipped%s",
        epoch + 1,
        train_loss,
        dev_loss,
        dev_cer,
        lr_used,
        st["skipped"],
        f"; stopping: {run.schedule.state['reason']}" if run.schedule.stop else "",
    )
    st.update(epoch=epoch + 1, batch=0, loss_sum=0.0, utts=0, skipped=0)
    if run.main:
        save_epoch(run.exp_dir, epoch + 1, run.model, run.margs, dev_loss, dev_cer)
        run.save_state(run.exp_dir / "last.pt")
        write_metrics(run.exp_dir, st["history"])
        try:
            plot_metrics(st["history"], run.exp_dir / "plots")
        except Exception as e:  # noqa: BLE001 - a plotting problem must not end a training run
            log.warning("plotting failed: %s", e)
    if run.world > 1:
        dist.barrier()


def _finish(run: _Run) -> Path:
    """``final.pt``: the average of the chosen epochs' weights (rank 0 writes it)."""
    cfg, exp_dir = run.cfg, run.exp_dir
    if run.main:
        metric = cfg.schedule.metric if cfg.average_metric == "schedule" else cfg.average_metric
        history, margs = run.st["history"], run.margs
        chosen = save_final(exp_dir, history, cfg.average, cfg.average_n, metric, margs, to_dict(cfg))
        log.info("%s: final.pt = average of epoch(s) %s", exp_dir, ",".join(map(str, chosen)))
    if run.world > 1:
        dist.barrier()
    return exp_dir / "final.pt"


def _run(run: _Run, train_set: FeatsDataset, dev_set: FeatsDataset, on_step: Callable[[int], None] | None) -> Path:
    """Resume or start, train epoch after epoch (each ends with a dev pass and its outputs), then average."""
    _resume_or_announce(run, train_set, dev_set)
    run.net = run.model
    if run.world > 1:
        device = run.device
        run.net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    sampler, dev_loader = _batching(run, train_set, dev_set)
    tb_dir = run.exp_dir / "tensorboard" if run.main and run.cfg.tensorboard else None
    with TensorBoardLog(tb_dir, run.st["step"], run.cfg.log_every) as run.tb:
        while run.st["epoch"] < run.cfg.max_epochs and not run.schedule.stop:
            _train_one_epoch(run, train_set, sampler, on_step)
            _end_epoch(run, *evaluate(run.model, dev_loader, run.device))
    return _finish(run)


def load_train_config(path: str | Path | list | None, overrides: list[str] | None = None) -> TrainConfig:
    return load(TrainConfig, path, overrides)


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.conf, args.set)
    if _dist_env()[0] > 0:  # one voice on the console: rank 0's
        logging.getLogger("asr").setLevel(logging.WARNING)
    try:
        train(args.data_dir, args.dev_dir, args.lang_dir, args.exp_dir, cfg)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a BiLSTM-CTC model into EXP_DIR (rerun to resume)")
    for name in ("data_dir", "dev_dir", "lang_dir", "exp_dir"):
        p.add_argument(name)
    p.add_argument(
        "--conf",
        action="append",
        default=[],
        help="training config YAML (e.g. conf/blstm.yaml); repeat to merge fragments left to right "
        "(--conf conf/blstm.yaml --conf conf/specaug.yaml); default: built-in",
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="K=V", help="override a config key, e.g. optim.lr=5e-4"
    )
    p.set_defaults(func=_cmd_train)


__all__ = ["OptimConfig", "TrainConfig", "ScheduleConfig", "train", "evaluate", "load_train_config"]
