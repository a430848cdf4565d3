"""asr transcribe: a model trained here on yesno transcribes real files, long audio in chunks, exports."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from trainutil import lang_dir, yesno_dir

from asr.cli import main
from asr.decoders import DecodeConfig, Hypothesis
from asr.export import export
from asr.models import ModelConfig
from asr.schedule import ScheduleConfig
from asr.train import OptimConfig, TrainConfig, train
from asr.transcribe import AudioSource, Transcriber, format_ctm, format_srt
from asr.word_times import _spread, token_frames, words_with_times


def yesno_text(path: Path) -> str:
    return " ".join("YES" if c == "1" else "NO" for c in path.stem.split("_"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A 2x48 BiLSTM (3-frame stacking) trained on all 60 yesno files: ~45 s on one core."""
    from conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"real corpora not found at {SHARED_DATA}")
    out = tmp_path_factory.mktemp("yesno")
    data = yesno_dir(SHARED_DATA, out / "data", 60, stack=3, subsample=3)
    lang = lang_dir(data, out / "lang")
    cfg = TrainConfig(model=ModelConfig(num_layers=2, hidden=48, dropout=0.0), optim=OptimConfig(lr=0.005),
                      schedule=ScheduleConfig(name="none"), max_epochs=30, frames_per_batch=3000,
                      average="last", average_n=3)
    train(data, data, lang, out / "exp", cfg)
    return out / "exp"


@pytest.fixture(scope="module")
def transcriber(model_dir) -> Transcriber:
    return Transcriber(model_dir, progress=False)


@pytest.fixture(scope="module")
def yesno_files(model_dir) -> list[Path]:
    from conftest import SHARED_DATA

    return sorted((SHARED_DATA / "yesno" / "waves_yesno").glob("*.wav"))


def test_transcribes_real_files_to_their_transcripts(transcriber, yesno_files):
    wrong = [f.name for f in yesno_files if transcriber.transcribe_file(f).text != yesno_text(f)]
    assert len(wrong) <= 1, wrong  # trained on these very files: at most one slip


def test_word_times_fall_inside_the_audio(transcriber, yesno_files):
    tr = transcriber.transcribe_file(yesno_files[0])
    assert len(tr.words) == 8
    for w in tr.words:
        assert 0 <= w.start < w.end <= tr.duration + 1e-6 and 0 < w.confidence <= 1
    assert [w.start for w in tr.words] == sorted(w.start for w in tr.words)
    srt = format_srt(tr)
    assert srt.startswith("1\n00:00:0") and " --> " in srt


def test_long_file_in_chunks_equals_per_utterance_results(transcriber, yesno_files, tmp_path):
    """10 minutes of concatenated files: bounded reads, same words as transcribing each file alone."""
    rate = 8000
    gap = np.zeros(rate // 2, dtype=np.float32)
    pieces, expected, total = [], [], 0.0
    i = 0
    while total < 600:
        f = yesno_files[i % len(yesno_files)]
        audio, r = sf.read(f, dtype="float32")
        assert r == rate
        pieces += [audio, gap]
        total += (len(audio) + len(gap)) / rate
        expected.append(f)
        i += 1
    path = tmp_path / "long.wav"
    sf.write(path, np.concatenate(pieces), rate, subtype="PCM_16")
    alone = {f: transcriber.transcribe_file(f).text for f in set(expected)}

    source = AudioSource.open(str(path), transcriber.rate)
    reads = []
    inner = source._reader
    source._reader = lambda a, b: reads.append(b - a) or inner(a, b)
    tr = transcriber.transcribe(source)
    assert tr.text == " ".join(alone[f] for f in expected)
    # memory stays bounded: no read is longer than one chunk plus its context
    assert max(reads) <= transcriber.window
    assert len(reads) > 20
    assert all(w.end <= tr.duration for w in tr.words)


def test_exports_match_eager(model_dir, transcriber, yesno_files):
    wave = AudioSource.open(str(yesno_files[3]), transcriber.rate)
    eager_lp = transcriber.posteriors(wave)
    for fmt in ("pt2", "torchscript"):
        exported = Transcriber(model_dir, engine=str(export(model_dir, fmt)), progress=False)
        torch.testing.assert_close(exported.posteriors(wave), eager_lp, atol=1e-4, rtol=1e-4)
        assert exported.transcribe(wave).text == transcriber.transcribe(wave).text
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(mod)
    onnx_path = export(model_dir, "onnx")
    onnx_tr = Transcriber(model_dir, engine=str(onnx_path), progress=False)
    torch.testing.assert_close(onnx_tr.posteriors(wave), eager_lp, atol=1e-4, rtol=1e-4)


def test_cli_formats_inputs_and_bad_files(model_dir, yesno_files, tmp_path, capsys, monkeypatch):
    audio_dir = tmp_path / "in"
    audio_dir.mkdir()
    good = [audio_dir / yesno_files[i].name for i in (0, 1)]
    for src, dst in zip(yesno_files[:2], good, strict=True):
        # as stereo flac at 44.1 kHz: format, channels and rate all differ from training
        a, r = sf.read(src, dtype="float32")
        a = torch.from_numpy(a)
        import torchaudio.functional as AF
        up = AF.resample(a, r, 44100).numpy()
        sf.write(dst.with_suffix(".flac"), np.stack([up, up], 1), 44100)
    (audio_dir / "empty.wav").write_bytes(b"")
    (audio_dir / "notes.wav").write_text("not audio")
    rc = main(["transcribe", str(model_dir), str(audio_dir), str(tmp_path / "missing.wav"), "--format", "ctm",
               "-o", str(tmp_path / "out.ctm")])
    err = capsys.readouterr().err
    assert rc == 1
    assert "empty.wav: empty file" in err and "notes.wav: cannot decode audio" in err and "missing.wav" in err
    assert "Traceback" not in err
    ctm = (tmp_path / "out.ctm").read_text().splitlines()
    assert len(ctm) == 16 and all(len(line.split()) == 6 for line in ctm)

    scp = tmp_path / "wav.scp"
    scp.write_text(f"u1 {yesno_files[0]}\nu2 cat {yesno_files[1]} |\n")
    assert main(["transcribe", str(model_dir), str(scp), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out.replace("]\n[", ","))
    assert [o["key"] for o in out] == ["u1", "u2"]
    assert out[0]["text"] == yesno_text(yesno_files[0]) or len(out[0]["words"]) == 8

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(yesno_files[0].read_bytes())))
    assert main(["transcribe", str(model_dir), "-"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("- ") and len(line.split()) == 9


# ---------------------------------------------------------------------- hand-built posteriors
SYMBOLS = ["<blk>", "<unk>", "<space>", "E", "N", "O", "S", "T", "Y"]
TINY_RATE, TINY_HOP = 8000, 240  # 10 ms shift x subsample 3 at 8 kHz: one output frame is 30 ms


# A phone table: AN4-like, where the letter S is also a word (EH S) whose phones are phone symbols.
PHONES = ["<blk>", "<unk>", "EH", "N", "OW", "S", "Y", "Z"]
LEXICON = {"NO": ["N", "OW"], "OH": ["OW"], "S": ["EH", "S"], "YES": ["Y", "EH", "S"]}


def tiny_model(out: Path, symbols: list[str], lexicon: dict[str, list[str]] | None = None) -> Path:
    """An untrained 1x8 BiLSTM (8 kHz, 3-frame stacking and subsampling); tests supply its posteriors."""
    from asr.config import dump, to_dict
    from asr.features import FeatureConfig
    from asr.models import build_model

    dump(FeatureConfig(sample_rate=TINY_RATE, num_mel_bins=23, cmvn="none", stack=3, subsample=3), out / "feats.yaml")
    (out / "tokens.txt").write_text("".join(f"{s} {i}\n" for i, s in enumerate(symbols)))
    if lexicon is not None:
        (out / "lexicon.txt").write_text("".join(f"{w} {' '.join(p)}\n" for w, p in lexicon.items()))
    cfg = ModelConfig(num_layers=1, hidden=8, dropout=0.0)
    model = build_model(cfg, 69, len(symbols))
    args = {"config": to_dict(cfg), "input_dim": 69, "vocab_size": len(symbols)}
    torch.save({"model": model.state_dict(), "model_args": args}, out / "final.pt")
    return out


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("tiny"), SYMBOLS)


def frames(*spec: str | dict[str, float], symbols: list[str] = SYMBOLS) -> torch.Tensor:
    """Log-probs ``(T, V)``: a symbol ("-" is blank) gets 0.9 on its frame, a dict gives several; the
    rest of each frame's mass is spread evenly over the other symbols."""
    rows = []
    for s in spec:
        want = {s: 0.9} if isinstance(s, str) else s
        want = {symbols[0] if k == "-" else k: p for k, p in want.items()}
        rest = (1 - sum(want.values())) / (len(symbols) - len(want))
        rows.append([want.get(sym, rest) for sym in symbols])
    return torch.tensor(rows).log()


def silence(path: Path, seconds: float) -> Path:
    sf.write(path, np.zeros(int(seconds * TINY_RATE), dtype=np.float32), TINY_RATE)
    return path


def yes_no_lm(path: Path) -> Path:
    """A bigram LM of the words YES and NO, with tab-separated fields: KenLM, used when installed,
    refuses anything less."""
    grams1 = ["-0.5\t</s>", "-99\t<s>\t0", "-0.5\tNO\t0", "-0.5\tYES\t0", "-2\t<unk>"]
    grams2 = ["-0.3\t<s> NO", "-0.3\t<s> YES"]
    path.write_text(
        "\\data\\\nngram 1=5\nngram 2=2\n\n\\1-grams:\n" + "\n".join(grams1)
        + "\n\n\\2-grams:\n" + "\n".join(grams2) + "\n\n\\end\\\n"
    )
    return path


def test_lm_without_decoder_means_beam_search_with_that_lm(tiny_model_dir, tmp_path, capsys, monkeypatch):
    # Greedy reads NOT (T beats blank 0.55 : 0.44 on the last frame); an LM knowing NO and YES only
    # makes NOT an out-of-vocabulary word, so beam search with it must say NO.
    lp = frames("-", "N", "O", {"T": 0.55, "-": 0.44}, "-")
    monkeypatch.setattr(Transcriber, "_log_probs", lambda self, wave: lp)
    wav = silence(tmp_path / "a.wav", 1.0)
    lm = yes_no_lm(tmp_path / "lm.arpa")
    assert main(["transcribe", str(tiny_model_dir), str(wav)]) == 0
    assert capsys.readouterr().out == f"{wav} NOT\n"
    assert main(["transcribe", str(tiny_model_dir), str(wav), "--decoder", "beam"]) == 0
    assert capsys.readouterr().out == f"{wav} NOT\n"
    assert main(["transcribe", str(tiny_model_dir), str(wav), "--lm", str(lm)]) == 0
    assert capsys.readouterr().out == f"{wav} NO\n"

    assert main(["transcribe", str(tiny_model_dir), str(wav), "--decoder", "greedy", "--lm", str(lm)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "asr transcribe: error: --lm needs the beam decoder (--decoder beam)\n"


def test_word_times_span_whole_output_frames_of_each_token(tiny_model_dir, tmp_path, monkeypatch):
    # YES: Y on frame 2, E on 3, S emitted on 5 and repeated on 6 and 7; a <space>; NO: N on 11-12, O on 13.
    lp = frames("-", "-", "Y", "E", "-", "S", "S", "S", "-", "<space>", "-", "N", "N", "O", "-", "-")
    monkeypatch.setattr(Transcriber, "_log_probs", lambda self, wave: lp)
    tr = Transcriber(tiny_model_dir, progress=False)
    assert tr.hop == TINY_HOP
    t = tr.transcribe_file(silence(tmp_path / "a.wav", 1.0))
    frame = TINY_HOP / TINY_RATE
    assert [(w.word, w.start, w.end) for w in t.words] == [
        ("YES", round(2 * frame, 3), round(8 * frame, 3)),  # 0.06 .. 0.24: S's run ends with frame 7
        ("NO", round(11 * frame, 3), round(14 * frame, 3)),  # 0.33 .. 0.42
    ]
    assert format_ctm(t).splitlines()[0] == f"{tmp_path / 'a.wav'} 1 0.060 0.180 YES 0.9000"
    # Posteriors may run past the audio by a part of a frame: the last word ends with the audio.
    short = tr.transcribe_file(silence(tmp_path / "b.wav", 0.4))
    assert short.words[-1].end == 0.4


def test_token_frames_of_a_beam_spike_inside_a_run():
    # The beam decoder may name a frame inside a token's run; the span still covers the whole run
    # but stops where the neighbouring token's run begins.
    lp = frames("-", "N", "N", "N", "O", "O", "-")
    hyp = Hypothesis([SYMBOLS.index("N"), SYMBOLS.index("O")], ["NO"], 0.0, [2, 4])
    assert token_frames(hyp, lp) == [(1, 3), (4, 5)]
    words = words_with_times(hyp, lp, SYMBOLS, "<space>", 0.03, max_gap=13, offset=100)
    assert [(w.word, w.start, w.end) for w in words] == [("NO", 3.03, 3.18)]


def greedy_hyp(lp: torch.Tensor, symbols: list[str], words: list[str]) -> Hypothesis:
    """The greedy path's tokens and first frames of ``lp``, with ``words`` as a decoder would name them."""
    best, tokens, steps, prev = lp.argmax(-1).tolist(), [], [], 0
    for t, tok in enumerate(best):
        if tok and tok != prev:
            tokens.append(tok)
            steps.append(t)
        prev = tok
    return Hypothesis(tokens, words, 0.0, steps)


def spans(words) -> list[tuple[str, int, int]]:
    """(word, first frame, frame after the last) at 30 ms frames."""
    return [(w.word, round(w.start / 0.03), round(w.end / 0.03)) for w in words]


def test_phone_words_take_the_runs_their_pronunciations_spell():
    # YES = Y EH S with a 6-frame pause inside (longer than max_gap, which split char words): one word.
    lp = frames("-", "Y", "EH", "-", "-", "-", "-", "-", "-", "S", "S", "-", "N", "OW", "OW", "-", symbols=PHONES)
    hyp = greedy_hyp(lp, PHONES, ["YES", "NO"])
    words = words_with_times(hyp, lp, PHONES, "<space>", 0.03, max_gap=2, lexicon=LEXICON)
    assert spans(words) == [("YES", 1, 11), ("NO", 12, 15)]
    assert words[0].confidence == 0.9
    # Without a lexicon the words still keep their names and spread over the phones in order.
    assert [w.word for w in words_with_times(hyp, lp, PHONES, "<space>", 0.03, max_gap=2)] == ["YES", "NO"]


def test_phone_words_the_lexicon_does_not_spell_share_the_tokens_between():
    # YES said Y EH Z: NO still matches from the back, YES takes what lies before it.
    lp = frames("Y", "EH", "Z", "-", "N", "OW", symbols=PHONES)
    hyp = greedy_hyp(lp, PHONES, ["YES", "NO"])
    words = words_with_times(hyp, lp, PHONES, "<space>", 0.03, 2, lexicon=LEXICON)
    assert spans(words) == [("YES", 0, 3), ("NO", 4, 6)]
    # Two unknown words over five phones: by letters, 1 + 2 of the 3 spare phones each, in order.
    hyp.words = ["AB", "CDEF"]
    words = words_with_times(hyp, lp, PHONES, "<space>", 0.03, 2, lexicon=LEXICON)
    assert spans(words) == [("AB", 0, 2), ("CDEF", 2, 6)]


def test_phone_decoder_words_are_its_phones():
    # Greedy/beam over a phone table name each phone a word; S EH... must not become the letter S (EH S).
    lp = frames("Y", "-", "EH", "S", "-", "-", "-", "-", "N", symbols=PHONES)
    hyp = greedy_hyp(lp, PHONES, ["Y", "EH", "S", "N"])
    words = words_with_times(hyp, lp, PHONES, "<space>", 0.03, max_gap=2, lexicon=LEXICON)
    assert spans(words) == [("Y", 0, 1), ("EH", 2, 3), ("S", 3, 4), ("N", 8, 9)]


def test_char_words_split_at_pauses_unless_a_graph_named_them():
    # Y E, a pause past max_gap, S: greedy/beam words are the tokens' own, split there as always ...
    lp = frames("Y", "E", "-", "-", "-", "-", "S", "-", "<space>", "N", "O")
    hyp = greedy_hyp(lp, SYMBOLS, ["YES", "NO"])
    assert spans(words_with_times(hyp, lp, SYMBOLS, "<space>", 0.03, max_gap=2)) == [
        ("YE", 0, 2), ("S", 6, 7), ("NO", 9, 11)]
    # ... but the wfst decoder's words are the graph's: kept whole, timed by the letters spelling them.
    assert spans(words_with_times(hyp, lp, SYMBOLS, "<space>", 0.03, 2, words_given=True)) == [
        ("YES", 0, 7), ("NO", 9, 11)]
    # A graph with an optional space: words run together in the tokens and are still told apart.
    lp = frames("Y", "E", "S", "N", "O")
    hyp = greedy_hyp(lp, SYMBOLS, ["YES", "NO"])
    assert spans(words_with_times(hyp, lp, SYMBOLS, "<space>", 0.03, 2)) == [("YES", 0, 3), ("NO", 3, 5)]


def test_a_pause_inside_a_known_word_does_not_split_it():
    # As FSDD's "six" from a real model (S I, 14 blank frames = 0.42 s past a 0.4 s word gap, X): Y E, 14
    # blanks, S.
    lp = frames("Y", "E", *["-"] * 14, "S", "-")
    hyp = greedy_hyp(lp, SYMBOLS, ["YES"])
    assert [w.word for w in words_with_times(hyp, lp, SYMBOLS, "<space>", 0.03, max_gap=13)] == ["YE", "S"]
    vocab = {"YES", "NO"}
    words = words_with_times(hyp, lp, SYMBOLS, "<space>", 0.03, max_gap=13, known=vocab.__contains__)
    assert spans(words) == [("YES", 0, 17)]
    # Two known words either side of a pause stay two, even where they also spell a known word ...
    vocab = {"YE", "S", "YES"}
    words = words_with_times(hyp, lp, SYMBOLS, "<space>", 0.03, max_gap=13, known=vocab.__contains__)
    assert [w.word for w in words] == ["YE", "S"]
    # ... and halves that join into no known word (a run-on across utterances) are split as before.
    words = words_with_times(hyp, lp, SYMBOLS, "<space>", 0.03, max_gap=13, known={"NO"}.__contains__)
    assert [w.word for w in words] == ["YE", "S"]


def test_transcriber_keeps_a_slow_word_whole_when_its_lm_knows_it(tiny_model_dir, tmp_path, monkeypatch):
    lp = frames("Y", "E", *["-"] * 16, "S", "-")
    monkeypatch.setattr(Transcriber, "_log_probs", lambda self, wave: lp)
    lm = yes_no_lm(tmp_path / "lm.arpa")
    tr = Transcriber(tiny_model_dir, DecodeConfig(decoder="beam", lm=str(lm)), progress=False)
    assert tr.transcribe_file(silence(tmp_path / "a.wav", 1.0)).text == "YES"


def test_spread_keeps_order_and_gives_each_word_a_token_while_there_are_enough():
    assert _spread([1, 1, 1], 0, 3) == [(0, 1), (1, 2), (2, 3)]
    assert _spread([3, 1], 2, 8) == [(2, 6), (6, 8)]
    assert _spread([1, 1, 1], 0, 2) == [(0, 0), (0, 1), (1, 2)]
    assert _spread([], 0, 0) == []


class FixedDecoder:
    """Stands in for a decoder (e.g. wfst, which needs a graph) that names these words for these tokens."""

    def __init__(self, words: list[str], symbols: list[str]):
        self.words, self.symbols = words, symbols

    def decode(self, lp: torch.Tensor, lengths: torch.Tensor) -> list[list[Hypothesis]]:
        return [[greedy_hyp(lp[0], self.symbols, self.words)]]


def test_transcriber_times_a_phone_models_words_by_its_lexicon(tmp_path, monkeypatch):
    model = tiny_model(tmp_path / "phone", PHONES, LEXICON)
    lp = frames("-", "OW", "Y", "EH", "-", "-", "-", "-", "S", "-", symbols=PHONES)
    monkeypatch.setattr(Transcriber, "_log_probs", lambda self, wave: lp)
    tr = Transcriber(model, progress=False)
    wav = silence(tmp_path / "a.wav", 0.3)
    assert [w.word for w in tr.transcribe_file(wav).words] == ["OW", "Y", "EH", "S"]  # greedy: phones
    tr.decoder = FixedDecoder(["OH", "YES"], PHONES)
    # OH is one phone, though two letters: only the model dir's lexicon tells.
    assert spans(tr.transcribe_file(wav).words) == [("OH", 1, 2), ("YES", 2, 9)]


def test_transcriber_keeps_a_graphs_char_words_whole(tiny_model_dir, tmp_path, monkeypatch):
    # A pause of 16 frames (0.48 s) between E and S, longer than the Transcriber's word_gap of 0.4 s.
    lp = frames("Y", "E", *["-"] * 16, "S", "-")
    monkeypatch.setattr(Transcriber, "_log_probs", lambda self, wave: lp)
    tr = Transcriber(tiny_model_dir, progress=False)
    wav = silence(tmp_path / "a.wav", 1.0)
    assert tr.transcribe_file(wav).text == "YE S"  # greedy: split at the pause, as always
    tr.decode_config.decoder, tr.decoder = "wfst", FixedDecoder(["YES"], SYMBOLS)
    t = tr.transcribe_file(wav)
    assert t.text == "YES" and spans(t.words) == [("YES", 0, 19)]
