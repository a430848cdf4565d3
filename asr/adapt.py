"""Unsupervised speaker adaptation: a second decoding pass per speaker (decoder config ``adapt_epochs``).

Kaldi's speaker-adapted decoding estimates an fMLLR transform from a first pass's hypotheses and
decodes again. Here the transform is the network itself: each speaker's confident first-pass
hypotheses fine-tune a copy of the model for ``adapt_epochs`` epochs (Adam, ``adapt_lr``, the
training config's batch size, gradient clip and dropout), and that copy decodes the speaker's
utterances again. No reference is read; the labels are the decoder's own output, so a speaker is
adapted the same way in a test set as in the field. Errors the model makes confidently are not
corrected this way; what it gains is the speaker's voice on the words it already gets right, which
moves its less certain guesses.

A hypothesis is confident when its share of the first pass's n-best mass (the softmax of the
:data:`SELECT_NBEST` best scores) is at least ``adapt_min_conf``. The first pass uses the
configured beam search (LM included) with that n-best; for ``decoder: greedy`` it is an LM-free
prefix beam search, while the second pass decodes greedily as asked. A speaker with fewer than
:data:`MIN_UTTS` confident utterances keeps the model as trained: under the beam decoder its
first-pass n-best (the same search) is its output, under greedy it is decoded again, so the output is
always the configured decoder's. ``asr transcribe --one-speaker``
treats its files as one speaker and adapts to them in the same way (:func:`adapt_transcriber`).
"""

from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import replace
from pathlib import Path

import torch

from asr.decoders import DecodeConfig, make_decoder
from asr.errors import AsrError

log = logging.getLogger(__name__)

SELECT_NBEST = 8  # alternatives the first pass keeps to measure a hypothesis' confidence
MIN_UTTS = 5  # confident utterances a speaker needs before its model is fine-tuned
Result = dict[str, list[tuple[list[str], float]]]  # utt -> n-best (words, score), as asr.decode


def first_pass_config(cfg: DecodeConfig) -> DecodeConfig:
    """The decoder config whose n-best picks the confident hypotheses."""
    if cfg.decoder == "wfst":
        raise AsrError("adapt_epochs: speaker adaptation needs the greedy or beam decoder (its n-best), not wfst")
    if cfg.decoder == "greedy":
        return replace(cfg, decoder="beam", lm=None, nbest=SELECT_NBEST, adapt_epochs=0)
    return replace(cfg, nbest=max(cfg.nbest, SELECT_NBEST), adapt_epochs=0)


def confidence(nbest: list[tuple[list[str], float]]) -> float:
    """The best hypothesis' share of the n-best's probability mass (1.0 when it is the only one)."""
    scores = torch.tensor([s for _, s in nbest], dtype=torch.float64)
    return float(torch.softmax(scores, 0)[0]) if len(nbest) else 0.0


def fine_tune(
    model: torch.nn.Module, inputs: list[torch.Tensor], targets: list[list[int]], epochs: int, lr: float,
    frames_per_batch: int, grad_clip: float, seed: int = 0,
) -> tuple[torch.nn.Module, float, float]:
    """A copy of ``model`` fine-tuned with CTC on ``inputs`` [(N_i, D)] -> ``targets`` [token ids].

    Returns ``(model copy in eval mode, mean loss per utterance of the first epoch, of the last)``.
    ``model`` itself is left as it is; the draws (batch order, dropout) come from ``seed`` alone.
    """
    from asr.dataset import bucket_batches
    from asr.models import ctc_loss

    net = copy.deepcopy(model).train()
    device = next(net.parameters()).device
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = random.Random(seed)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for epoch in range(epochs):
            batches = bucket_batches([x.shape[0] for x in inputs], frames_per_batch, seed=seed + epoch)
            rng.shuffle(batches)
            total = 0.0
            for b in batches:
                lengths = torch.tensor([inputs[i].shape[0] for i in b])
                x = torch.nn.utils.rnn.pad_sequence([inputs[i] for i in b], batch_first=True).to(device)
                y = torch.nn.utils.rnn.pad_sequence([torch.tensor(targets[i]) for i in b], batch_first=True)
                y_lens = torch.tensor([len(targets[i]) for i in b])
                lp, out_lens = net(x, lengths.to(device))
                loss_sum, _ = ctc_loss(lp.float(), out_lens, y.to(device), y_lens.to(device))
                opt.zero_grad(set_to_none=True)
                (loss_sum / len(b)).backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip or math.inf)
                opt.step()
                total += float(loss_sum.detach())
            losses.append(total / max(1, len(inputs)))
    return net.eval(), losses[0] if losses else math.nan, losses[-1] if losses else math.nan


def adapt_speakers(md, data_dir: Path, cfg: DecodeConfig, first: Result, batching: tuple[int, int]) -> Result:
    """Second pass over ``data_dir``: each speaker decoded by a copy of ``md``'s model tuned on its
    confident ``first``-pass hypotheses (n-best lists of :func:`first_pass_config`)."""
    from asr.datadir import DataDir, spk2utt_from_utt2spk
    from asr.model_inputs import ModelInputs, log_probs_of

    data = DataDir.load(data_dir, read_text=False)
    src = ModelInputs(md, data_dir)
    decoder = make_decoder(md.tokens.symbols, cfg)
    frames, clip = _batching(md)
    out: Result = {}
    adapted = 0
    for spk, utts in spk2utt_from_utt2spk(data.utt2spk).items():
        utts = [u for u in utts if u in first]
        sure = [u for u in utts if first[u][0][0] and confidence(first[u]) >= cfg.adapt_min_conf]
        spk_md = md
        if len(sure) >= MIN_UTTS:
            inputs = [src.read(u)[0] for u in sure]
            targets = [md.tokens.encode(" ".join(first[u][0][0])) for u in sure]
            net, before, after = fine_tune(md.model, inputs, targets, cfg.adapt_epochs, cfg.adapt_lr, frames, clip)
            spk_md = copy.copy(md)
            spk_md.model = net
            adapted += 1
            _log_tuned(spk, len(sure), len(utts), before, after)
        else:
            log.info("adapt %s: %d of %d utterances confident (< %d): not adapted", spk, len(sure), len(utts),
                     MIN_UTTS)
            if cfg.decoder == "beam":  # the first pass was this very search with a longer n-best
                out.update((u, first[u][: cfg.nbest]) for u in utts)
                continue
        for names, lp, lens, _ in log_probs_of(spk_md, data_dir, utts, *batching, src=src):
            for u, hyps in zip(names, decoder.decode(lp, lens), strict=True):
                out[u] = [(h.words, h.score) for h in hyps]
    log.info("adapted %d speaker(s) of %d", adapted, len(set(data.utt2spk.values())))
    return out


def adapt_transcriber(tr, sources: list, cfg: DecodeConfig) -> int:
    """``transcribe --one-speaker``: tune ``tr``'s model on the confident first-pass hypotheses of ``sources``
    (AudioSources of one speaker, whose pooled stats ``tr`` already uses), as :func:`adapt_speakers` does
    for a speaker of a data dir; every later ``tr.transcribe`` then uses the tuned copy. Files longer
    than one chunk are transcribed by it but not tuned on. Returns the number of files tuned on."""
    from asr.features import compute_features

    if tr.exported is not None:
        raise AsrError("adapt_epochs: an exported --engine cannot be fine-tuned; use --engine eager")
    first = make_decoder(tr.md.tokens.symbols, first_pass_config(cfg))
    inputs, targets = [], []
    for audio in sources:
        if audio.num_samples > tr.chunk + tr.context or audio.num_samples < tr.cfg.window_samples:
            continue
        try:
            x = tr.pipeline(compute_features(audio.read(0, audio.num_samples), tr.cfg))
        except AsrError:
            continue  # its transcription says why
        lp, lens = tr.md.log_probs([x])
        nbest = [(h.words, h.score) for h in first.decode(lp, lens)[0]]
        if nbest and nbest[0][0] and confidence(nbest) >= cfg.adapt_min_conf:
            inputs.append(x)
            targets.append(tr.md.tokens.encode(" ".join(nbest[0][0])))
    if len(inputs) < MIN_UTTS:
        log.info("adapt: %d of %d files confident (< %d): not adapted", len(inputs), len(sources), MIN_UTTS)
        return 0
    frames, clip = _batching(tr.md)
    net, before, after = fine_tune(tr.md.model, inputs, targets, cfg.adapt_epochs, cfg.adapt_lr, frames, clip)
    tr.md.model = net
    _log_tuned("the speaker", len(inputs), len(sources), before, after)
    return len(inputs)


def _batching(md) -> tuple[int, float]:
    """``(frames_per_batch, grad_clip)`` of the model's training config."""
    train_cfg = md.config if isinstance(md.config, dict) else {}
    return int(train_cfg.get("frames_per_batch", 20000)), float((train_cfg.get("optim") or {}).get("grad_clip", 5.0))


def _log_tuned(who: str, n: int, total: int, before: float, after: float) -> None:
    log.info("adapt %s: %d of %d utterances confident; CTC loss on them %.3f -> %.3f per utterance",
             who, n, total, before, after)
