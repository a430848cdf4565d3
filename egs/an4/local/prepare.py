#!/usr/bin/env python3
"""CMU AN4 -> ``OUT/{train,dev,test}`` + ``OUT/local/lexicon.txt``, from Sphinx MFCCs or sphere audio.

- ``CORPUS/feat/{an4_clstk,an4test_clstk}/<spk>/<id>.mfc`` (the features-only copy): each file is
  a big-endian int32 count of floats, then that many big-endian float32 values, 13 per frame.
  They become ``feats.ark/scp`` (kaldiio) + ``utt2num_frames`` + a ``feats.yaml`` saying
  ``kind: precomputed`` with deltas, per-speaker CMVN and 3-frame stacking applied at load time,
  as Kaldi/EESEN do.
  No ``wav.scp``.
- ``CORPUS/wav/{an4_clstk,an4test_clstk}/<spk>/<id>.sph`` (the official sphere tarball):
  a normal ``wav.scp``; features are computed by ``asr make-feats``.

Utterance ids are ``<spk>-<id>`` so they sort by speaker. ``--dev-every`` holds out every n-th
training speaker as dev (AN4 has no dev set).

For phone units, ``etc/an4.dic`` (CMU-style, ``WORD  PH PH ...``, alternates as ``WORD(2)``)
becomes ``OUT/local/lexicon.txt``: every pronunciation a line of its word, stress digits (if any)
removed, so it reads like speechocean762's. Each set gets a twin ``<set>_phone`` (text = the first
pronunciation of every word, utt2spk) to score phone error rate against. A transcript word missing
from the dictionary is an error: its phone text could not be written.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import kaldiio
import numpy as np

from asr.atomic import atomic_path, write_text
from asr.config import dump
from asr.datadir import write_data_dir
from asr.errors import AsrError, run_script
from asr.features import FeatureConfig

SETS = {"train": ("an4_clstk", "an4_train"), "test": ("an4test_clstk", "an4_test")}
TRANS = re.compile(r"^(?:<s>\s*)?(.*?)\s*(?:</s>\s*)?\((\S+)\)\s*$")
DICT = "an4.dic"
# Sphinx marks alternate pronunciations as WORD(2), WORD(3), ...
ALTERNATE = re.compile(r"^(.+)\(\d+\)$")


def read_mfc(path: Path) -> np.ndarray:
    """A Sphinx ``.mfc`` file -> ``(N, 13)`` float32."""
    raw = path.read_bytes()
    if len(raw) < 4:
        raise AsrError(f"{path}: truncated (no header)")
    count = int(np.frombuffer(raw[:4], dtype=">i4")[0])
    if count % 13 or 4 + 4 * count != len(raw):
        raise AsrError(f"{path}: header says {count} floats, file holds {(len(raw) - 4) // 4}")
    return np.frombuffer(raw[4:], dtype=">f4").astype(np.float32).reshape(-1, 13)


def read_dictionary(path: Path) -> dict[str, list[list[str]]]:
    """word -> pronunciations (alternates folded into their word, stress digits dropped), file order,
    duplicates dropped."""
    if not path.is_file():
        raise AsrError(f"{path}: no such file (AN4's pronunciation dictionary; is CORPUS_DIR the AN4 root?)")
    lex: dict[str, list[list[str]]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise AsrError(f"{path}:{n}: word {parts[0]} has no phones")
        m = ALTERNATE.match(parts[0])
        word = m[1] if m else parts[0]
        pron = [re.sub(r"\d+$", "", p) for p in parts[1:]]
        prons = lex.setdefault(word, [])
        if pron not in prons:
            prons.append(pron)
    if not lex:
        raise AsrError(f"{path}: empty dictionary")
    return lex


def phone_texts(text: dict[str, str], lexicon: dict[str, list[list[str]]]) -> dict[str, str]:
    """utt -> the first pronunciation of each of its words (every word must be in ``lexicon``)."""
    return {u: " ".join(" ".join(lexicon[w][0]) for w in words.split()) for u, words in text.items()}


def read_set(corpus: Path, name: str) -> tuple[dict[str, str], dict[str, str], dict[str, Path]]:
    """``(text, utt2spk, utt -> file stem path)`` of one set from ``etc/`` (fileids + transcription)."""
    subdir, prefix = SETS[name]
    etc = corpus / "etc"
    fileids = (etc / f"{prefix}.fileids").read_text().split()
    text: dict[str, str] = {}
    for n, line in enumerate((etc / f"{prefix}.transcription").read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = TRANS.match(line.strip())
        if not m:
            raise AsrError(f"{etc}/{prefix}.transcription:{n}: expected 'WORDS (id)'")
        text[m[2]] = m[1]
    out_text, utt2spk, stems = {}, {}, {}
    for fid in fileids:
        parts = fid.split("/")  # an4_clstk/fash/an251-fash-b
        if len(parts) != 3 or parts[0] != subdir:
            raise AsrError(f"{etc}/{prefix}.fileids: unexpected entry {fid}")
        spk, rec = parts[1], parts[2]
        if rec not in text:
            raise AsrError(f"{etc}/{prefix}.transcription: no transcript for {rec}")
        utt = f"{spk}-{rec}"
        out_text[utt], utt2spk[utt], stems[utt] = text[rec], spk, Path(subdir) / spk / rec
    return out_text, utt2spk, stems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="AN4 root (an4_mfc copy with feat/, or an4 sphere with wav/)")
    p.add_argument("out", type=Path)
    p.add_argument("--dev-every", type=int, default=10)
    args = p.parse_args(argv)
    corpus = args.corpus.resolve()
    mfc = (corpus / "feat").is_dir()
    if not mfc and not (corpus / "wav").is_dir():
        raise AsrError(f"{corpus}: neither feat/ (Sphinx MFCC) nor wav/ (sphere audio) found")
    sets = {}
    for name in SETS:
        sets[name] = read_set(corpus, name)
    dic = corpus / "etc" / DICT
    lexicon = read_dictionary(dic)
    # Checked on the whole corpus before anything is written: a partial data/ would look finished.
    oov = sorted({w for text, _, _ in sets.values() for t in text.values() for w in t.split()} - set(lexicon))
    if oov:
        raise AsrError(f"{dic}: {len(oov)} transcript word(s) not in the dictionary: {' '.join(oov[:20])}")
    lines = [f"{w} {' '.join(pron)}" for w in sorted(lexicon) for pron in lexicon[w]]
    write_text(args.out / "local" / "lexicon.txt", "\n".join(lines) + "\n")
    print(f"{args.out / 'local' / 'lexicon.txt'}: {len(lexicon)} words, {len(lines)} pronunciations, "
          f"{len({p for prons in lexicon.values() for pron in prons for p in pron})} phones")
    text, utt2spk, stems = sets.pop("train")
    speakers = sorted(set(utt2spk.values()))
    dev_spk = set(speakers[args.dev_every - 1 :: args.dev_every])
    for name, keep in (("train", lambda s: s not in dev_spk), ("dev", lambda s: s in dev_spk)):
        sets[name] = tuple({u: v for u, v in t.items() if keep(utt2spk[u])} for t in (text, utt2spk, stems))
    for name, (text, utt2spk, stems) in sorted(sets.items()):
        d = args.out / name
        if mfc:
            d.mkdir(parents=True, exist_ok=True)
            frames = {}
            ark = (d / "feats.ark").resolve()
            with atomic_path(d / "feats.scp") as scp_tmp, atomic_path(ark) as ark_tmp:
                with kaldiio.WriteHelper(f"ark,scp:{ark_tmp},{scp_tmp}") as w:
                    for utt in sorted(stems, key=lambda u: u.encode()):
                        feats = read_mfc(corpus / "feat" / stems[utt].with_suffix(".mfc"))
                        w(utt, feats)
                        frames[utt] = len(feats)
            # kaldiio wrote the temp ark's name into the scp: point it at the final file.
            scp = (d / "feats.scp").read_text().replace(str(ark_tmp), str(ark))
            feats_scp = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in scp.splitlines()}
            write_data_dir(d, text=text, utt2spk=utt2spk, feats_scp=feats_scp, utt2num_frames=frames)
            # Sphinx cepstra: deltas + delta-deltas and per-speaker CMVN at load time, like Kaldi/EESEN.
            # 3 frames stacked, every 3rd kept (EESEN): 117 dims at 30 ms per BiLSTM step.
            dump(FeatureConfig(kind="precomputed", sample_rate=16000, num_ceps=13, cmvn="speaker",
                               delta_order=2, stack=3, subsample=3), d / "feats.yaml")
        else:
            wav = {u: str(corpus / "wav" / s.with_suffix(".sph")) for u, s in stems.items()}
            write_data_dir(d, wav_scp=wav, text=text, utt2spk=utt2spk)
        # A data dir of its own, so scoring and `asr results` name the set <set>_phone.
        write_data_dir(args.out / f"{name}_phone", text=phone_texts(text, lexicon), utt2spk=utt2spk)
        print(f"{d}: {len(utt2spk)} utterances, {len(set(utt2spk.values()))} speakers"
              + (" (Sphinx MFCC features)" if mfc else ""))
    return 0


if __name__ == "__main__":
    run_script(main, "prepare.py")
