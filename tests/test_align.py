"""asr align: forced alignment on hand-made posteriors, then end to end on a briefly trained yesno model."""

from __future__ import annotations

import logging
import shutil
from itertools import pairwise
from pathlib import Path

import pytest
import soundfile as sf
import torch
from trainutil import lang_dir, yesno_dir

from asr.align import (
    TokenSpan,
    align_hypothesis,
    align_tokens,
    align_utterance,
    ctm_lines,
    hypothesis_words,
    reference_words,
    textgrid,
    timed,
)
from asr.cli import main
from asr.datadir import read_kv, write_data_dir, write_kv
from asr.decoders import Hypothesis
from asr.errors import AsrError
from asr.tokens import TokenTable
from asr.transcribe import Transcriber, format_ctm

# blank, blank, A, A, blank, B, B, B, blank, blank
PATH = [0, 0, 2, 2, 0, 3, 3, 3, 0, 0]


def posteriors(path: list[int], vocab: int) -> torch.Tensor:
    """``(T, V)`` log-probs whose best CTC path is ``path`` (90% on the path's label each frame)."""
    p = torch.full((len(path), vocab), 0.1 / (vocab - 1))
    p[torch.arange(len(path)), torch.tensor(path)] = 0.9
    return p.log()


def read_textgrid(text: str) -> tuple[float, dict[str, list[tuple[float, float, str]]]]:
    """``(xmax, {tier: [(xmin, xmax, text)]})`` of a long-format TextGrid."""
    lines = iter(line.strip() for line in text.splitlines())
    assert next(lines) == 'File type = "ooTextFile"' and next(lines) == 'Object class = "TextGrid"'
    xmax, tiers, cur = None, {}, None

    def value(line: str, key: str) -> str:
        k, v = line.split("=", 1)
        assert k.strip() == key, line
        return v.strip()

    for line in lines:
        if line.startswith("xmax = ") and xmax is None:
            xmax = float(value(line, "xmax"))
        elif line.startswith("name = "):
            cur = tiers.setdefault(value(line, "name")[1:-1], [])
        elif line.startswith("intervals ["):
            a, b = float(value(next(lines), "xmin")), float(value(next(lines), "xmax"))
            cur.append((a, b, value(next(lines), "text")[1:-1].replace('""', '"')))
    return xmax, tiers


def assert_contiguous(xmax: float, intervals: list[tuple[float, float, str]]) -> None:
    assert intervals[0][0] == 0 and intervals[-1][1] == xmax
    assert all(a < b for a, b, _ in intervals)
    assert all(p[1] == n[0] for p, n in pairwise(intervals))


# ---------------------------------------------------------------------- hand-made posteriors
def test_known_path_gives_known_spans_and_times():
    table = TokenTable(["<blk>", "<unk>", "A", "B"], lexicon={"WA": ["A"], "WB": ["B"]})
    lp = posteriors(PATH, 4)
    spans = align_tokens(lp, [2, 3])
    assert [(s.token, s.start, s.end) for s in spans] == [(2, 2, 4), (3, 5, 8)]
    assert all(0.89 < s.score < 0.91 for s in spans)

    al = align_utterance(lp, table, "WA WB")
    words = timed(al.words, ["WA", "WB"], 0.03, 0.3)
    assert ctm_lines("u", words) == "u 1 0.060 0.060 WA 0.9000\nu 1 0.150 0.090 WB 0.9000\n"
    assert [(w, a, b) for w, a, b, _ in words] == [("WA", 0.06, 0.12), ("WB", 0.15, 0.24)]

    xmax, tiers = read_textgrid(textgrid(0.3, {"words": words}))
    assert xmax == 0.3
    assert tiers["words"] == [(0, 0.06, ""), (0.06, 0.12, "WA"), (0.12, 0.15, ""), (0.15, 0.24, "WB"), (0.24, 0.3, "")]


def test_char_words_span_their_tokens_and_split_at_space():
    table = TokenTable(["<blk>", "<unk>", "<space>", "A", "B"])
    one = align_utterance(posteriors([0, 0, 3, 3, 0, 4, 4, 4, 0, 0], 5), table, "AB")
    assert [(w.word, w.start, w.end) for w in one.words] == [("AB", 2, 8)]
    two = align_utterance(posteriors([0, 3, 3, 0, 2, 2, 0, 4, 4, 0], 5), table, "A B")
    assert [(table.symbols[s.token], s.start, s.end) for s in two.tokens] == [("A", 1, 3), ("<space>", 4, 6),
                                                                               ("B", 7, 9)]
    assert [(w.word, w.start, w.end) for w in two.words] == [("A", 1, 3), ("B", 7, 9)]


def test_what_cannot_be_aligned_is_one_line():
    lp = posteriors(PATH, 4)
    with pytest.raises(AsrError, match="needs at least 4 output frames"):
        align_tokens(lp[:3], [2, 2, 3])  # A A B: a blank must part the two As
    assert [(s.start, s.end) for s in align_tokens(lp[:4], [2, 2, 3])] == [(0, 1), (2, 3), (3, 4)]
    with pytest.raises(AsrError, match="token id 0"):
        align_tokens(lp, [0, 2])
    with pytest.raises(AsrError, match="'C' is not in the token table"):
        align_utterance(lp, TokenTable(["<blk>", "<unk>", "<space>", "A"]), "AC")
    with pytest.raises(AsrError, match="'WC' is not in the lexicon"):
        align_utterance(lp, TokenTable(["<blk>", "<unk>", "A", "B"], lexicon={"WA": ["A"]}), "WA WC")
    assert align_tokens(lp, []) == []


def test_hypothesis_words_group_like_transcribe():
    """Split at boundary tokens and at pauses longer than max_gap frames, as words_with_times does."""
    symbols = ["<blk>", "<unk>", "<space>", "A", "B"]
    spans = [TokenSpan(2, 0, 1, 1.0), TokenSpan(3, 2, 3, 1.0), TokenSpan(4, 4, 5, 1.0), TokenSpan(2, 6, 7, 1.0),
             TokenSpan(3, 8, 9, 1.0), TokenSpan(4, 20, 22, 1.0), TokenSpan(2, 23, 24, 1.0)]
    assert hypothesis_words(spans, symbols, "<space>", 10) == [("AB", 1, 3), ("A", 4, 5), ("B", 5, 6)]
    assert hypothesis_words(spans, symbols, "<space>", 12) == [("AB", 1, 3), ("AB", 4, 6)]
    # A pause inside a word the vocabulary knows (and not both its halves) splits nothing: --align keeps
    # transcribe's words.
    assert hypothesis_words(spans, symbols, "<space>", 10, known={"AB"}.__contains__) == [("AB", 1, 3), ("AB", 4, 6)]
    assert hypothesis_words(spans, symbols, "<space>", 10, known={"A", "B", "AB"}.__contains__) == [
        ("AB", 1, 3), ("A", 4, 5), ("B", 5, 6)]
    words = align_hypothesis(posteriors([0, 3, 3, 0, 2, 2, 0, 4, 4, 0], 5), [3, 2, 4], symbols, "<space>", 10)
    assert [(w.word, w.start, w.end) for w in words] == [("A", 1, 3), ("B", 7, 9)]


def test_word_pieces_start_words_at_the_marker():
    """Sentencepiece tables have no boundary symbol: "▁" starts a word, in hypotheses and references."""
    symbols = ["<blk>", "<unk>", "\u2581YE", "S", "\u2581NO", "\u2581"]
    spans = [TokenSpan(2, 0, 1, 1.0), TokenSpan(3, 30, 31, 1.0), TokenSpan(4, 33, 34, 1.0), TokenSpan(5, 35, 36, 1.0)]
    # the marker alone starts words: a pause inside YES splits nothing
    assert hypothesis_words(spans, symbols, "<space>", 10) == [("YES", 0, 2), ("NO", 2, 3)]

    class Pieces:  # what reference_words asks of a sentencepiece table
        unit = "bpe"

        def __init__(self) -> None:
            self.symbols, self.ids = symbols, {s: i for i, s in enumerate(symbols)}

        def encode_counting(self, word: str) -> tuple[list[int], int]:
            ids = {"YES": [2, 3], "NO": [4]}.get(word, [1])
            return ids, ids.count(1)

    assert reference_words(Pieces(), "YES NO") == ([2, 3, 4], [("YES", 0, 2), ("NO", 2, 3)])
    with pytest.raises(AsrError, match="'MAYBE' has pieces outside"):
        reference_words(Pieces(), "YES MAYBE")


# ---------------------------------------------------------------------- a real (briefly trained) model
@pytest.fixture(scope="module")
def exp(tmp_path_factory) -> tuple[Path, Path]:
    """A 1x16 BiLSTM trained 2 epochs on 8 yesno files (seconds): alignment needs a path, not accuracy."""
    from conftest import SHARED_DATA

    from asr.models import ModelConfig
    from asr.schedule import ScheduleConfig
    from asr.train import OptimConfig, TrainConfig, train

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("yesno_align")
    data = yesno_dir(SHARED_DATA, out / "data", 8, stack=3, subsample=3)
    lang = lang_dir(data, out / "lang")
    cfg = TrainConfig(model=ModelConfig(num_layers=1, hidden=16, dropout=0.0), optim=OptimConfig(lr=0.01),
                      schedule=ScheduleConfig(name="none"), max_epochs=2, frames_per_batch=3000)
    train(data, data, lang, out / "exp", cfg)
    return out / "exp", data


def ctm_by_utt(path: Path) -> dict[str, list[tuple[float, float, str]]]:
    out: dict[str, list[tuple[float, float, str]]] = {}
    for line in path.read_text().splitlines():
        utt, ch, start, dur, label, conf = line.split()
        assert ch == "1" and 0 < float(conf) <= 1
        out.setdefault(utt, []).append((float(start), round(float(start) + float(dur), 3), label))
    return out


def test_align_dir_writes_ctm_tokens_and_textgrids(exp, tmp_path):
    exp_dir, data = exp
    out = tmp_path / "ali"
    assert main(["align", str(exp_dir), str(data), "-o", str(out)]) == 0
    texts, wavs = read_kv(data / "text"), read_kv(data / "wav.scp")
    words, tokens = ctm_by_utt(out / "ctm"), ctm_by_utt(out / "tokens.ctm")
    assert sorted(words) == sorted(texts)
    for utt, text in texts.items():
        duration = sf.info(wavs[utt]).duration
        assert [w for _, _, w in words[utt]] == text.split()
        assert len(tokens[utt]) == len(text)  # every char, <space> included
        for spans in (words[utt], tokens[utt]):
            assert all(0 <= a < b <= duration + 1e-6 for a, b, _ in spans)
            assert all(p[1] <= n[0] for p, n in pairwise(spans))
        xmax, tiers = read_textgrid((out / "textgrid" / f"{utt}.TextGrid").read_text())
        assert xmax == pytest.approx(duration, abs=1e-3)
        for name, spans in (("words", words[utt]), ("tokens", tokens[utt])):
            assert_contiguous(xmax, tiers[name])
            assert [(a, b, w) for a, b, w in tiers[name] if w] == spans


def test_unalignable_utterances_are_named_and_skipped(exp, tmp_path, caplog):
    exp_dir, src = exp
    data = tmp_path / "data"
    shutil.copytree(src, data)
    texts = read_kv(data / "text")
    utts = sorted(texts)
    long_utt, odd_utt, unread_utt = utts[0], utts[1], utts[2]
    texts[long_utt] = " ".join(["YES"] * 150)  # ~600 chars for ~200 output frames
    texts[odd_utt] = "YES MAYBE"
    write_kv(data / "text", texts)
    feats = read_kv(data / "feats.scp")
    feats[unread_utt] = str(tmp_path / "gone.ark:9")
    write_kv(data / "feats.scp", feats)
    out = tmp_path / "ali"
    (out / "textgrid").mkdir(parents=True)
    (out / "textgrid" / f"{long_utt}.TextGrid").write_text("from an earlier run")
    with caplog.at_level(logging.INFO):
        assert main(["align", str(exp_dir), str(data), "-o", str(out)]) == 1
    for utt in (long_utt, odd_utt, unread_utt):
        assert len([r for r in caplog.records if utt in r.getMessage()]) == 1, utt
    assert "3 of 8 utterance(s) could not be aligned" in caplog.text
    assert "Traceback" not in caplog.text
    assert sorted(ctm_by_utt(out / "ctm")) == utts[3:]
    assert sorted(p.stem for p in (out / "textgrid").iterdir()) == utts[3:]


def test_transcribe_align_times_equal_asr_align(exp, tmp_path, capsys):
    """The same text on the same audio: transcribe --align's word times are asr align's."""
    exp_dir, src = exp
    wavs, texts = read_kv(src / "wav.scp"), read_kv(src / "text")
    utts = sorted(wavs)[:3]
    data = tmp_path / "wavonly"  # no feats.scp: both commands featurise the same audio the same way
    write_data_dir(data, wav_scp={u: wavs[u] for u in utts}, text={u: texts[u] for u in utts},
                   utt2spk={u: "global" for u in utts})
    assert main(["align", str(exp_dir), str(data), "-o", str(tmp_path / "ali")]) == 0
    aligned = (tmp_path / "ali" / "ctm").read_text()

    # A word gap beyond any utterance: the rule that splits run-on hypotheses has no say on a reference.
    tr = Transcriber(exp_dir, align=True, progress=False, word_gap=100.0)
    table = tr.md.tokens
    got = []
    for u in utts:
        ids = table.encode(texts[u])
        tr.decoder.decode = lambda lp, lens, ids=ids, u=u: [[Hypothesis(ids, texts[u].split(), 0.0,
                                                                         list(range(len(ids))))]]
        t = tr.transcribe_file(wavs[u])
        t.key = u
        got.append(format_ctm(t))
    assert "".join(got) == aligned

    # With the model's own hypotheses, --align moves the words' times, not the words.
    plain, aligning = Transcriber(exp_dir, progress=False), Transcriber(exp_dir, progress=False, align=True)
    assert [plain.transcribe_file(wavs[u]).text for u in utts] == [aligning.transcribe_file(wavs[u]).text for u in utts]
    assert main(["transcribe", str(exp_dir), wavs[utts[0]], "--align", "--format", "ctm"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines
    starts = [float(line.split()[2]) for line in lines]
    assert starts == sorted(starts)
    assert all(0 <= float(s) and float(s) + float(d) <= sf.info(wavs[utts[0]]).duration + 1e-6
               for _, _, s, d, _, _ in (line.split() for line in lines))


def test_word_spans_of_an_alignment_become_training_features(exp, tmp_path):
    """align -> subsegment -> combine with the whole files -> make-feats: every sub-utterance is the audio
    between its neighbours' words, and the whole files keep their own features (the yesno recipe's stage 3)."""
    exp_dir, data = exp
    assert main(["align", str(exp_dir), str(data), "-o", str(tmp_path / "ali")]) == 0
    assert main(["subsegment", str(data), str(tmp_path / "ali" / "ctm"), str(tmp_path / "spans"), "--seed", "1"]) == 0
    src = tmp_path / "src"
    shutil.copytree(data, src)
    for name in ("feats.scp", "utt2num_frames", "feats.yaml"):
        (src / name).unlink(missing_ok=True)
    assert main(["combine-data-dirs", str(tmp_path / "all"), str(src), str(tmp_path / "spans")]) == 0
    assert main(["make-feats", str(tmp_path / "all"), "--set", "sample_rate=8000", "--set", "num_mel_bins=23"]) == 0
    frames = {u: int(n) for u, n in read_kv(tmp_path / "all" / "utt2num_frames").items()}
    texts, words = read_kv(data / "text"), ctm_by_utt(tmp_path / "ali" / "ctm")
    segments = read_kv(tmp_path / "all" / "segments")
    assert len(frames) == len(texts) * 8  # each 8-word file and its 7 spans
    for utt, n in read_kv(data / "utt2num_frames").items():
        assert frames[utt] == int(n)
    for sub, text in read_kv(tmp_path / "all" / "text").items():
        if sub in texts:
            continue
        utt, first, end = sub.rsplit("-", 2)
        i, j = int(first[1:]), int(end)
        assert text.split() == texts[utt].split()[i:j]
        reco, start, stop = segments[sub].split()
        assert reco == utt and float(start) == words[utt][i - 1][1]
        audio = sf.info(read_kv(data / "wav.scp")[utt])
        assert float(stop) == (words[utt][j][0] if j < 8 else pytest.approx(audio.duration, abs=1e-3))
        samples = min(round(float(stop) * 8000), audio.frames) - round(float(start) * 8000)
        assert frames[sub] == 1 + (samples - 200) // 80  # Kaldi framing (snip_edges) of exactly that audio
