#!/usr/bin/env python3
"""Synthetic long-context retrieval tasks, deterministic by seed (python3 stdlib only).

Two tasks, each a prompt whose continuation is a short answer (greedy decoding, exact match):
  passkey  a 5-digit pass key stated once at a chosen depth (0 = start, 1 = end) of filler text:
           "... The pass key is 48213. Remember it. 48213 is the pass key. ...
            What is the pass key? The pass key is"                 -> " 48213"
  recall   multi-key associative recall: n_keys "word: 5-digit value" lines scattered through
           filler text; the queried pair sits at the chosen depth; the prompt ends with
           "What is the value of <key>? The value of <key> is"     -> " 40917"
Filler is real corpus text (contiguous sentences from a random place), so the tasks also read
as natural text. Lengths are measured with a `count(text) -> int` function: the model's
tokenizer (tokens, BOS included) or, without one, characters / 4 (an estimate).

`context_tokens` = tokens of the prompt including BOS; the generator keeps it <= length - 8 so
that prompt + answer fit in `length` (e.g. the model's full context, 2048).

Library use (data/train_reference.py): TaskGen(sentences, count).passkey(length, depth, rng)
and .recall(...), each returning a dict; `segments` there lists (text, is_answer) pieces whose
concatenation is prompt + answer (+ extra queries when queries > 1), cut at pre-token
boundaries so each piece can be tokenized on its own.

CLI: write the committed evaluation sets
  python3 data/tasks.py --corpus data/build/corpus/test.jsonl --out data/tasks \
      [--tokenizer data/models/kvcal-ref-v1/tokenizer.json]
"""
import argparse
import json
import os
import random
import re

PASSKEY_HEADER = ("There is an important piece of information hidden inside a lot of irrelevant "
                  "text. Find it and memorize it. I will quiz you about the important "
                  "information there.\n\n")
PASSKEY_NEEDLE = "The pass key is {k}. Remember it. {k} is the pass key."
PASSKEY_QUESTION = "\n\nWhat is the pass key? The pass key is"

RECALL_HEADER = ("Some lines below give a key and its value, like \"word: 12345\". Remember them; "
                 "you will be asked for the value of a key.\n\n")
RECALL_PAIR = "{key}: {value}"
RECALL_QUESTION = "\n\nWhat is the value of {key}? The value of {key} is"

CLASSIC_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
                  "There and back again.")

ANSWER_ROOM = 8  # tokens kept free after the prompt for the answer

_SENT_SPLIT = re.compile(r"(?<=[.!?;])\s+|\n+")
_WORD = re.compile(r"\b[a-z]{4,9}\b")


def sentences_from_docs(texts, max_sentences=None):
    """Split documents into sentences (in document order)."""
    out = []
    for t in texts:
        for s in _SENT_SPLIT.split(t):
            s = s.strip()
            if len(s) >= 3:
                out.append(s)
                if max_sentences and len(out) >= max_sentences:
                    return out
    return out


def key_words(sentences, limit=20000):
    """Distinct lower-case words (4-9 letters) used as recall keys, sorted for determinism."""
    words = set()
    for s in sentences:
        words.update(_WORD.findall(s))
        if len(words) >= limit:
            break
    words.discard("pass")
    return sorted(words)


def chars_over_4(text):
    return 1 + (len(text) + 3) // 4


class TaskGen:
    """Builds task instances from a sentence pool and a length function."""

    def __init__(self, sentences, count=chars_over_4, sentence_counts=None, classic=False):
        assert sentences, "empty sentence pool"
        self.sentences = [CLASSIC_FILLER] if classic else list(sentences)
        self.count = count
        # per-sentence length estimates (each is joined with one space)
        self.sent_len = (list(sentence_counts) if sentence_counts is not None and not classic
                         else [max(1, count(s) - 1) for s in self.sentences])
        self.keys = key_words(sentences) or ["alpha", "bravo", "charlie", "delta", "echo"]

    # ------------------------------------------------------------------ helpers
    def _filler(self, rng, budget):
        """Contiguous sentences from a random start whose estimated length is about budget."""
        n = len(self.sentences)
        i = rng.randrange(n)
        out, lens, total = [], [], 0
        while total < budget and len(out) < 100000:
            out.append(self.sentences[i % n])
            lens.append(self.sent_len[i % n])
            total += lens[-1]
            i += 1
        return out, lens

    @staticmethod
    def _insert_at(lens, depth):
        """Index among len(lens)+1 gaps so that about `depth` of the filler comes before."""
        total = sum(lens)
        acc = 0
        for j, ln in enumerate(lens):
            if acc + ln / 2 >= depth * total:
                return j
            acc += ln
        return len(lens)

    def _fit(self, length, build, budget):
        """Grow/shrink the filler budget until count(prompt) <= length - ANSWER_ROOM."""
        target = length - ANSWER_ROOM
        for _ in range(12):
            inst = build(budget)
            n = self.count(inst["prompt"])
            if n <= target:
                inst["context_tokens"] = n
                return inst
            budget = max(0, budget - (n - target) - 2)
        raise RuntimeError(f"cannot fit a task into {length} tokens")

    # ------------------------------------------------------------------ tasks
    def passkey(self, length, depth, rng, seed=None):
        key = str(rng.randint(10000, 99999))
        fixed = self.count(PASSKEY_HEADER + PASSKEY_NEEDLE.format(k=key) + PASSKEY_QUESTION)
        start_state = rng.getstate()

        def build(budget):
            rng.setstate(start_state)  # same filler start on every retry
            sents, lens = self._filler(rng, budget)
            sents, lens = self._trim(sents, lens, budget)
            j = self._insert_at(lens, depth)
            body = sents[:j] + [PASSKEY_NEEDLE.format(k=key)] + sents[j:]
            prompt = PASSKEY_HEADER + " ".join(body) + PASSKEY_QUESTION
            return {"task": "passkey", "prompt": prompt, "answer": " " + key,
                    "length": length, "depth": depth, "seed": seed,
                    "segments": [(prompt, False), (" " + key, True)]}

        return self._fit(length, build, length - ANSWER_ROOM - fixed)

    def recall(self, length, depth, rng, seed=None, n_keys=16, queries=1):
        keys = rng.sample(self.keys, n_keys)
        values = [str(rng.randint(10000, 99999)) for _ in keys]
        q = rng.randrange(n_keys)  # the queried pair, placed at `depth`
        extra = [i for i in range(n_keys) if i != q]
        rng.shuffle(extra)
        asked = [q] + extra[:max(0, queries - 1)]
        pairs = [RECALL_PAIR.format(key=k, value=v) for k, v in zip(keys, values)]
        fixed = self.count(RECALL_HEADER + "\n".join(pairs) + RECALL_QUESTION.format(key=keys[q]))
        start_state = rng.getstate()

        def build(budget):
            rng.setstate(start_state)
            sents, lens = self._filler(rng, budget)
            sents, lens = self._trim(sents, lens, budget)
            gaps = len(sents) + 1
            pos = {q: self._insert_at(lens, depth)}
            for i in extra:  # the other pairs at random places
                pos[i] = rng.randrange(gaps)
            # inside one gap the queried pair goes last for deep positions, first for shallow ones
            order = sorted(range(n_keys), key=lambda i: (pos[i], (i == q) if depth >= 0.5 else (i != q), i))
            body, k = [], 0
            for j in range(gaps):
                while k < n_keys and pos[order[k]] == j:
                    body.append("\n" + pairs[order[k]] + "\n")
                    k += 1
                if j < len(sents):
                    body.append(sents[j])
            text = re.sub(r" ?\n ?", "\n", " ".join(body)).strip("\n ")
            prompt = RECALL_HEADER + text + RECALL_QUESTION.format(key=keys[asked[0]])
            segs = [(prompt, False), (" " + values[asked[0]], True)]
            for i in asked[1:]:  # training only: more queries, each answered
                segs += [("." + RECALL_QUESTION.format(key=keys[i]), False), (" " + values[i], True)]
            return {"task": "recall", "prompt": prompt, "answer": " " + values[asked[0]],
                    "key": keys[asked[0]], "n_keys": n_keys,
                    "length": length, "depth": depth, "seed": seed, "segments": segs}

        return self._fit(length, build, length - ANSWER_ROOM - fixed)

    @staticmethod
    def _trim(sents, lens, budget):
        while sents and sum(lens) > budget:
            sents, lens = sents[:-1], lens[:-1]
        return sents, lens


def eval_set(gen, task, lengths, depths, samples, seed):
    """Instances for every (length, depth, sample); each seeded on its own, so stable."""
    out = []
    for length in lengths:
        for depth in depths:
            for s in range(samples):
                inst_seed = seed * 1000003 + length * 1009 + int(round(depth * 100)) * 31 + s
                rng = random.Random(inst_seed)
                inst = gen.passkey(length, depth, rng, inst_seed) if task == "passkey" else \
                    gen.recall(length, depth, rng, inst_seed)
                out.append({k: inst[k] for k in ("prompt", "answer", "context_tokens",
                                                  "length", "depth", "seed")})
    return out


def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser(description="write passkey / recall evaluation sets (JSONL)")
    ap.add_argument("--corpus", default="data/build/corpus/test.jsonl",
                    help="filler source: a split that is NOT train")
    ap.add_argument("--tokenizer", help="tokenizer.json; without it lengths are chars/4")
    ap.add_argument("--out", default="data/tasks")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--lengths", default="256,512,1024,1536,2048")
    ap.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--samples", type=int, default=4)
    a = ap.parse_args()
    assert "train" not in os.path.basename(a.corpus), "evaluation filler must not come from train"

    count, unit = chars_over_4, "chars/4"
    if a.tokenizer:
        from tokenizers import Tokenizer  # only needed for exact token lengths
        tok = Tokenizer.from_file(a.tokenizer)
        count, unit = (lambda t: len(tok.encode(t, add_special_tokens=False).ids) + 1), "tokens"
    sents = sentences_from_docs(load_docs(a.corpus))
    gen = TaskGen(sents, count)
    lengths = [int(x) for x in a.lengths.split(",")]
    depths = [float(x) for x in a.depths.split(",")]
    os.makedirs(a.out, exist_ok=True)
    for task in ("passkey", "recall"):
        rows = eval_set(gen, task, lengths, depths, a.samples, a.seed)
        path = os.path.join(a.out, f"{task}_eval.jsonl")
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for r in rows:
                r["length_unit"] = unit
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"wrote {path}: {len(rows)} instances, lengths {lengths} ({unit}), depths {depths}")


if __name__ == "__main__":
    main()
