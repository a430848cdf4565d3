#!/usr/bin/env python3
"""speechocean762 (upstream Kaldi data dirs) -> ``OUT/{train,dev,test}`` + ``OUT/local/lexicon.txt``.

Upstream ``wav.scp`` paths are relative to the corpus root; here they become absolute so the
data dirs work from anywhere. Train and test speakers are disjoint upstream; ``--dev-every``
holds out every n-th training speaker (sorted) as dev, keeping dev speakers unseen too.

For phone units the CMU-style lexicon loses its stress digits (AH0/AH1 -> AH: 39 phones), and
each set gets a twin ``<set>_phone`` (text = the first pronunciation of every word, utt2spk) to
score phone error rate against.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asr.atomic import write_text
from asr.datadir import read_kv, write_data_dir
from asr.errors import AsrError, run_script
from asr.tokens import read_pronunciations


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", type=Path, help="corpus root holding train/ test/ resource/ WAVE/")
    p.add_argument("out", type=Path)
    p.add_argument("--dev-every", type=int, default=10, help="every n-th training speaker is dev")
    args = p.parse_args(argv)
    corpus = args.corpus.resolve()
    lex_path = corpus / "resource" / "lexicon.txt"
    if not lex_path.is_file():
        raise AsrError(f"{lex_path}: no such file (is CORPUS_DIR the speechocean762 root?)")
    lexicon = read_pronunciations(lex_path, strip_stress=True)
    tables = {}
    for split in ("train", "test"):
        src = corpus / split
        wav = {u: v if v.startswith("/") else str(corpus / v) for u, v in read_kv(src / "wav.scp").items()}
        tables[split] = (wav, read_kv(src / "text"), read_kv(src / "utt2spk"))
    wav, text, utt2spk = tables.pop("train")
    speakers = sorted(set(utt2spk.values()))
    dev_spk = set(speakers[args.dev_every - 1 :: args.dev_every])
    for name, keep in (("train", lambda s: s not in dev_spk), ("dev", lambda s: s in dev_spk)):
        utts = {u for u, s in utt2spk.items() if keep(s)}
        tables[name] = tuple({u: v for u, v in t.items() if u in utts} for t in (wav, text, utt2spk))
    lines = [f"{w} {' '.join(pron)}" for w in sorted(lexicon) for pron in lexicon[w]]
    write_text(args.out / "local" / "lexicon.txt", "\n".join(lines) + "\n")
    for name, (wav, text, utt2spk) in sorted(tables.items()):
        missing = {u: v for u, v in text.items() if u not in wav}
        if missing:
            raise AsrError(f"{corpus}: {len(missing)} utterance(s) of {name} have no audio, e.g. {next(iter(missing))}")
        d = write_data_dir(args.out / name, wav_scp=wav, text=text, utt2spk=utt2spk)
        phones = {}
        for utt, words in text.items():
            oov = [w for w in words.split() if w not in lexicon]
            if oov:
                raise AsrError(f"{corpus}/{name}: {utt}: word {oov[0]} not in {lex_path}")
            phones[utt] = " ".join(" ".join(lexicon[w][0]) for w in words.split())
        # A data dir of its own, so scoring and `asr results` name the set <set>_phone.
        write_data_dir(args.out / f"{name}_phone", text=phones, utt2spk=utt2spk)
        print(f"{d}: {len(utt2spk)} utterances, {len(set(utt2spk.values()))} speakers")
    return 0


if __name__ == "__main__":
    run_script(main, "prepare.py")
