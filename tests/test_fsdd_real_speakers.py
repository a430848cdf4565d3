"""FSDD's extra real speakers (egs/fsdd/local/real_speakers.py, SO762_DIR=): speechocean762 as one
valid data dir with ids that cannot meet FSDD's, read at the recipe's 8 kHz, and the recipe wiring
(tokens from the whole training text into their own lang dir, the LM still from FSDD's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from asr.audio import load_utterance
from asr.datadir import DataDir, validate_data_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "egs" / "fsdd" / "local" / "real_speakers.py"
SO762 = ROOT.parent / "shared" / "data" / "speechocean762"
DIGITS = {"ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


@pytest.mark.skipif(not SO762.is_dir(), reason=f"{SO762} absent (the shared corpora sit beside the repository)")
def test_real_speakers_data_dir(tmp_path):
    out = _run(str(SO762), str(tmp_path / "so762"))
    assert out.returncode == 0, out.stderr
    d = DataDir.load(tmp_path / "so762")
    assert validate_data_dir(tmp_path / "so762", need_audio=True) == []
    # Every utterance of both upstream sets, every speaker, each renamed speaker-first.
    upstream = sum(len((SO762 / s / "text").read_text().splitlines()) for s in ("train", "test"))
    assert len(d.utts) == upstream == 1750 and len(d.spk2utt) == 250
    assert all(utt.startswith(d.utt2spk[utt] + "-") and d.utt2spk[utt].startswith("so762-") for utt in d.utts)
    assert d.text["so762-0001-000010053"] == "THREE TWO TWO SEVEN"
    # 16 kHz FLAC, read at FSDD's 8 kHz: half the samples.
    utt = "so762-0001-000010053"
    info = sf.info(d.wav_scp[utt])
    assert info.samplerate == 16000
    wave = load_utterance(d, utt, 8000)
    assert abs(wave.shape[0] - info.frames // 2) <= 1

    out = _run(str(SO762), str(tmp_path / "so762d"), "--digits-only")
    assert out.returncode == 0, out.stderr
    dd = DataDir.load(tmp_path / "so762d")
    assert dd.text and all(set(t.split()) <= DIGITS for t in dd.text.values())
    assert set(dd.text) == {u for u, t in d.text.items() if set(t.split()) <= DIGITS}


def test_real_speakers_bad_corpus_is_one_line(tmp_path):
    out = _run(str(tmp_path), str(tmp_path / "out"))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert f"{tmp_path}/train/wav.scp" in out.stderr and "SO762_DIR" in out.stderr


def test_fsdd_real_speakers_recipe_wiring(recipe_make):
    def _make(*args: str) -> str:
        return recipe_make("fsdd", *args)

    so = "SO762_DIR=/corpora/speechocean762"
    assert _make("SPLIT=loso1", "TEST_SPEAKERS=nicolas", so, "print-TRAIN_DATA").strip() == \
        "train_loso_nicolas_noise10_20_synth3_so762"
    assert _make("SYNTH=", so, "SO762_OPTS=--digits-only", "print-TRAIN_DATA").strip() == "train_noise10_20_so762d"
    dry = _make("-n", "SPLIT=spk", so, "augment", "tokens", "lm")
    assert "local/real_speakers.py /corpora/speechocean762 data/so762 " in dry
    assert 'parts="$parts data/synth3 data/so762"' in dry
    # Tokens from everything training reads (speechocean762 brings letters FSDD's digits lack), in a
    # lang dir of their own so a run without it keeps data/lang; the LM only from FSDD's transcripts.
    assert "make-tokens data/train_spk_noise10_20_synth3_so762/text data/lang_so762 --unit char" in dry
    assert "build-lm data/train_spk/text" in dry
    plain = _make("-n", "SPLIT=spk", "tokens")
    assert "make-tokens data/train_spk/text data/lang --unit char" in plain
