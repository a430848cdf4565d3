"""Recipes: prepare scripts on the real corpora, LibriSpeech offline, and one demo smoke run under make."""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from asr.cli import build_parser
from asr.datadir import DataDir, read_kv, validate_data_dir

ROOT = Path(__file__).resolve().parents[1]
EGS = ROOT / "egs"
SHARED = ROOT.parent / "shared" / "data"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def prepare(recipe: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(EGS / recipe / "local" / "prepare.py"), *args],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def counts(data: Path, **expected: int) -> None:
    for name, n in expected.items():
        problems = validate_data_dir(data / name, need_feats=(data / name / "feats.scp").exists())
        assert problems == [], problems
        assert len(DataDir.load(data / name).utts) == n, name


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} not found: the shared corpora copy (../shared/data) is absent")
    return path


def test_fsdd_prepare(tmp_path):
    prepare("fsdd", str(shared("fsdd")), str(tmp_path))
    counts(tmp_path, train=2000, dev=250, test=250, train_spk=1800, dev_spk=200, test_spk=500)
    test = DataDir.load(tmp_path / "test")
    assert test.text["george_7_03"] == "SEVEN"
    assert set(DataDir.load(tmp_path / "test_spk").spk2utt) == {"theo"}
    assert "theo" not in DataDir.load(tmp_path / "train_spk").spk2utt


def test_yesno_prepare(tmp_path):
    prepare("yesno", str(shared("yesno/waves_yesno")), str(tmp_path))
    counts(tmp_path, train=31, test=29)
    assert DataDir.load(tmp_path / "test").text["1_0_0_0_0_0_0_1"] == "YES NO NO NO NO NO NO YES"


def test_speechocean762_prepare(tmp_path):
    prepare("speechocean762", str(shared("speechocean762")), str(tmp_path))
    counts(tmp_path, train=1130, dev=120, test=500)
    train = DataDir.load(tmp_path / "train")
    assert all(Path(v).is_absolute() and Path(v).is_file() for v in list(train.wav_scp.values())[:20])
    assert not set(train.spk2utt) & set(DataDir.load(tmp_path / "dev").spk2utt)
    lexicon = (tmp_path / "local" / "lexicon.txt").read_text().splitlines()
    assert "ABILITY AH B IH L AH T IY" in lexicon
    counts(tmp_path, test_phone=500)
    phones = (tmp_path / "test_phone" / "text").read_text().splitlines()
    assert not re.search(r"\d", phones[0].split(maxsplit=1)[1])


def test_an4_prepare_from_sphinx_mfcc(tmp_path):
    import kaldiio

    prepare("an4", str(shared("an4_mfc")), str(tmp_path))
    counts(tmp_path, train=857, dev=91, test=130)
    test = DataDir.load(tmp_path / "test")
    assert test.wav_scp is None and test.text["fcaw-an406-fcaw-b"] == "RUBOUT G M E F THREE NINE"
    feats = kaldiio.load_mat(test.feats_scp["fcaw-an406-fcaw-b"])
    raw = (SHARED / "an4_mfc/feat/an4test_clstk/fcaw/an406-fcaw-b.mfc").read_bytes()
    assert feats.shape == (test.utt2num_frames["fcaw-an406-fcaw-b"], 13)
    np.testing.assert_array_equal(feats.ravel(), np.frombuffer(raw[4:], dtype=">f4"))
    assert "kind: precomputed" in (tmp_path / "test" / "feats.yaml").read_text()


def _librispeech_archive(path: Path, subset: str, utts: list[tuple[str, str]],
                         audio: dict[str, Path] | None = None) -> None:
    """A LibriSpeech-layout ``.tar.gz`` with short tones as audio (or ``audio[utt]``'s samples, as FLAC)."""
    with tarfile.open(path, "w:gz") as t:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"LibriSpeech/{subset}/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        by_chapter: dict[str, list[str]] = {}
        for utt, text in utts:
            reader, chapter, _ = utt.split("-")
            buf = io.BytesIO()
            if audio and utt in audio:
                samples, rate = sf.read(audio[utt], dtype="float32")
                sf.write(buf, samples, rate, format="FLAC")
            else:
                sf.write(buf, 0.1 * np.sin(np.arange(8000) * 0.05).astype(np.float32), 16000, format="FLAC")
            add(f"{reader}/{chapter}/{utt}.flac", buf.getvalue())
            by_chapter.setdefault(f"{reader}/{chapter}/{reader}-{chapter}", []).append(f"{utt} {text}\n")
        for stem, lines in by_chapter.items():
            add(f"{stem}.trans.txt", "".join(lines).encode())


def test_librispeech_download_and_prepare_offline(tmp_path):
    """The recipe's download + data stages against a file:// mirror of tiny archives."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _librispeech_archive(mirror / "train-clean-100.tar.gz", "train-clean-100",
                         [("19-198-0000", "NORTHANGER ABBEY"), ("19-198-0001", "THIS LITTLE WORK"),
                          ("26-495-0000", "CHAPTER ONE")])
    _librispeech_archive(mirror / "dev-clean.tar.gz", "dev-clean", [("84-121123-0000", "GO DO YOU HEAR")])
    _librispeech_archive(mirror / "test-clean.tar.gz", "test-clean", [("61-70968-0000", "HE BEGAN")])
    work = tmp_path / "run"
    work.mkdir()
    proc = make(work, "librispeech", "STOP_STAGE=2", f"LIBRI_URL={mirror.as_uri()}", "TESTS=test-clean")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts(work / "data", train_clean_100=3, dev_clean=1, test_clean=1)
    train = DataDir.load(work / "data" / "train_clean_100")
    assert train.utt2spk["19-198-0001"] == "19-198" and train.text["26-495-0000"] == "CHAPTER ONE"
    assert (work / "downloads" / "dev-clean.tar.gz").is_file()
    assert "stage 1 download" in (work / "exp" / "log" / "stage1-download.log").read_text()


def _official_lm(path: Path, sentences: list[str]) -> str:
    """An OpenSLR 11-style LM file (gzipped ARPA) estimated by ``asr build-lm``; returns its ARPA text."""
    corpus = path.parent / f"{path.name}.sentences"
    corpus.write_text("".join(f"{t}\n" for t in sentences))
    proc = subprocess.run([str(Path(sys.executable).parent / "asr"), "build-lm", str(corpus), "--order", "3",
                           "-o", str(path)], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    corpus.unlink()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def _unigram_arpa_gz(path: Path, words: list[str]) -> str:
    """A minimal valid ARPA file (unigrams only), gzipped; returns its text."""
    grams = ["-99 <s> 0", "-1 </s>", "-1 <unk>", *(f"-1 {w} 0" for w in words)]
    text = f"\\data\\\nngram 1={len(grams)}\n\n\\1-grams:\n" + "\n".join(grams) + "\n\n\\end\\\n"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)
    return text


LIBRI_SMALL = {
    "train-clean-100": [("19-198-0000", "NORTHANGER ABBEY"), ("19-198-0001", "THIS LITTLE WORK"),
                        ("26-495-0000", "CHAPTER ONE")],
    "dev-clean": [("84-121123-0000", "GO DO YOU HEAR")],
    "test-clean": [("61-70968-0000", "HE BEGAN")],
}


def test_librispeech_official_lm_offline(tmp_path):
    """Stage 1 fetches OpenSLR 11's pruned 3-gram from LM_URL; stage 6 installs it (not build-lm) and reruns
    when the file changes; LM_DIR is an existing copy, read and never written."""
    mirror, work, lm_name = tmp_path / "mirror", tmp_path / "run", "3-gram.pruned.1e-7.arpa.gz"
    mirror.mkdir()
    work.mkdir()
    for subset, utts in LIBRI_SMALL.items():
        _librispeech_archive(mirror / f"{subset}.tar.gz", subset, utts)
    official = _official_lm(mirror / lm_name, ["NORTHANGER ABBEY", "THIS LITTLE WORK", "OFFICIAL LIBRISPEECH TEXT"])
    args = (f"LIBRI_URL={mirror.as_uri()}", f"LM_URL={mirror.as_uri()}", "TESTS=test-clean")
    proc = make(work, "librispeech", "download", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (work / "downloads" / lm_name).read_bytes() == (mirror / lm_name).read_bytes()
    assert f"{mirror.as_uri()}/{lm_name} -> downloads/{lm_name}" in (work / "exp/log/stage1-download.log").read_text()

    installed = work / "data" / "lm" / "lm.arpa"
    proc = make(work, "librispeech", "lm", "STAGE=6", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "build-lm" not in proc.stdout and f"installed from downloads/{lm_name}" in proc.stdout
    assert installed.read_text() == official and "OFFICIAL LIBRISPEECH TEXT" in official
    assert not list(installed.parent.glob("*.tmp"))
    proc = make(work, "librispeech", "lm", "STAGE=6", *args)
    assert "stage 6 lm: up to date, skipped" in proc.stdout, proc.stdout

    # LM_DIR: someone's copy, used where it is; a changed file there reruns stage 6.
    theirs = tmp_path / "openslr11"
    theirs.mkdir()
    for words in (["ANOTHER"], ["ANOTHER", "CHANGED"]):
        expected = _unigram_arpa_gz(theirs / lm_name, words)
        proc = make(work, "librispeech", "lm", "STAGE=6", f"LM_DIR={theirs}", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert installed.read_text() == expected
    proc = make(work, "librispeech", "lm", "STAGE=6", f"LM_DIR={theirs}", "OFFICIAL_LM=4-gram", *args)
    assert proc.returncode != 0 and "4-gram.arpa.gz not found there" in proc.stderr
    assert sorted(os.listdir(theirs)) == [lm_name]
    # Not an ARPA file: refused, the installed LM left as it was.
    (theirs / "junk.arpa").write_text("not an LM\n")
    proc = make(work, "librispeech", "lm", "STAGE=6", f"LM_ARPA={theirs / 'junk.arpa'}", *args)
    assert proc.returncode != 0 and "not an ARPA file" in proc.stdout + proc.stderr
    assert installed.read_text() == expected
    # OFFICIAL_LM= : no LM_ARPA, stage 6 estimates a 3-gram from the training transcripts as before.
    proc = make(work, "librispeech", "print-LM_ARPA", "OFFICIAL_LM=")
    assert proc.returncode == 0 and proc.stdout.strip() == ""
    proc = make(work, "librispeech", "print-LM_ARPA", "LM_DIR=/x")
    assert proc.stdout.strip() == f"/x/{lm_name}"


# Real speech for the end-to-end run: pocketsphinx's LibriVox reading (Sense and Sensibility) and card names.
PS = SHARED / "pocketsphinx" / "test" / "data"
LIBRI_REAL = {
    "train-clean-100": [("1-870-0000", "librivox/sense_and_sensibility_01_austen_64kb-0870"),
                        ("1-870-0001", "librivox/sense_and_sensibility_01_austen_64kb-0890"),
                        ("1-870-0002", "librivox/sense_and_sensibility_01_austen_64kb-0920"),
                        ("2-1-0000", "cards/001"), ("2-1-0001", "cards/002"), ("2-1-0002", "cards/005")],
    "dev-clean": [("1-880-0000", "librivox/sense_and_sensibility_01_austen_64kb-0880"), ("2-3-0000", "cards/003")],
    "test-clean": [("1-930-0000", "librivox/sense_and_sensibility_01_austen_64kb-0930"), ("2-4-0000", "cards/004")],
}
# CMU pronunciations (with stress, as librispeech-lexicon.txt) of the words speechocean762's lexicon lacks.
EXTRA_PRONS = {
    "MISTER": "M IH1 S T ER0", "DASHWOOD": "D AE1 SH W UH2 D", "LEISURE": "L EH1 ZH ER0",
    "PRUDENTLY": "P R UW1 D AH0 N T L IY0", "DISPOSED": "D IH0 S P OW1 Z D", "HEARTED": "HH AA1 R T IH0 D",
    "AMIABLE": "EY1 M IY0 AH0 B AH0 L", "RESPECTABLE": "R IH0 S P EH1 K T AH0 B AH0 L", "CLUBS": "K L AH1 B Z",
    "QUEEN": "K W IY1 N", "SPADES": "S P EY1 D Z",
}


def _pocketsphinx_transcripts() -> dict[str, str]:
    """``dir/id`` -> upper-case transcript, from the two pocketsphinx transcription files."""
    out = {}
    for d, name in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for line in (PS / d / name).read_text().splitlines():
            m = re.match(r"<s>(.*)</s>\s*\((\S+)\)", line.strip())
            if m:
                out[f"{d}/{m.group(2)}"] = " ".join(m.group(1).upper().split())
    return out


@pytest.mark.slow
def test_librispeech_end_to_end_offline(tmp_path):
    """Real speech in LibriSpeech archives + OpenSLR 11 files on file:// mirrors: every stage with the official
    LM and a debug model, then BPE units (tokens..score) and phone units through a TLG graph."""
    shared("pocketsphinx/test/data/librivox")
    shared("speechocean762/resource/lexicon.txt")
    missing = _missing_commands()
    if missing:
        pytest.skip(f"asr commands not implemented yet: {', '.join(missing)}")
    texts = _pocketsphinx_transcripts()
    mirror, work, lm_name = tmp_path / "mirror", tmp_path / "run", "3-gram.pruned.1e-7.arpa.gz"
    mirror.mkdir()
    work.mkdir()
    for subset, utts in LIBRI_REAL.items():
        _librispeech_archive(mirror / f"{subset}.tar.gz", subset, [(u, texts[src]) for u, src in utts],
                             audio={u: PS / f"{src}.wav" for u, src in utts})
    sentences = sorted(set(texts.values()))
    official = _official_lm(mirror / lm_name, [*sentences, "OFFICIAL LIBRISPEECH TEXT"])
    words = sorted({w for t in sentences for w in t.split()})
    n_ref = sum(len(texts[src].split()) for _, src in LIBRI_REAL["test-clean"])
    cmu = {}
    for line in (SHARED / "speechocean762/resource/lexicon.txt").read_text().splitlines():
        w, _, pron = line.partition("\t")
        cmu.setdefault(w, pron.strip())
    cmu.update(EXTRA_PRONS)
    (mirror / "librispeech-lexicon.txt").write_text("".join(f"{w}\t{cmu[w]}\n" for w in words))

    common = (f"LIBRI_URL={mirror.as_uri()}", f"LM_URL={mirror.as_uri()}", "TESTS=test-clean", "NJ=1",
              f"TRAIN_CONF={ROOT / 'conf' / 'blstm_debug.yaml'}")
    proc = make(work, "librispeech", *common, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = re.findall(r"stage (\d+) \w+: .* -> ", proc.stdout)
    assert sorted(map(int, ran)) == list(range(1, 13)), proc.stdout
    counts(work / "data", train_clean_100=6, dev_clean=2, test_clean=2)
    assert (work / "data/lm/lm.arpa").read_text() == official
    exp = work / "exp" / "char_blstm_debug"
    assert (exp / "lm.arpa").read_text() == official  # what tune-lm installed in the model dir
    for d in ("greedy", "beam"):
        assert len((exp / f"decode_test_clean_{d}" / "text").read_text().splitlines()) == 2
        assert re.search(rf"%WER [\d.]+ \[ \d+ / {n_ref},", (exp / f"decode_test_clean_{d}" / "wer").read_text())
    assert f"LM: `{lm_name}`" in (work / "RESULTS.md").read_text()

    # Subword units: stages 5 (tokens) .. 10 (score); data and features are the char run's.
    proc = make(work, "librispeech", *common, "UNIT=bpe", "VOCAB_SIZE=40", "STAGE=5", "STOP_STAGE=10", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ran = re.findall(r"stage (\d+) \w+: .* -> ", proc.stdout)
    assert sorted(map(int, ran)) == list(range(5, 11)), proc.stdout
    assert (work / "data/lang_bpe/bpe.model").is_file()
    exp = work / "exp" / "bpe_blstm_debug"
    assert yaml.safe_load((exp / "config.yaml").read_text())["model"]["hidden"] == 16
    for d in ("greedy", "beam"):
        assert re.search(rf"%WER [\d.]+ \[ \d+ / {n_ref},", (exp / f"decode_test_clean_{d}" / "wer").read_text())

    # Phone units: the lexicon is fetched with stage 1, prepared (stress removed) in stage 2, and spells the
    # official LM's words in the TLG graph.
    if _missing_commands_graph():
        return
    proc = make(work, "librispeech", *common, "UNIT=phone", "STOP_STAGE=2", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / "downloads" / "librispeech-lexicon.txt").is_file()
    lexicon = (work / "data/local/lexicon.txt").read_text()
    assert "DASHWOOD D AE SH W UH D\n" in lexicon and not re.search(r"\d", lexicon)
    counts(work / "data", test_clean_phone=2)
    proc = make(work, "librispeech", *common, "UNIT=phone", "STAGE=5", "STOP_STAGE=10", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / "data/lm/graph_phone/TLG.fst").is_file()
    exp = work / "exp" / "phone_blstm_debug"
    assert re.search(rf"%WER [\d.]+ \[ \d+ / {n_ref},", (exp / "decode_test_clean_wfst" / "wer").read_text())
    assert re.search(r"%WER [\d.]+ \[ \d+ / \d+,", (exp / "decode_test_clean_greedy" / "wer").read_text())


def _missing_commands_graph() -> bool:
    """Whether the WFST extras (kaldifst, kaldilm) are missing."""
    import importlib.util

    return any(importlib.util.find_spec(m) is None for m in ("kaldifst", "kaldilm"))


@pytest.mark.slow
def test_yesno_word_spans_hear_the_opening_yes(tmp_path):
    """The yesno recipe end to end on the real corpus (~2 min): every training file opens with NO, and
    with the word-span sub-utterances of stage 3 the model still writes every test file's opening YES."""
    corpus = shared("yesno/waves_yesno")
    proc = make(tmp_path, "yesno", f"CORPUS_DIR={corpus}", "NJ=1", "score", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    spans = DataDir.load(tmp_path / "data" / "train_wordspans")
    assert len(spans.utts) == 31 * 7 and spans.segments is not None
    opening = [u for u, t in spans.text.items() if t.startswith("YES")]
    assert len(opening) > 31  # the files never open with YES; their spans do
    hyp = dict(line.split(" ", 1) for line in
               (tmp_path / "exp" / "char_train" / "decode_test_greedy" / "text").read_text().splitlines())
    ref = dict(line.split(" ", 1) for line in (tmp_path / "data" / "test" / "text").read_text().splitlines())
    assert all(ref[u].startswith("YES") for u in ref)
    assert hyp == ref, (tmp_path / "exp" / "char_train" / "decode_test_greedy" / "wer").read_text()


def make(workdir: Path, recipe: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    return subprocess.run(["make", "--no-print-directory", "-C", str(workdir), "-f", str(EGS / recipe / "Makefile"),
                           *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def _missing_commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    need = ["make-feats", "compute-cmvn", "make-tokens", "build-lm", "train", "decode", "score", "results",
            "report"]
    return [c for c in need if c not in sub.choices]


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


# Every optional stage and training option on: speed perturbation, a noisy copy and word-span
# sub-utterances from a first-pass alignment (stage 3), VTLP, SpecAugment, the conv front-end, LR
# warm-up, the LM weights tuned on dev (stage 8) and speaker adaptation of the beam decode (stage 9).
ALL_ON = [
    "ADAPT_EPOCHS=1",
    "SPEED_PERTURB=1.1",
    "WORD_SPANS=1",
    "NOISE_SNR=10 20",
    "NOISE_OPTS=--noise pink",
    "TRAIN_OPTS=--set vtlp.enabled=true --set specaug=true --set specaug_opts.freq_width=5 "
    "--set model.frontend=conv2d --set model.frontend_subsample=1 --set schedule.warmup_steps=2",
    "DECODERS=greedy beam wfst",
]
TRAIN_DATA = "train_sp1.1_noise10_20_spans"


def test_demo_smoke_stage_by_stage(tmp_path):
    """SMALL=1 demo (tiny corpus, 1-epoch debug model), every option on, one stage at a time, then a no-op rerun."""
    missing = _missing_commands()
    if missing:
        pytest.skip(f"asr commands not implemented yet: {', '.join(missing)}")
    pytest.importorskip("espeakng_loader", reason="the demo corpus needs espeakng-loader (pip install -e '.[demo]')")
    work = tmp_path
    exp = work / "exp" / "debug"
    stages = {
        1: ["corpus/prompts.tsv"],
        2: [f"data/{s}/{f}" for s in ("train", "dev", "test") for f in ("wav.scp", "text", "utt2spk", "spk2utt")],
        3: [f"data/{TRAIN_DATA}/utt2spk", "data/train_sp1.1/wav.scp", "data/train_noise/utt2snr",
            "exp/spans_pass1/align/ctm", "data/train_wordspans/segments", f"data/{TRAIN_DATA}/segments"],
        4: [f"data/{s}/{f}" for s in (TRAIN_DATA, "dev", "test") for f in ("feats.scp", "utt2num_frames", "feats.yaml")]
        + [f"data/{TRAIN_DATA}/cmvn_global.ark"],
        5: ["data/lang/tokens.txt"],
        6: ["data/lm/lm.arpa", "data/lm/graph/TLG.fst", "data/lm/graph/words.txt"],
        7: ["exp/debug/final.pt", "exp/debug/config.yaml", "exp/debug/tokens.txt"],
        8: ["exp/debug/lm_tuned.yaml", "exp/debug/lm.arpa"],
        9: [f"exp/debug/decode_test_{d}/text" for d in ("greedy", "beam", "wfst")],
        10: [f"exp/debug/decode_test_{d}/wer" for d in ("greedy", "beam", "wfst")],
        11: ["RESULTS.md"],
        12: ["exp/debug/report.html"],
    }
    names = ["download", "data", "augment", "feats", "tokens", "lm", "train", "tune", "decode", "score", "results",
             "report"]
    for n, outputs in stages.items():
        proc = make(work, "demo", "SMALL=1", "NJ=1", *ALL_ON, f"STAGE={n}", f"STOP_STAGE={n}")
        assert proc.returncode == 0, f"stage {n}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert re.search(rf"stage {n} {names[n - 1]}: .* -> ", proc.stdout), proc.stdout
        for f in outputs:
            assert (work / f).exists(), f"stage {n} did not write {f}"
        assert (work / "exp" / "log" / f"stage{n}-{names[n - 1]}.log").is_file()
        assert (work / "exp" / ".done" / f"{n}-{names[n - 1]}.done").is_file()
    assert validate_data_dir(work / "data" / "test", need_feats=True) == []
    hyp = (exp / "decode_test_greedy" / "text").read_text().splitlines()
    assert len(hyp) == len(DataDir.load(work / "data" / "test").utts)
    results = (work / "RESULTS.md").read_text()
    assert "decode_test_greedy" in results and "seed: 1" in results
    assert (f"training data: `data/{TRAIN_DATA}` (speed perturbation: 1.1; noise SNR dB: 10 20; word spans: yes)"
            in results)
    # Training read the original, the perturbed and the noisy copy and the word spans, with its options.
    n_train = len(DataDir.load(work / "data" / "train").utts)
    n_spans = len(DataDir.load(work / "data" / "train_wordspans").utts)
    assert n_spans > 0
    assert len(DataDir.load(work / "data" / TRAIN_DATA).utts) == 3 * n_train + n_spans
    config = yaml.safe_load((exp / "config.yaml").read_text())
    assert config["vtlp"]["enabled"] and config["specaug"] and config["model"]["frontend"] == "conv2d"
    assert f"{3 * n_train + n_spans} train" in (exp / "train.log").read_text()
    # The beam decode adapted each test speaker; greedy decoded with the model as trained.
    assert yaml.safe_load((exp / "decode_test_beam" / "decode.yaml").read_text())["adapt_epochs"] == 1
    assert yaml.safe_load((exp / "decode_test_greedy" / "decode.yaml").read_text())["adapt_epochs"] == 0
    assert "adapted " in (work / "exp" / "log" / "stage9-decode.log").read_text()

    before = _snapshot(work)
    proc = make(work, "demo", "SMALL=1", "NJ=1", *ALL_ON)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("up to date, skipped") == 12, proc.stdout
    assert _snapshot(work) == before

    # A changed setting reruns only the stages that depend on it.
    proc = make(work, "demo", "SMALL=1", "NJ=1", *ALL_ON, "SCORE_OPTS=--case lower", "STOP_STAGE=10")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = re.findall(r"stage (\d+) \w+: .* -> ", proc.stdout)
    assert ran == ["10"], proc.stdout
    # The beam decode used the weights tuned on dev (stage 8), not decode_beam.yaml's.
    tuned = yaml.safe_load((exp / "lm_tuned.yaml").read_text())
    used = yaml.safe_load((exp / "decode_test_beam" / "decode.yaml").read_text())
    assert (used["alpha"], used["beta"], used["unk_penalty"]) == (tuned["alpha"], tuned["beta"], tuned["unk_penalty"])

    # transcribe-test (not in 'all'): every test file alone through 'asr transcribe', scored. A global-CMVN
    # model has no speaker to lose, so greedy gives decode's own text, file for file.
    proc = make(work, "demo", "SMALL=1", "NJ=1", *ALL_ON, "transcribe-test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.findall(r"stage (\d+) [\w-]+: .* -> ", proc.stdout) == ["13"], proc.stdout
    for d in ("greedy", "beam", "wfst"):
        assert (exp / f"decode_test_{d}_files" / "wer").read_text().startswith("%WER")
    assert read_kv(exp / "decode_test_greedy_files" / "text") == read_kv(exp / "decode_test_greedy" / "text")

    # An ablation row shares the data stages (data/ is shared): with the same data settings it skips them,
    # so it never rewrites features under another row's training ...
    proc = make(work, "demo", "SMALL=1", "NJ=1", *ALL_ON, "ABLATION=row", "STOP_STAGE=6")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.findall(r"stage (\d+) \w+: .* -> ", proc.stdout) == [], proc.stdout
    # ... a row with other features redoes them, and then the first run's next stage sees its features
    # are gone and redoes them too, instead of training or decoding with that row's.
    feats = ["FEATS_OPTS=--set num_mel_bins=20"]
    proc = make(work, "demo", "SMALL=1", "NJ=1", *ALL_ON, *feats, "ABLATION=row", "STOP_STAGE=4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4" in re.findall(r"stage (\d+) \w+: .* -> ", proc.stdout), proc.stdout  # 3 too: word spans
    proc = make(work, "demo", "SMALL=1", "NJ=1", *ALL_ON, "STOP_STAGE=4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4" in re.findall(r"stage (\d+) \w+: .* -> ", proc.stdout), proc.stdout  # 3 too: word spans
