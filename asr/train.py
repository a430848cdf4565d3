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

from asr.augment import SpecAugConfig, VtlpConfig, augment_frames, vtlp_first_bin
from asr.config import load, to_dict
from asr.dataset import BucketBatchSampler, FeatsDataset, collate, load_pipeline
from asr.errors import AsrError
from asr.features import read_feature_config
from asr.lock import hold
from asr.modeldir import (
    average_checkpoints,
    check_exp_dir,
    load_checkpoint,
    model_args,
    plot_metrics,
    save_checkpoint,
    write_meta,
    write_metrics,
)
from asr.models import CTCModel, ModelConfig, build_model, ctc_loss
from asr.schedule import Schedule, ScheduleConfig
from asr.tokens import TokenTable

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
    amp: bool = True  # CUDA only
    num_workers: int = 0
    max_unk_fraction: float = 0.05  # more uncovered text than this is an error
    log_every: int = 50


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


# ------------------------------------------------------------------ the loop


def greedy_errors(
    log_probs: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor, y_lens: torch.Tensor
) -> tuple[int, int]:
    """Token edit errors of argmax+collapse hypotheses vs references, and the reference token count.

    ``log_probs`` (B, T, V), ``lengths`` (B,), ``y`` (B, U), ``y_lens`` (B,).
    """
    best = log_probs.argmax(-1).cpu()
    errors = total = 0
    for b in range(best.shape[0]):
        path = best[b, : int(lengths[b])].tolist()
        hyp = [t for i, t in enumerate(path) if t != 0 and (i == 0 or t != path[i - 1])]
        ref = y[b, : int(y_lens[b])].tolist()
        prev = list(range(len(ref) + 1))
        for i, h in enumerate(hyp, 1):
            cur = [i] + [0] * len(ref)
            for j, r in enumerate(ref, 1):
                cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (h != r))
            prev = cur
        errors += prev[-1]
        total += len(ref)
    return errors, total


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


def _rng_state() -> dict:
    """Every RNG's state as tensors and plain types (a checkpoint must load with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    use_amp = cfg.amp and device.type == "cuda"
    main = rank == 0

    check_exp_dir(exp_dir, cfg, data_dir, lang_dir)
    if (exp_dir / "final.pt").is_file():
        log.info("%s: training already finished (final.pt exists)", exp_dir)
        return exp_dir / "final.pt"
    tokens = TokenTable.load(lang_dir / "tokens.txt")
    pipeline = load_pipeline(data_dir)
    if cfg.vtlp.enabled:
        vtlp_first_bin(pipeline.cfg)  # MFCC / precomputed features have no mel axis: one clear error, up front
    train_cfg_feats, dev_cfg_feats = to_dict(read_feature_config(data_dir)), to_dict(read_feature_config(dev_dir))
    if train_cfg_feats != dev_cfg_feats:
        raise AsrError(f"{dev_dir}/feats.yaml: differs from {data_dir}/feats.yaml; make dev features the same way")
    # Dev uses the training CMVN (as decoding will), except per-speaker stats which are the dev set's own.
    dev_pipeline = load_pipeline(dev_dir, dev_dir) if pipeline.cfg.cmvn == "speaker" else pipeline
    kw = {"max_unk_fraction": cfg.max_unk_fraction, "output_length": cfg.model.output_length}
    train_set = FeatsDataset(data_dir, tokens, pipeline, **kw)
    dev_set = FeatsDataset(dev_dir, tokens, dev_pipeline, **kw)
    with contextlib.ExitStack() as stack:
        if main:
            exp_dir.mkdir(parents=True, exist_ok=True)
            # One writer per model dir: a second 'asr train' here would interleave checkpoints.
            stack.enter_context(hold(exp_dir, "asr train"))
            write_meta(exp_dir, cfg, data_dir, lang_dir)
            handler = logging.FileHandler(exp_dir / "train.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            logging.getLogger("asr").addHandler(handler)
            logging.getLogger("asr").setLevel(logging.INFO)
            stack.callback(handler.close)
            stack.callback(logging.getLogger("asr").removeHandler, handler)
        return _run(cfg, train_set, dev_set, tokens, exp_dir, device, rank, world, use_amp, on_step)


def _run(
    cfg: TrainConfig,
    train_set: FeatsDataset,
    dev_set: FeatsDataset,
    tokens: TokenTable,
    exp_dir: Path,
    device: torch.device,
    rank: int,
    world: int,
    use_amp: bool,
    on_step: Callable[[int], None] | None,
) -> Path:
    main = rank == 0
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = build_model(cfg.model, train_set.feat_dim, len(tokens)).to(device)
    if cfg.optim.name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay
        )
    schedule = Schedule(cfg.schedule, cfg.optim.lr)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    st = {
        "epoch": 0,
        "batch": 0,
        "step": 0,
        "history": [],
        "loss_sum": 0.0,
        "utts": 0,
        "seconds": 0.0,
        "skipped": 0,
        "dropped": 0,
    }
    margs = model_args(model, cfg.model)
    if (exp_dir / "last.pt").is_file():
        ckpt = load_checkpoint(exp_dir / "last.pt")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        scaler.load_state_dict(ckpt["scaler"])
        st = ckpt["state"]
        _set_rng_state(ckpt["rng"])
        log.info("resuming %s at epoch %d, batch %d (step %d)", exp_dir, st["epoch"] + 1, st["batch"], st["step"])
    else:
        log.info(
            "training %s on %d process(es): %d train / %d dev utterances, input dim %d, %d tokens, %.2fM parameters",
            exp_dir,
            world,
            len(train_set),
            len(dev_set),
            train_set.feat_dim,
            len(tokens),
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
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
        train_set.lengths, cfg.frames_per_batch, cfg.max_batch_size, cfg.sortagrad, True, cfg.seed, rank, world
    )
    dev_sampler = BucketBatchSampler(
        dev_set.lengths, cfg.frames_per_batch, cfg.max_batch_size, False, False, 0, rank, world
    )
    dev_loader = DataLoader(
        dev_set, batch_sampler=dev_sampler, collate_fn=collate, num_workers=cfg.num_workers, generator=torch.Generator()
    )
    schedule.set_total_steps(cfg.max_epochs * len(sampler.global_batches(0)))  # every epoch has as many batches

    def checkpoint(path: Path) -> None:
        save_checkpoint(
            {
                "model": model.state_dict(),
                "model_args": margs,
                "optimizer": opt.state_dict(),
                "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(),
                "state": st,
                "rng": _rng_state(),
                "config": to_dict(cfg),
            },
            path,
        )

    while st["epoch"] < cfg.max_epochs and not schedule.stop:
        epoch = st["epoch"]
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
            disable=None if main else True,
            leave=False,
        )
        t0 = time.time()
        for x, x_lens, y, y_lens in loader:
            k = st["batch"]
            x, x_lens, y, y_lens = x.to(device), x_lens.to(device), y.to(device), y_lens.to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                lp, out_lens = net(x, x_lens)
            loss_sum, n_bad = ctc_loss(lp.float(), out_lens, y, y_lens)
            loss = loss_sum * (world / sizes[k])  # DDP averages over ranks: the result is sum / global batch
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or math.inf)
            loss_all, n_bad = _all_sum([loss_sum.item(), float(n_bad)], device)
            if math.isfinite(loss_all) and torch.isfinite(norm):
                schedule.apply(opt, st["step"])
                scaler.step(opt)
                st["loss_sum"] += loss_all
                st["utts"] += sizes[k]
            else:
                st["skipped"] += 1
                if not use_amp:  # with AMP an overflow is how the loss scale calibrates itself
                    log.warning(
                        "epoch %d batch %d: non-finite loss %.4g / gradient norm %.4g; step skipped",
                        epoch + 1,
                        k,
                        loss_all,
                        float(norm),
                    )
            scaler.update()
            if n_bad:
                st["dropped"] += int(n_bad)
                log.warning(
                    "epoch %d batch %d: %d utterance(s) too short for their labels left out", epoch + 1, k, int(n_bad)
                )
            st["batch"] += 1
            st["step"] += 1
            bar.update(1)
            if main and st["step"] % cfg.log_every == 0:
                log.info(
                    "epoch %d step %d: train loss %.4f, lr %.3g",
                    epoch + 1,
                    st["step"],
                    st["loss_sum"] / max(st["utts"], 1),
                    schedule.lr_at(st["step"] - 1),
                )
            if cfg.checkpoint_every and st["step"] % cfg.checkpoint_every == 0 and st["batch"] < len(sizes):
                st["seconds"] += time.time() - t0
                t0 = time.time()
                if main:
                    checkpoint(exp_dir / "last.pt")
            if on_step is not None:
                on_step(st["step"])
        bar.close()
        st["seconds"] += time.time() - t0
        dev_loss, dev_cer = evaluate(model, dev_loader, device)
        lr_used = schedule.lr_at(st["step"] - 1)  # metrics.csv: the rate of the epoch's last step
        train_loss = st["loss_sum"] / max(st["utts"], 1)
        schedule.step(dev_cer if cfg.schedule.metric == "dev_cer" else dev_loss, epoch + 1)
        st["history"].append(
            {
                "epoch": epoch + 1,
                "step": st["step"],
                "train_loss": train_loss,
                "dev_loss": dev_loss,
                "dev_cer": dev_cer,
                "lr": lr_used,
                "seconds": st["seconds"],
            }
        )
        log.info(
            "epoch %d: train loss %.4f, dev loss %.4f, dev CER %.2f%%, lr %.3g, %d step(s) skipped%s",
            epoch + 1,
            train_loss,
            dev_loss,
            dev_cer,
            lr_used,
            st["skipped"],
            f"; stopping: {schedule.state['reason']}" if schedule.stop else "",
        )
        st.update(epoch=epoch + 1, batch=0, loss_sum=0.0, utts=0, skipped=0)
        if main:
            save_checkpoint(
                {
                    "model": model.state_dict(),
                    "model_args": margs,
                    "epoch": epoch + 1,
                    "dev_loss": dev_loss,
                    "dev_cer": dev_cer,
                },
                exp_dir / f"epoch-{epoch + 1}.pt",
            )
            checkpoint(exp_dir / "last.pt")
            write_metrics(exp_dir, st["history"])
            try:
                plot_metrics(exp_dir, st["history"])
            except Exception as e:  # noqa: BLE001 - a plotting problem must not end a training run
                log.warning("plotting failed: %s", e)
        if world > 1:
            dist.barrier()
    if main:
        metric = cfg.schedule.metric if cfg.average_metric == "schedule" else cfg.average_metric
        state, chosen = average_checkpoints(exp_dir, st["history"], cfg.average, cfg.average_n, metric)
        save_checkpoint(
            {"model": state, "model_args": margs, "averaged_epochs": chosen, "config": to_dict(cfg)},
            exp_dir / "final.pt",
        )
        log.info("%s: final.pt = average of epoch(s) %s", exp_dir, ",".join(map(str, chosen)))
    if world > 1:
        dist.barrier()
    return exp_dir / "final.pt"


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
    p.add_argument("data_dir")
    p.add_argument("dev_dir")
    p.add_argument("lang_dir")
    p.add_argument("exp_dir")
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


__all__ = ["OptimConfig", "TrainConfig", "ScheduleConfig", "train", "evaluate", "greedy_errors", "load_train_config"]
