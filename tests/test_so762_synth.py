"""speechocean762's synthetic readers (egs/speechocean762/local/synth_sentences.py, SYNTH=): each training
sentence read by N voices at 16 kHz, the same bytes on every run, one-line errors, and the stage 3 wiring."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf

from asr.datadir import DataDir, validate_data_dir, write_data_dir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "egs" / "speechocean762" / "local" / "synth_sentences.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SENTENCES = {"s1-a": "WE CALL IT BEAR", "s1-b": "MIKE LIKES THE WHITE ONE", "s2-a": "IT'S A NICE DAY"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=ENV, timeout=120)


def test_synth_sentences_data_dir(tmp_path):
    pytest.importorskip("espeakng_loader", reason="synthetic readers need espeakng-loader (pip install -e '.[demo]')")
    src = tmp_path / "train"
    write_data_dir(src, wav_scp={u: "/nonexistent.wav" for u in SENTENCES}, text=SENTENCES,
                   utt2spk={u: u.split("-")[0] for u in SENTENCES})
    outs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for out, more in zip(outs, ([], [], ["--max-sentences", "2"]), strict=True):
        time.sleep(1.1)  # unseeded, espeak-ng's noise differs between runs a second apart (not at once)
        res = run(str(src), str(out), "--copies", "2", "--seed", "3", *more)
        assert res.returncode == 0, res.stderr
    a = DataDir.load(outs[0])
    assert validate_data_dir(outs[0], need_audio=True) == []
    # Every sentence twice, each time by another voice, and nothing but the source's sentences.
    assert sorted(a.text.values()) == sorted(list(SENTENCES.values()) * 2)
    assert len(a.spk2utt) == 6 and all(spk.startswith("tts-en") for spk in a.spk2utt)
    for utt in a.utts:
        # <speaker>-<source utterance>, and the text is the source utterance's.
        src_utt = utt[len(a.utt2spk[utt]) + 1:]
        assert utt.startswith(a.utt2spk[utt] + "-") and a.text[utt] == SENTENCES[src_utt]
        info = sf.info(a.wav_scp[utt])
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.4 < info.duration < 5.0, (utt, info.duration)
    # Deterministic: the same command gives the same bytes. With seed 3 the breathy voice f3 (which draws
    # noise from espeak-ng's own generator) reads s2-a; before each utterance seeded it, it differed.
    assert "tts-en-us-nyc_f3" in a.spk2utt
    b = DataDir.load(outs[1])
    assert b.text == a.text and b.utt2spk == a.utt2spk
    for utt in a.utts:
        assert Path(a.wav_scp[utt]).read_bytes() == Path(b.wav_scp[utt]).read_bytes(), utt
    # ... and independent of what the process said before: the first two sentences alone, byte for byte.
    c = DataDir.load(outs[2])
    assert len(c.utts) == 4 and all(c.text[u] == a.text[u] for u in c.utts)
    for utt in c.utts:
        assert Path(a.wav_scp[utt]).read_bytes() == Path(c.wav_scp[utt]).read_bytes(), utt


def test_synth_sentences_bad_input(tmp_path):
    res = run(str(tmp_path / "nope"), str(tmp_path / "out"))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "nope/text: no such file" in res.stderr
    res = run(str(tmp_path), str(tmp_path / "out"), "--copies", "0")
    assert res.returncode != 0 and "--copies 0 --mixed 0: need copies or mixed" in res.stderr
    assert "Traceback" not in res.stderr


def test_synth_sentences_mixed(tmp_path):
    """--mixed N: N new sentences of the training words only, as long as training sentences, seeded."""
    pytest.importorskip("espeakng_loader", reason="synthetic readers need espeakng-loader (pip install -e '.[demo]')")
    src = tmp_path / "train"
    write_data_dir(src, wav_scp={u: "/nonexistent.wav" for u in SENTENCES}, text=SENTENCES,
                   utt2spk={u: u.split("-")[0] for u in SENTENCES})
    vocab = {w for words in SENTENCES.values() for w in words.split()}
    lengths = {len(words.split()) for words in SENTENCES.values()}
    texts = []
    for out, seed in ((tmp_path / "a", "1"), (tmp_path / "b", "1"), (tmp_path / "c", "2")):
        res = run(str(src), str(out), "--copies", "0", "--mixed", "12", "--seed", seed)
        assert res.returncode == 0, res.stderr
        assert validate_data_dir(out, need_audio=True) == []
        d = DataDir.load(out)
        by_k = {int(utt.rsplit("-mix", 1)[1]): utt for utt in d.utts}
        assert sorted(by_k) == list(range(12)) and all(utt.endswith(f"-mix{k:02d}") for k, utt in by_k.items())
        texts.append([d.text[by_k[k]] for k in range(12)])
        for words in texts[-1]:
            assert set(words.split()) <= vocab and len(words.split()) in lengths, words
    assert texts[0] == texts[1] and texts[0] != texts[2]
    # 12 word types in orders of 4-5: nearly all are word sequences that no training sentence has.
    assert len(set(texts[0]) - set(SENTENCES.values())) >= 10
    # Copies and mixed sentences together: every training sentence once, and two mixed ones.
    res = run(str(src), str(tmp_path / "d"), "--copies", "1", "--mixed", "2", "--seed", "1")
    assert res.returncode == 0, res.stderr
    both = DataDir.load(tmp_path / "d")
    assert len(both.utts) == 5
    assert sorted(t for u, t in both.text.items() if "-mix" not in u) == sorted(SENTENCES.values())


def test_so762_synth_recipe_wiring(recipe_make):
    """SYNTH= names the training data, and stage 3 reads the training set's text only (not dev's or test's)."""
    def var(*args: str) -> str:
        return recipe_make("speechocean762", *args, "print-TRAIN_DATA").strip()

    # On by default for chars and phones; BPE units were not measured with synthetic readers.
    assert var() == "train_synth2" and var("UNIT=phone") == "train_synth2"
    assert var("SYNTH=") == "train" and var("UNIT=phone", "SYNTH=") == "train"
    assert var("UNIT=bpe") == "train"
    assert var("SYNTH=2") == "train_synth2"
    dry = recipe_make("speechocean762", "-n", "SYNTH=2", "SYNTH_SEED=4", "augment")
    assert "local/synth_sentences.py data/train data/synth2 --copies 2 --seed 4 " in dry
    assert "combine-data-dirs data/train_synth2 data/train $parts" in dry
    assert var("SYNTH=1", "SYNTH_MIXED=500") == "train_synth1_mix500"
    dry = recipe_make("speechocean762", "-n", "SYNTH=0", "SYNTH_MIXED=500", "augment")
    assert "synth_sentences.py data/train data/synth0_mix500 --copies 0 --mixed 500 --seed 1 " in dry
