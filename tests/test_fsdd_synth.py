"""FSDD's synthetic speakers (egs/fsdd/local/synth_digits.py, SYNTH=): a valid 8 kHz data dir of digits,
the same bytes on every run, and the recipe's stage 3 wiring."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from asr.datadir import DataDir, validate_data_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "egs" / "fsdd" / "local" / "synth_digits.py"
WORDS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]


def test_synth_digits_data_dir(tmp_path):
    pytest.importorskip("espeakng_loader", reason="synthetic speakers need espeakng-loader (pip install -e '.[demo]')")
    # Two runs, each in a fresh process. Seed 2's five voices include en+f3, a breathy variant
    # that draws from espeak-ng's own noise generator: without a per-utterance seed it differs per run.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    runs = [tmp_path / "a", tmp_path / "b"]
    for i, out in enumerate(runs):
        if i:
            time.sleep(1.1)  # unseeded, espeak-ng's noise differs between runs a second apart (not at once)
        proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--max-voices", "5", "--utts-per-voice", "4",
                               "--seed", "2"], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
    a = runs[0]
    assert validate_data_dir(a, need_audio=True) == []
    d = DataDir.load(a)
    assert len(d.utts) == 20 and len(d.spk2utt) == 5
    assert all(spk.startswith("tts-en") for spk in d.spk2utt)
    assert "tts-en_f3" in d.spk2utt
    assert all(utt.startswith(d.utt2spk[utt] + "-") for utt in d.utts)
    # Round-robin digits: 20 utterances say each digit twice.
    texts = sorted(d.text.values())
    assert texts == sorted(WORDS * 2)
    for utt in d.utts:
        wav = Path(d.wav_scp[utt])
        assert wav.is_absolute() and wav.is_relative_to(a.resolve())
        info = sf.info(wav)
        assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
        assert 0.1 < info.duration < 1.5, (utt, info.duration)
    # Deterministic: the second run wrote the same transcripts and the same audio, byte for byte.
    b = DataDir.load(runs[1])
    assert b.text == d.text and b.utt2spk == d.utt2spk
    for utt in d.utts:
        assert Path(d.wav_scp[utt]).read_bytes() == Path(b.wav_scp[utt]).read_bytes(), utt
    assert (a / "utt2synth").read_text() == (runs[1] / "utt2synth").read_text()


def test_fsdd_synth_recipe_wiring(recipe_make):
    """SYNTH= names the training data and puts synth_digits.py (seeded by SYNTH_SEED) into stage 3."""
    def var(*args: str) -> str:
        return recipe_make("fsdd", *args, "print-TRAIN_DATA").strip()

    assert var("SPLIT=spk", "SYNTH=3") == "train_spk_noise10_20_synth3"  # the pink-noise copy: on by default
    assert var("SPLIT=spk", "SYNTH=3", "NOISE_SNR=10") == "train_spk_noise10_synth3"
    # On by default for every split; SYNTH= turns it off.
    assert var("SPLIT=spk") == "train_spk_noise10_20_synth3"
    assert var("SPLIT=loso1", "TEST_SPEAKERS=george") == "train_loso_george_noise10_20_synth3"
    assert var() == "train_noise10_20_synth3"
    assert var("NOISE_SNR=") == "train_synth3"
    assert var("SPLIT=spk", "SYNTH=") == "train_spk_noise10_20"
    assert var("SYNTH=", "NOISE_SNR=") == "train"
    dry = recipe_make("fsdd", "-n", "SPLIT=spk", "SYNTH=3", "augment")
    assert "local/synth_digits.py data/synth3 --utts-per-voice 3 --seed 1 " in dry
    assert 'parts="$parts data/synth3"' in dry
    assert "combine-data-dirs data/train_spk_noise10_20_synth3 data/train_spk $parts" in dry
