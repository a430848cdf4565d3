"""``asr make-graph``: an EESEN-style decoding graph TLG = T ∘ det(L ∘ G) over CTC tokens.

- G: the word n-gram LM, converted from ARPA by kaldilm (Kaldi's arpa2fst), backoff arcs on ``#0``;
  ``<s>``/``</s>`` become the start state and final weights.
- L: tokens -> words. Phone models spell words with the lang dir's ``lexicon.txt`` (every
  pronunciation), piece models as sentencepiece splits them, char models letter by letter, with
  ``<space>`` between words (and allowed at either end). By default the space is required, as in
  the training transcripts and in the beam search, so a hypothesis' tokens spell its words;
  ``--space optional`` lets words run together as EESEN's char graphs do (the space as Kaldi's
  optional silence), which can recover a space the model missed. Spellings that are a prefix of
  another or shared by two words end in a disambiguation symbol (``#1``...), so L ∘ G is functional
  and can be determinized.
- T: the CTC topology: a token may repeat on consecutive frames, blank may come between tokens,
  and the same token twice needs a blank in between. It is deterministic, so T ∘ det(L ∘ G) is too.

Labels: OpenFst reserves 0 for epsilon, so token id ``k`` is label ``k + 1`` on both sides of T and
on L's input (blank is 1); disambiguation symbols follow the tokens there (``#0`` = ``V + 1``) and
are replaced by epsilon once the graph is determinized. Word labels are those of ``words.txt``
(kaldilm's symbol table). GRAPH_DIR gets ``TLG.fst``, ``words.txt``, ``tokens.txt`` (the
graph's input labels) and ``info.yaml``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from asr.atomic import atomic_path, write_text
from asr.config import dump
from asr.errors import AsrError
from asr.lm.arpa import BOS, EOS

log = logging.getLogger(__name__)

HINT = "pip install 'asr[graph]'"
SPACE = "<space>"
SPACE_MODES = ("required", "optional")
_NOT_WORDS = {"<eps>", "#0", BOS, EOS}


def require(module: str) -> ModuleType:
    """Import one of the graph extras, or fail with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise AsrError(f"{module} is not installed ({e}); {HINT}") from None


# ---- ARPA -> G -------------------------------------------------------------------------------------
# kaldilm aborts the process on a malformed ARPA file, and logs to stderr as it goes: it runs in a
# child process, whose last error line becomes the message.
_ARPA2FST = """
import sys, kaldilm
kaldilm.arpa2fst(sys.argv[1], sys.argv[2], disambig_symbol="#0", write_symbol_table=sys.argv[3])
"""


def lm_fst(arpa: str | Path, work: Path):
    """G for ``arpa`` (an ARPA file, optionally gzipped) and its word table ``[symbol] by id``."""
    kaldifst = require("kaldifst")
    require("kaldilm")
    arpa = Path(arpa)
    if not arpa.is_file():
        raise AsrError(f"{arpa}: no such LM file")
    if arpa.suffix == ".gz":
        import gzip
        import shutil

        plain = work / "lm.arpa"
        with gzip.open(arpa, "rb") as src, open(plain, "wb") as dst:
            shutil.copyfileobj(src, dst)
        arpa = plain
    g_path, words_path = work / "G.fst", work / "words.txt"
    run = subprocess.run(
        [sys.executable, "-c", _ARPA2FST, str(arpa), str(g_path), str(words_path)], capture_output=True, text=True
    )
    if run.returncode != 0 or not g_path.is_file():
        errors = [ln for ln in run.stderr.splitlines() if ln.startswith("[E]")] or run.stderr.splitlines()[-1:]
        why = errors[-1].removeprefix("[E] ") if errors else f"exit status {run.returncode}"
        raise AsrError(f"{arpa}: kaldilm cannot convert it: {why}")
    words = read_symbols(words_path)
    return kaldifst.StdVectorFst.read(str(g_path)), words


def read_symbols(path: str | Path) -> list[str]:
    """A Kaldi symbol table (``symbol id`` per line, ids 0..N-1 in any order) as a list by id."""
    path = Path(path)
    if not path.is_file():
        raise AsrError(f"{path}: no such symbol table")
    table: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit():
                raise AsrError(f"{path}:{n}: expected 'symbol id', got {line.strip()!r}")
            table[int(parts[1])] = parts[0]
    if sorted(table) != list(range(len(table))):
        raise AsrError(f"{path}: ids are not 0..{len(table) - 1}")
    return [table[i] for i in range(len(table))]


# ---- L ---------------------------------------------------------------------------------------------
def spellings(lang_dir: Path, table, words: list[str]) -> tuple[list[tuple[int, list[int]]], list[str]]:
    """``(word id, token ids)`` for every word of ``words`` (G's table) the tokens can spell, and the rest.

    Char tables spell a word letter by letter; piece tables as sentencepiece splits it (what the
    model was trained on); phone tables use every pronunciation in ``lang_dir/lexicon.txt``.
    ``<unk>`` is the ``<unk>`` token unless the lexicon says otherwise.
    """
    from asr.decoders.word_trie import spell
    from asr.tokens import UNK, UNK_ID, read_pronunciations

    symbols, ids = table.symbols, table.ids
    prons: dict[str, list[list[int]]] = {}
    if SPACE in ids:
        skip = {0, ids[SPACE]}
        for w in words:
            if w not in _NOT_WORDS:
                p = spell(w, symbols, skip)
                if p:
                    prons[w] = [p]
    elif getattr(table, "unit", None) == "bpe":
        for w in words:
            if w not in _NOT_WORDS:
                p = table.encode(w)
                if p and UNK_ID not in p:
                    prons[w] = [p]
    else:
        lexicon = lang_dir / "lexicon.txt"
        if not lexicon.is_file():
            raise AsrError(f"{lang_dir}: a phone token table needs lexicon.txt beside it (word phone phone ...)")
        for word, spellings in read_pronunciations(lexicon).items():
            for phones in spellings:
                if all(p in ids and ids[p] != 0 for p in phones):  # phones the model knows
                    prons.setdefault(word, []).append([ids[p] for p in phones])
    prons.setdefault(UNK, [[UNK_ID]])
    out, missing = [], []
    for wid, w in enumerate(words):
        if w in _NOT_WORDS:
            continue
        if w in prons:
            out.extend((wid, p) for p in dict.fromkeys(map(tuple, prons[w])))
        else:
            missing.append(w)
    return [(wid, list(p)) for wid, p in out], missing


def disambiguate(entries: list[tuple[int, list[int]]]) -> tuple[list[int], int]:
    """Per entry the disambiguation symbol ending its spelling (0: none), and how many ``#n`` exist (``#0`` too).

    As Kaldi's add_lex_disambig.pl: a spelling that is a proper prefix of another, or shared by
    several words, gets ``#1``, ``#2``... (numbered per spelling), so no word sequence's token
    string is that of another.
    """
    count: dict[tuple[int, ...], int] = {}
    prefixes: set[tuple[int, ...]] = set()
    for _, p in entries:
        t = tuple(p)
        count[t] = count.get(t, 0) + 1
        prefixes.update(t[:i] for i in range(1, len(t)))
    used: dict[tuple[int, ...], int] = {}
    out = []
    for _, p in entries:
        t = tuple(p)
        if t in prefixes or count[t] > 1:
            used[t] = used.get(t, 0) + 1
            out.append(used[t])
        else:
            out.append(0)
    return out, max(out, default=0) + 1


def lexicon_fst(entries: list[tuple[int, list[int]]], n_tokens: int, word_disambig: int, space: int | None,
                space_mode: str = "required"):
    """L: token labels (id + 1, then ``#n`` at ``n_tokens + 1 + n``) -> word labels, and the ``#n`` count.

    ``word_disambig`` is ``#0``'s id in the word table (G's backoff label), which L passes through
    between words. ``space`` (a token id, char models) may stand between words and at either end.
    """
    kaldifst = require("kaldifst")
    marks, n_disambig = disambiguate(entries)
    L = kaldifst.StdVectorFst()
    start = L.add_state()
    L.start = start
    after_word = start if space is None or space_mode == "optional" else L.add_state()
    # Backoff (#0) only where no space has been read since the last word: one path per token string.
    sources = [start]
    arcs = [(start, n_tokens + 1, word_disambig, start)]
    if after_word != start:
        arcs.append((after_word, n_tokens + 1, word_disambig, after_word))
    if space is not None:
        after_space = L.add_state()
        sources.append(after_space)
        s = space + 1
        arcs += [(start, s, 0, after_space), (after_space, s, 0, after_space)]
        if after_word != start:
            arcs.append((after_word, s, 0, after_space))
    for (wid, pron), mark in zip(entries, marks, strict=True):
        labels = [t + 1 for t in pron] + ([n_tokens + 1 + mark] if mark else [])
        for src in sources:
            cur = src
            for i, lab in enumerate(labels):
                nxt = after_word if i == len(labels) - 1 else L.add_state()
                arcs.append((cur, lab, wid if i == 0 else 0, nxt))
                cur = nxt
    for state in {start, after_word, *sources}:
        L.set_final(state, 0.0)
    _add_arcs(L, arcs)
    return L, n_disambig


def _add_arcs(fst, arcs: list[tuple[int, int, int, int]]) -> None:
    """Add unweighted ``(source, input label, output label, target)`` arcs."""
    kaldifst = require("kaldifst")
    one = kaldifst.TropicalWeight(0.0)
    for src, ilab, olab, dst in arcs:
        fst.add_arc(src, kaldifst.StdArc(ilab, olab, one, dst))


# ---- T ---------------------------------------------------------------------------------------------
def token_fst(n_tokens: int, n_disambig: int = 0):
    """T: frame labels -> token labels (both id + 1, blank = 1); ``#n`` pass through everywhere.

    State 0 is "after blank (or at the start)", state k "in token k": repeating k stays there and
    emits nothing, blank goes back to 0, another token j emits j.
    """
    kaldifst = require("kaldifst")
    T = kaldifst.StdVectorFst()
    for _ in range(n_tokens):
        T.add_state()
    T.start = 0
    arcs = []
    for s in range(n_tokens):
        T.set_final(s, 0.0)
        arcs.append((s, 1, 0, 0))
        for k in range(1, n_tokens):
            arcs.append((s, k + 1, 0 if k == s else k + 1, k))
        arcs += [(s, n_tokens + 1 + d, n_tokens + 1 + d, s) for d in range(n_disambig)]
    _add_arcs(T, arcs)
    return T


def _drop_disambig(n_tokens: int, n_disambig: int):
    """A one-state transducer that, composed on the left, turns the ``#n`` input labels into epsilon."""
    kaldifst = require("kaldifst")
    R = kaldifst.StdVectorFst()
    R.add_state()
    R.start = 0
    R.set_final(0, 0.0)
    arcs = [(0, k + 1, k + 1, 0) for k in range(n_tokens)]
    arcs += [(0, 0, n_tokens + 1 + d, 0) for d in range(n_disambig)]
    _add_arcs(R, arcs)
    return R


def compose_tlg(T, L, G, n_tokens: int, n_disambig: int):
    """TLG = rm_disambig(det(T ∘ min(det(L ∘ G)))), arc-sorted by input label for the decoder."""
    kaldifst = require("kaldifst")
    kaldifst.arcsort(L, sort_type="olabel")
    kaldifst.arcsort(G, sort_type="ilabel")
    LG = kaldifst.compose(L, G)
    # Kaldi's recipe (fstdeterminizestar --use-log=true | fstminimizeencoded) for L ∘ G.
    kaldifst.determinize_star(LG, use_log=True)
    kaldifst.minimize_encoded(LG)
    kaldifst.arcsort(LG, sort_type="ilabel")
    kaldifst.arcsort(T, sort_type="olabel")
    TLG = kaldifst.compose(T, LG)
    # With this T (deterministic, like LG) the composition is deterministic already and this costs
    # about what the composition did; it is Kaldi's HCLG step, and keeps the decoder's graph
    # deterministic should T ever gain epsilons (EESEN's compact T has them).
    kaldifst.determinize_star(TLG)
    kaldifst.arcsort(TLG, sort_type="ilabel")
    TLG = kaldifst.compose(_drop_disambig(n_tokens, n_disambig), TLG)
    kaldifst.minimize_encoded(TLG)
    kaldifst.arcsort(TLG, sort_type="ilabel")
    return TLG


def num_arcs(fst) -> int:
    return sum(fst.num_arcs(s) for s in range(fst.num_states))


def make_graph(lang_dir: str | Path, lm: str | Path, out_dir: str | Path, space_mode: str = "required") -> dict:
    """Build ``out_dir/TLG.fst`` (+ ``words.txt``, ``tokens.txt``, ``info.yaml``); returns the info written."""
    from asr.tokens import UNK, TokenTable

    if space_mode not in SPACE_MODES:
        raise AsrError(f"--space {space_mode!r}: expected one of {', '.join(SPACE_MODES)}")
    lang_dir, out_dir = Path(lang_dir), Path(out_dir)
    require("kaldifst")
    table = TokenTable.load(lang_dir)
    symbols = table.symbols
    V = len(symbols)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="make-graph-") as tmp:
        G, words = lm_fst(lm, Path(tmp))
    entries, missing = spellings(lang_dir, table, words)
    if all(words[w] == UNK for w, _ in entries):
        raise AsrError(f"{lm}: none of its words can be spelled with {lang_dir}'s tokens (letter case? units?)")
    if missing:
        log.warning("%d of the LM's words cannot be spelled with the tokens and are left out, e.g. %s",
                    len(missing), ", ".join(missing[:5]))
    space = symbols.index(SPACE) if SPACE in symbols else None
    L, n_disambig = lexicon_fst(entries, V, words.index("#0"), space, space_mode)
    T = token_fst(V, n_disambig)
    TLG = compose_tlg(T, L, G, V, n_disambig)
    if TLG.num_states == 0:
        raise AsrError(f"{lm}: the graph is empty (no sentence of the LM can be spelled with the tokens)")
    info = {"lang_dir": str(lang_dir), "lm": str(lm), "space": space_mode if space is not None else None,
            "tokens": V, "words": len(words), "spelled": len({w for w, _ in entries}), "disambig": n_disambig,
            "states": TLG.num_states, "arcs": num_arcs(TLG), "seconds": round(time.time() - t0, 2)}
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "TLG.fst") as tmp:
        if not TLG.write(str(tmp)):
            raise AsrError(f"{out_dir / 'TLG.fst'}: cannot write it")
    write_text(out_dir / "words.txt", "".join(f"{w} {i}\n" for i, w in enumerate(words)))
    write_text(out_dir / "tokens.txt", "<eps> 0\n" + "".join(f"{s} {i + 1}\n" for i, s in enumerate(symbols)))
    dump(info, out_dir / "info.yaml")
    return info


def _cmd_make_graph(args: argparse.Namespace) -> int:
    info = make_graph(args.lang_dir, args.lm, args.out, args.space)
    print(f"{Path(args.out) / 'TLG.fst'}: {info['states']} states, {info['arcs']} arcs, "
          f"{info['spelled']} words, built in {info['seconds']} s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-graph", help="compile tokens, lexicon and an ARPA LM into a TLG decoding graph")
    p.add_argument("lang_dir", help="dir with tokens.txt (and lexicon.txt for phone tokens)")
    p.add_argument("--lm", required=True, help="ARPA word n-gram LM (optionally .gz)")
    p.add_argument("-o", "--out", required=True, help="graph dir: TLG.fst, words.txt, tokens.txt, info.yaml")
    p.add_argument("--space", choices=SPACE_MODES, default="required",
                   help="char models: <space> between words required (default, as in training) or optional (EESEN)")
    p.set_defaults(func=_cmd_make_graph)
