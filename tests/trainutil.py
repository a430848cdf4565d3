"""Small real data dirs for the training tests: FSDD digits and yesno, featurised in tmp."""

from __future__ import annotations

from pathlib import Path

from asr.cmvn import compute_cmvn
from asr.datadir import write_data_dir
from asr.features import FeatureConfig
from asr.make_feats import make_feats
from asr.tokens import make_tokens

DIGITS = ["ZERO", "ONE", "TWO", "THREE", "FOUR", "FIVE", "SIX", "SEVEN", "EIGHT", "NINE"]


def fsdd_dir(
    shared: Path, out: Path, speakers: list[str], indices: list[int], digits: list[int] | None = None, **feats
) -> Path:
    """A data dir of FSDD recordings ``{digit}_{speaker}_{index}.wav`` with 23-dim fbank features."""
    wav, text, utt2spk = {}, {}, {}
    for spk in speakers:
        for d in digits if digits is not None else range(10):
            for i in indices:
                utt = f"{spk}-{d}_{i:02d}"
                wav[utt] = str(shared / "fsdd" / "recordings" / f"{d}_{spk}_{i}.wav")
                text[utt] = DIGITS[d]
                utt2spk[utt] = spk
    write_data_dir(out, wav_scp=wav, text=text, utt2spk=utt2spk)
    return featurise(out, sample_rate=8000, **feats)


def yesno_dir(shared: Path, out: Path, n: int, **feats) -> Path:
    """The first ``n`` yesno files: 8 words of YES/NO each."""
    files = sorted((shared / "yesno" / "waves_yesno").glob("*.wav"))[:n]
    wav, text, utt2spk = {}, {}, {}
    for f in files:
        utt = f.stem
        wav[utt] = str(f)
        text[utt] = " ".join("YES" if c == "1" else "NO" for c in utt.split("_"))
        utt2spk[utt] = "global"
    write_data_dir(out, wav_scp=wav, text=text, utt2spk=utt2spk)
    return featurise(out, sample_rate=8000, **feats)


def featurise(data: Path, **feats) -> Path:
    cfg = FeatureConfig(**{"num_mel_bins": 23, **feats})
    make_feats(data, cfg, progress=False)
    if cfg.cmvn in ("global", "speaker"):
        compute_cmvn(data, per_speaker=cfg.cmvn == "speaker")
    return data


def lang_dir(data: Path, out: Path) -> Path:
    make_tokens(data / "text", out)
    return out
