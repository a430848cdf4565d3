#!/usr/bin/env bash
# GPU check of `asr decode --device cuda` (issue 14), runnable in under 2 minutes on a machine with a GPU.
#
#   bench/gpu_decode_check.sh [DATA_DIR]
#
# Trains a tiny model (2 epochs, EPOCHS=N to change) on DATA_DIR (a Kaldi data dir with wav.scp, text,
# utt2spk; copied, never written) or, without it, on 60 synthetic utterances of four tone "words"
# (../shared is not needed). Then, all in one Python process:
#   - decodes with --device cuda and --device cpu (greedy and beam) and diffs the texts; compares the
#     log-probs of every utterance (CPU vs CUDA, max |diff|) and of batch 1 vs sorted batches on CUDA;
#   - checks --device auto picks cuda, --nj 2 with cuda decodes in one process (one log line), and
#     `asr transcribe --device cuda` equals --device cpu;
# then runs bench/decode_throughput.py on the same audio (default-size random model, cuda and cpu rows).
# Exit status 0 when every check passes. Python packages missing there (kaldiio, soundfile + cffi,
# jiwer + rapidfuzz on the device machine) are installed from .whl/ in the repo root when it exists.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if ! "$PY" -c 'import kaldiio, soundfile, jiwer' 2>/dev/null && [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/asr_site .whl/*.whl
  export PYTHONPATH=/tmp/asr_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU visible to torch"; print("torch", torch.__version__, torch.cuda.get_device_name(0))'

status=0
"$PY" - "$WORK" "${1:-}" "${EPOCHS:-2}" <<'EOF' || status=1
import logging, shutil, sys, time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from asr.cli import main
from asr.datadir import read_kv, write_data_dir
from asr.decode import log_probs_of
from asr.features import FeatureConfig
from asr.make_feats import make_feats
from asr.cmvn import compute_cmvn
from asr.modeldir import ModelDir
from asr.models import ModelConfig
from asr.schedule import ScheduleConfig
from asr.tokens import make_tokens
from asr.train import OptimConfig, TrainConfig, train

work, given, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
logging.basicConfig(level=logging.INFO, format="%(message)s")
failures = []


def check(ok: bool, what: str) -> None:
    print(("PASS " if ok else "FAIL ") + what, flush=True)
    if not ok:
        failures.append(what)


def synthetic(out: Path, n: int = 60, rate: int = 16000) -> Path:
    """Utterances of 2-6 tone 'words' (a pitch each, with harmonics), gaps and noise."""
    rng = np.random.default_rng(0)
    pitch = {"LA": 220.0, "MI": 330.0, "SO": 494.0, "DO": 660.0}
    (out / "wav").mkdir(parents=True)
    wav, text = {}, {}
    for i in range(n):
        words = list(rng.choice(list(pitch), rng.integers(2, 7)))
        parts = [np.zeros(int(0.15 * rate))]
        for w in words:
            t = np.arange(int(rng.uniform(0.2, 0.35) * rate)) / rate
            tone = sum(np.sin(2 * np.pi * k * pitch[w] * t) / k for k in (1, 2, 3)) * np.hanning(len(t))
            parts += [0.3 * tone, np.zeros(int(rng.uniform(0.08, 0.2) * rate))]
        x = np.concatenate(parts) + 0.003 * rng.standard_normal(sum(len(p) for p in parts))
        utt = f"spk{i % 3}-utt{i:03d}"
        sf.write(out / "wav" / f"{utt}.wav", x.astype(np.float32), rate)
        wav[utt], text[utt] = str(out / "wav" / f"{utt}.wav"), " ".join(words)
    write_data_dir(out, wav_scp=wav, text=text, utt2spk={u: u.split("-")[0] for u in wav})
    return out


t0 = time.time()
if given:
    data = work / "data"
    shutil.copytree(given, data)
    for name in ("feats.scp", "utt2num_frames", "cmvn.scp", "feats.yaml", "cmvn_global.ark"):
        (data / name).unlink(missing_ok=True)
    rate = sf.info(next(iter(read_kv(data / "wav.scp").values())).split()[-1]).samplerate
else:
    data, rate = synthetic(work / "data"), 16000
audio_only = work / "audio_only"  # the same utterances from audio (no feats.scp): the other input path
shutil.copytree(data, audio_only)
fc = FeatureConfig(sample_rate=rate, num_mel_bins=40, cmvn="global", stack=2, subsample=2)
make_feats(data, fc, progress=False)
compute_cmvn(data)
make_tokens(data / "text", work / "lang")
cfg = TrainConfig(model=ModelConfig(num_layers=2, hidden=64, dropout=0.0, frontend="conv2d", frontend_channels=8),
                  optim=OptimConfig(lr=0.005), schedule=ScheduleConfig(name="none"), max_epochs=epochs,
                  frames_per_batch=4000)
train(data, data, work / "lang", work / "exp", cfg)
exp = work / "exp"
print(f"data + training: {time.time() - t0:.1f} s", flush=True)

# 1. log-probs: CPU vs CUDA, and batch 1 vs sorted batches on CUDA
def rows(md, **kw):
    out = {}
    for names, lp, lens, _ in log_probs_of(md, data, None, **kw):
        out.update({u: lp[i, : int(lens[i])] for i, u in enumerate(names)})
    return out

cpu, gpu = ModelDir.load(exp, device="cpu"), ModelDir.load(exp, device="cuda")
check(next(gpu.model.parameters()).is_cuda, "ModelDir.load(device='cuda') puts the model on the GPU")
a, b, c = rows(cpu), rows(gpu), rows(gpu, batch_size=1)
d_dev = max(float((a[u] - b[u]).abs().max()) for u in a)
d_batch = max(float((b[u] - c[u]).abs().max()) for u in b)
print(f"max |log p cpu - log p cuda| = {d_dev:.2e}; cuda batch 1 vs sorted batches: {d_batch:.2e}")
check(sorted(a) == sorted(b) == sorted(c) and d_dev < 1e-3, "CPU and CUDA log-probs agree (< 1e-3)")
check(d_batch < 1e-4, "CUDA: sorted batches equal batch 1 (< 1e-4)")

# 2. asr decode: texts of --device cuda and --device cpu, greedy and beam, feats and audio input
for decoder in ("greedy", "beam"):
    for src in (data, audio_only):
        outs = {}
        for device in ("cuda", "cpu"):
            o = work / f"d_{decoder}_{src.name}_{device}"
            rc = main(["decode", str(exp), str(src), "--decoder", decoder, "--device", device, "-o", str(o)])
            outs[device] = (o / "text").read_text() if rc == 0 else f"rc {rc}"
        same = outs["cuda"] == outs["cpu"]
        if not same:
            diff = [(x, y) for x, y in zip(outs["cuda"].splitlines(), outs["cpu"].splitlines()) if x != y]
            print(f"{len(diff)} differing lines, e.g. {diff[:3]}")
        check(same, f"decode --decoder {decoder} on {src.name}: --device cuda text == --device cpu text")
print("hyp/ref sample:", (work / "d_greedy_data_cuda" / "text").read_text().splitlines()[0],
      "|", read_kv(data / "text")[sorted(read_kv(data / "text"))[0]])


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


h = Lines()
logging.getLogger("asr").addHandler(h)
rc = main(["decode", str(exp), str(data), "--decoder", "greedy", "--nj", "2", "--device", "cuda", "-o", str(work / "nj2")])
check(rc == 0 and (work / "nj2" / "text").read_text() == (work / "d_greedy_data_cuda" / "text").read_text()
      and any("one process decodes (--nj 2 ignored" in m for m in h.lines), "--nj 2 --device cuda: one process, same text")
h.lines.clear()
rc = main(["decode", str(exp), str(data), "--decoder", "greedy", "-o", str(work / "auto")])
check(rc == 0 and any(m.startswith("decoded ") and "(cuda" in m for m in h.lines), "--device auto decodes on cuda")
wav = next(iter(read_kv(data / "wav.scp").values())).split()[-1]
for device in ("cuda", "cpu"):
    rc = main(["transcribe", str(exp), wav, "--device", device, "--format", "json", "-o", str(work / f"t_{device}.json")])
    check(rc == 0, f"transcribe --device {device}")
t_cuda, t_cpu = ((work / f"t_{d}.json").read_text() for d in ("cuda", "cpu"))
import json
check(json.loads(t_cuda)[0]["text"] == json.loads(t_cpu)[0]["text"], "transcribe: --device cuda text == --device cpu")
print(f"checks: {time.time() - t0:.1f} s; {len(failures)} failed", flush=True)
sys.exit(1 if failures else 0)
EOF
"$PY" bench/decode_throughput.py --data "$WORK/data" --device cuda --utts 60 || status=1
exit $status
