#!/usr/bin/env python3
"""Train kvcal's reference model: a small Llama (GQA, RoPE, SwiGLU, RMSNorm) on the package corpus
plus synthetic passkey / associative-recall tasks, then evaluate and write a HF model folder.

Runs on the GPU machine (PyTorch 2.x, transformers 5, tokenizers, numpy; no network):
  python3 data/train_reference.py --out data/models/kvcal-ref-v1 --minutes 4.5
Inputs: data/build/corpus/{train,valid,test}.jsonl from data/build_corpus.sh, data/eval.txt.
Outputs (--out): config.json, model*.safetensors (bf16, every file < 15 MiB), tokenizer.json,
tokenizer_config.json, generation_config.json, eval_results.json, README.md (model card); with
--tasks-out, the committed evaluation sets data/tasks/{passkey,recall}_eval.jsonl (token lengths).

Steps: (1) byte-level BPE tokenizer (Llama-3 split regex + ByteLevel, <|endoftext|> = BOS = EOS =
document separator); (2) tokenize the train split into one stream; (3) train for a wall-clock
budget (--minutes): cosine LR over elapsed time, rows of 2048 tokens, a share of rows carrying one
synthetic task (curriculum: task length grows from 256 to 2048 during the first --curriculum
fraction), answer tokens up-weighted in the loss; (4) save in bf16 and reload; (5) evaluate in
fp32: PPL (protocol in the model card) and greedy passkey / recall accuracy by length and depth.
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import random
import sys
import time

T0 = time.time()
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tasks as tasklib  # noqa: E402  (data/tasks.py, stdlib only)

# Llama-3 pre-tokenizer regex (what the C++ tokenizer implements for Llama-3 family models).
SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
EOT = "<|endoftext|>"


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="data/models/kvcal-ref-v1")
    ap.add_argument("--corpus-dir", default="data/build/corpus")
    ap.add_argument("--eval-text", default="data/eval.txt")
    ap.add_argument("--tasks-out", default="data/tasks",
                    help="rewrite the committed eval task sets with token lengths ('' = skip)")
    ap.add_argument("--minutes", type=float, default=4.5, help="training-loop wall budget")
    ap.add_argument("--total-minutes", type=float, default=7.0,
                    help="hard cap for the whole script; training stops early to respect it")
    ap.add_argument("--seed", type=int, default=1234)
    # tokenizer / model
    ap.add_argument("--vocab", type=int, default=6144)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=1024)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    # optimisation
    ap.add_argument("--batch", type=int, default=16, help="rows of --ctx tokens per step")
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup-steps", type=int, default=150)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--task-frac", type=float, default=0.6, help="share of rows with a task")
    ap.add_argument("--passkey-frac", type=float, default=0.6, help="of task rows")
    ap.add_argument("--answer-weight", type=float, default=5.0)
    ap.add_argument("--text-epochs", type=float, default=5.0,
                    help="phase 1: passes over the train stream with full loss on text (4.5 M "
                         "train tokens: more passes memorize the split and held-out PPL climbs)")
    ap.add_argument("--anchor-weight", type=float, default=0.05,
                    help="phase 2 (after --text-epochs): only attention weights train, every row "
                         "is a task row, answer tokens weigh 1 and other tokens this much")
    ap.add_argument("--attn-dropout", type=float, default=0.1, help="training only")
    ap.add_argument("--curriculum", type=float, default=0.35,
                    help="fraction of the budget over which the max task length grows to --ctx")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    # evaluation
    ap.add_argument("--eval-lengths", default="256,512,1024,2048")
    ap.add_argument("--eval-depths", default="0,0.25,0.5,0.75,1")
    ap.add_argument("--eval-samples", type=int, default=10)
    ap.add_argument("--max-train-sentences", type=int, default=300000)
    return ap.parse_args()


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts, vocab):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    eot = tok.token_to_id(EOT)
    assert eot == 0, f"{EOT} must be id 0, got {eot}"
    tok.post_processor = TemplateProcessing(single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B",
                                            special_tokens=[(EOT, eot)])
    # self-checks: round trip and BOS handling
    probe = "The pass key is 48213. Remember it.\n\nWhat is the pass key? “Ünïcödé” — ok"
    ids = tok.encode(probe).ids
    assert ids[0] == eot and tok.encode(probe, add_special_tokens=False).ids == ids[1:]
    assert tok.decode(ids[1:]) == probe, tok.decode(ids[1:])
    return tok


def save_hf_tokenizer(tok, out, ctx):
    from transformers import PreTrainedTokenizerFast
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT,
                                 pad_token=EOT, unk_token=None, model_max_length=ctx,
                                 clean_up_tokenization_spaces=False)
    hf.save_pretrained(out)
    return hf


# ----------------------------------------------------------------------------- data


class RowStream:
    """IterableDataset body: yields (ids[ctx+1] int64, weight[ctx] float32) training rows."""

    def __init__(self, a, stream, tok_json, sentences, sent_counts, progress, text_on):
        self.a, self.stream, self.tok_json = a, stream, tok_json
        self.sentences, self.sent_counts, self.progress = sentences, sent_counts, progress
        self.text_on = text_on  # shared flag: 0 once --text-epochs of text have been trained on

    def __iter__(self):
        import numpy as np
        import torch
        from tokenizers import Tokenizer
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        rng = random.Random(self.a.seed * 7919 + wid)
        tok = Tokenizer.from_str(self.tok_json)
        enc = lambda t: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
        gen = tasklib.TaskGen(self.sentences, lambda t: len(enc(t)) + 1, self.sent_counts)
        a, ctx, stream = self.a, self.a.ctx, self.stream
        n = len(stream)
        while True:
            row = np.empty(ctx + 1, dtype=np.int64)
            w = np.ones(ctx, dtype=np.float32)
            text_on = self.text_on.value > 0.5
            if not text_on or rng.random() < a.task_frac:
                p = self.progress.value
                max_len = int(256 + (ctx - 256) * min(1.0, p / max(a.curriculum, 1e-6)))
                length = max_len if rng.random() < 0.4 else rng.randint(256, max(256, max_len))
                depth = rng.random()
                try:
                    if rng.random() < a.passkey_frac:
                        inst = gen.passkey(length, depth, rng)
                    else:
                        inst = gen.recall(length, depth, rng, n_keys=rng.randint(4, 4 + length // 128),
                                          queries=rng.randint(1, 4))
                except RuntimeError:  # did not fit: skip this row
                    continue
                ids, ans = [0], [False]
                for text, is_answer in inst["segments"]:
                    piece = enc(text)
                    ids += piece
                    ans += [is_answer] * len(piece)
                ids.append(0)
                ans.append(False)
                ids, ans = ids[:ctx + 1], ans[:ctx + 1]
                fill = ctx + 1 - len(ids)
                o = rng.randrange(0, n - fill) if fill > 0 else 0
                text_part = stream[o:o + fill].astype(np.int64)
                if rng.random() < 0.5:  # task first, then text ...
                    row[:len(ids)] = ids
                    row[len(ids):] = text_part
                    amask = np.array(ans + [False] * fill)
                else:                   # ... or text first, task at the end
                    row[:fill] = text_part
                    row[fill:] = ids
                    amask = np.array([False] * fill + ans)
                w[amask[1:]] = a.answer_weight  # weight sits on the predicted position
                if not text_on:  # phase 2: answers dominate, text only anchors the LM
                    w[:] = a.anchor_weight
                    w[amask[1:]] = 1.0
            else:
                o = rng.randrange(0, n - ctx - 1)
                row[:] = stream[o:o + ctx + 1]
            yield torch.from_numpy(row), torch.from_numpy(w)


# ----------------------------------------------------------------------------- eval


def nll_windows(model, ids, ctx, device, torch):
    """Sum of NLL and token count over non-overlapping windows of ctx tokens (loss on 1..n-1)."""
    import torch.nn.functional as F
    tot, cnt = 0.0, 0
    for s in range(0, len(ids) - 1, ctx):
        x = torch.tensor(ids[s:s + ctx], dtype=torch.long, device=device)[None]
        if x.shape[1] < 2:
            break
        logits = model(input_ids=x).logits.float()          # [1, n, V]
        loss = F.cross_entropy(logits[0, :-1], x[0, 1:], reduction="sum")
        tot += loss.item()
        cnt += x.shape[1] - 1
    return tot, cnt


def doc_stream(tok, texts):
    ids = [0]
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids += enc.ids + [0]
    return ids


def greedy(model, ids, n_new, device, torch):
    x = torch.tensor([ids], dtype=torch.long, device=device)
    out = model(input_ids=x, use_cache=True)
    past, new = out.past_key_values, []
    for _ in range(n_new):
        nxt = int(out.logits[0, -1].argmax())
        new.append(nxt)
        if nxt == 0:
            break
        out = model(input_ids=torch.tensor([[nxt]], device=device), past_key_values=past,
                    use_cache=True)
        past = out.past_key_values
    return new


def answer_ok(decoded, answer):
    got = decoded.strip().split()
    want = answer.strip()
    return bool(got) and got[0].rstrip(".,;:!?") == want


# ----------------------------------------------------------------------------- main


def main():
    a = parse_args()
    import numpy as np
    import torch
    import torch.nn.functional as F
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    assert torch.cuda.is_available(), "needs the GPU machine"
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"args {vars(a)}")
    random.seed(a.seed)
    np.random.seed(a.seed)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)

    # ---- corpus
    train = read_jsonl(os.path.join(a.corpus_dir, "train.jsonl"))
    valid = read_jsonl(os.path.join(a.corpus_dir, "valid.jsonl"))
    test = read_jsonl(os.path.join(a.corpus_dir, "test.jsonl"))
    train_texts = [d["text"] for d in train]
    log(f"corpus: train {len(train)} docs {sum(map(len, train_texts)) / 1e6:.1f} M chars, "
        f"valid {len(valid)}, test {len(test)}")

    # ---- tokenizer
    tok = train_tokenizer(train_texts, a.vocab)
    hf_tok = save_hf_tokenizer(tok, a.out, a.ctx)
    assert hf_tok("hello world")["input_ids"][0] == 0
    log(f"tokenizer: vocab {tok.get_vocab_size()} saved")

    stream = np.array(doc_stream(tok, train_texts), dtype=np.uint16)
    assert tok.get_vocab_size() <= 65535
    sentences = tasklib.sentences_from_docs(train_texts, a.max_train_sentences)
    sent_counts = [max(1, len(e.ids))
                   for e in tok.encode_batch(sentences, add_special_tokens=False)]
    log(f"train stream {len(stream) / 1e6:.2f} M tokens "
        f"({sum(map(len, train_texts)) / len(stream):.2f} chars/token); "
        f"{len(sentences)} filler sentences")

    # ---- data workers (forked before CUDA is touched)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    progress = mp.get_context("fork").Value("d", 0.0, lock=False)

    class DS(torch.utils.data.IterableDataset):
        def __init__(self, body):
            self.body = body

        def __iter__(self):
            return iter(self.body)

    text_on = mp.get_context("fork").Value("d", 1.0, lock=False)
    ds = DS(RowStream(a, stream, tok.to_str(), sentences, sent_counts, progress, text_on))
    loader = torch.utils.data.DataLoader(ds, batch_size=a.batch, num_workers=a.workers,
                                         pin_memory=True, prefetch_factor=4,
                                         persistent_workers=True,
                                         multiprocessing_context="fork")
    batches = iter(loader)

    # ---- model
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg_kw = dict(vocab_size=tok.get_vocab_size(), hidden_size=a.hidden,
                  intermediate_size=a.ffn, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                  head_dim=a.head_dim, max_position_embeddings=a.ctx, rms_norm_eps=1e-5,
                  hidden_act="silu", attention_bias=False, mlp_bias=False,
                  tie_word_embeddings=False, initializer_range=0.02,
                  attention_dropout=a.attn_dropout,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    try:
        cfg = LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta},
                          **cfg_kw)
    except TypeError:
        cfg = LlamaConfig(rope_theta=a.rope_theta, **cfg_kw)
    assert a.heads % a.kv_heads == 0 and a.heads // a.kv_heads >= 2, "GQA >= 2 q heads per kv"
    model = LlamaForCausalLM(cfg).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.model.embed_tokens.weight.numel()
    log(f"model: {n_params / 1e6:.2f} M parameters ({(n_params - 2 * n_embed) / 1e6:.2f} M "
        f"non-embedding), attn {getattr(cfg, '_attn_implementation', '?')}")
    assert 6e6 < n_params < 17e6, n_params
    k_proj = model.model.layers[0].self_attn.k_proj.weight
    assert tuple(k_proj.shape) == (a.kv_heads * a.head_dim, a.hidden), k_proj.shape

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
    fwd = torch.compile(model) if a.compile else model

    # ---- train (budget in wall time; LR and curriculum follow elapsed / budget)
    # probes logged during training: valid loss on fixed windows, greedy passkey at full context
    valid_ids = doc_stream(tok, [d["text"] for d in valid])[:16 * a.ctx]
    count_probe = lambda t: len(tok.encode(t, add_special_tokens=False).ids) + 1  # noqa: E731
    probe_gen = tasklib.TaskGen(tasklib.sentences_from_docs([d["text"] for d in valid]), count_probe)
    probe_pk = [probe_gen.passkey(a.ctx, i / 7, random.Random(a.seed + i)) for i in range(8)]

    def probe():
        model.eval()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            tot, cnt = nll_windows(model, valid_ids, a.ctx, device, torch)
            ok = sum(answer_ok(tok.decode(greedy(model, tok.encode(p["prompt"]).ids, 8, device,
                                                 torch)), p["answer"]) for p in probe_pk)
        model.train()
        return tot / cnt, ok / len(probe_pk)

    t_start = time.time()
    last_probe = t_start
    # the whole script must end within --total-minutes: keep ~100 s for saving + evaluation
    budget = min(a.minutes * 60.0, T0 + a.total_minutes * 60.0 - 100.0 - t_start)
    assert budget > 10, f"no time left to train (budget {budget:.0f} s)"
    log(f"training budget {budget:.0f} s")
    hard_stop = t_start + budget
    step, tokens, ans_tokens, last_log = 0, 0, 0, t_start
    text_tokens, text_limit = 0, a.text_epochs * len(stream)
    ema = None
    best = None  # (valid loss, step, state) of the best phase-2 probe with passkey >= 7/8
    model.train()
    while True:
        now = time.time()
        frac = (now - t_start) / budget
        if frac >= 1.0 or now >= hard_stop:
            break
        progress.value = frac
        if step < a.warmup_steps:
            lr = a.lr * (step + 1) / a.warmup_steps
        else:
            lr = a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        rows, w = next(batches)
        rows = rows.to(device, non_blocking=True)          # [B, ctx+1]
        w = w.to(device, non_blocking=True)                # [B, ctx]
        x, y = rows[:, :-1], rows[:, 1:]
        if text_on.value > 0.5:
            text_tokens += int((w == 1).sum())
            if text_tokens >= text_limit:
                text_on.value = 0.0
                for n_, p_ in model.named_parameters():
                    p_.requires_grad_("self_attn" in n_)
                log(f"step {step}: {text_tokens / 1e6:.1f} M text tokens = {a.text_epochs} passes "
                    "over the train stream; phase 2: task rows, attention weights only, "
                    f"anchor weight {a.anchor_weight}")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = fwd(input_ids=x).logits               # [B, ctx, V]
        ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                             reduction="none").view_as(w)
        loss = (ce * w).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += x.numel()
        if step == 1:
            assert logits.shape == (a.batch, a.ctx, cfg.vocab_size), logits.shape
        if step % 200 == 0 or time.time() - last_log > 30:
            lv = loss.item()
            ema = lv if ema is None else 0.9 * ema + 0.1 * lv
            ans = (w > 1).sum().item()
            ans_ce = ((ce * (w > 1)).sum() / max(1, ans)).item()
            log(f"step {step} frac {frac:.3f} lr {lr:.2e} loss {lv:.3f} (ema {ema:.3f}) "
                f"answer-token ce {ans_ce:.3f} gnorm {float(gnorm):.2f} "
                f"{tokens / (time.time() - t_start) / 1e3:.0f} k tok/s")
            last_log = time.time()
        if time.time() - last_probe > (45 if text_on.value > 0.5 else 30):
            vl, pk = probe()
            log(f"probe: valid loss {vl:.3f} (ppl {math.exp(vl):.1f}), passkey@{a.ctx} {pk:.0%}")
            last_probe = time.time()
            if text_on.value < 0.5 and pk >= 0.875 and (best is None or vl < best[0]):
                best = (vl, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
    train_s = time.time() - t_start
    log(f"trained {step} steps, {tokens / 1e6:.1f} M tokens in {train_s:.0f} s")
    vl, pk = probe()
    log(f"final probe: valid loss {vl:.3f}, passkey@{a.ctx} {pk:.0%}")
    kept_step = step
    if best is not None and not (pk >= 0.875 and vl <= best[0]):
        model.load_state_dict(best[2])
        kept_step = best[1]
        log(f"keeping the step-{best[1]} weights (valid loss {best[0]:.3f}, passkey probe >= 7/8)")
    del batches, loader

    # ---- save (bf16, shards < 15 MiB) and reload for evaluation
    model.eval()
    model.config.attention_dropout = 0.0
    model.to(torch.bfloat16)
    model.generation_config.bos_token_id = 0
    model.generation_config.eos_token_id = 0
    model.generation_config.pad_token_id = 0
    model.save_pretrained(a.out, max_shard_size="14MB")
    for f in os.listdir(a.out):
        size = os.path.getsize(os.path.join(a.out, f))
        assert size < 15 * 2**20, f"{f} is {size} bytes"
    del model, fwd, opt
    torch.cuda.empty_cache()
    try:
        model = LlamaForCausalLM.from_pretrained(a.out, dtype=torch.float32).to(device)
    except TypeError:
        model = LlamaForCausalLM.from_pretrained(a.out, torch_dtype=torch.float32).to(device)
    model.eval()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    log(f"saved to {a.out}: {sorted(os.listdir(a.out))}; reloaded in fp32")

    results = {"params": n_params, "steps": step, "kept_step": kept_step, "tokens_seen": tokens, "text_tokens": text_tokens,
               "train_seconds": round(train_s, 1), "seed": a.seed, "args": vars(a),
               "torch": torch.__version__, "transformers": transformers.__version__,
               "gpu": torch.cuda.get_device_name(0)}
    with torch.no_grad():
        # ---- perplexity
        ppl = {}
        for name, ids in (("valid", doc_stream(tok, [d["text"] for d in valid])),
                          ("test", doc_stream(tok, [d["text"] for d in test])),
                          ("eval_txt", tok.encode(open(a.eval_text, encoding="utf-8").read()).ids)):
            tot, cnt = nll_windows(model, ids, a.ctx, device, torch)
            ppl[name] = {"ppl": math.exp(tot / cnt), "tokens": cnt}
            log(f"PPL {name}: {ppl[name]['ppl']:.3f} over {cnt} predicted tokens")
        results["ppl"] = ppl

        # ---- retrieval (filler from the test split, never train)
        count = lambda t: len(tok.encode(t, add_special_tokens=False).ids) + 1  # noqa: E731
        gen = tasklib.TaskGen(tasklib.sentences_from_docs([d["text"] for d in test]), count)
        lengths = [int(v) for v in a.eval_lengths.split(",")]
        depths = [float(v) for v in a.eval_depths.split(",")]
        acc = {}
        for task in ("passkey", "recall"):
            insts = tasklib.eval_set(gen, task, lengths, depths, a.eval_samples, 4)
            table = {}
            for inst in insts:
                ids = tok.encode(inst["prompt"]).ids
                assert len(ids) == inst["context_tokens"] and len(ids) + 8 <= a.ctx + 0
                new = greedy(model, ids, 8, device, torch)
                ok = answer_ok(tok.decode(new), inst["answer"])
                cell = table.setdefault(str(inst["length"]), {}).setdefault(
                    str(inst["depth"]), [0, 0])
                cell[0] += ok
                cell[1] += 1
            acc[task] = {L: {d: c[0] / c[1] for d, c in row.items()} for L, row in table.items()}
            for L, row in table.items():
                tot = sum(c[0] for c in row.values()) / sum(c[1] for c in row.values())
                acc[task][L]["all"] = tot
                log(f"{task} @ {L}: {tot:.2%}  by depth {[round(c[0] / c[1], 2) for c in row.values()]}")
        results["accuracy"] = acc
        results["eval_samples_per_cell"] = a.eval_samples

    with open(os.path.join(a.out, "eval_results.json"), "w") as f:
        json.dump(results, f, indent=1)
    write_card(a, results, cfg)

    if a.tasks_out:  # committed eval sets, exact token lengths, filler from test
        os.makedirs(a.tasks_out, exist_ok=True)
        for task in ("passkey", "recall"):
            rows = tasklib.eval_set(gen, task, [256, 512, 1024, 1536, 2048], depths, 4, 4)
            with open(os.path.join(a.tasks_out, f"{task}_eval.jsonl"), "w", encoding="utf-8") as f:
                for r in rows:
                    r["length_unit"] = "tokens"
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        log(f"wrote {a.tasks_out}/passkey_eval.jsonl, recall_eval.jsonl")
    pk = acc["passkey"].get(str(a.ctx), {}).get("all", 0.0)
    log(f"done in {time.time() - T0:.0f} s; passkey@{a.ctx} = {pk:.2%} "
        f"({'PASS' if pk >= 0.9 else 'FAIL'} vs the 90% acceptance bar)")


def write_card(a, r, cfg):
    lines = [f"# kvcal-ref-v1", "",
             "kvcal's reference model: a small Llama trained from scratch by the project on public "
             "text from packages (KJV Bible, Brown corpus, nlp-corpus; see data/README.md) plus "
             "synthetic passkey and associative-recall tasks, so that compression quality (PPL "
             "and retrieval through a compressed KV cache) is measured on a real model.", "",
             "## Architecture", "",
             f"LlamaForCausalLM: {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
             f"{cfg.num_attention_heads} query heads / {cfg.num_key_value_heads} KV heads (GQA), "
             f"head_dim {cfg.head_dim}, SwiGLU {cfg.intermediate_size}, RMSNorm, RoPE theta "
             f"{a.rope_theta}, context {a.ctx}, untied embeddings, vocab {cfg.vocab_size}: "
             f"{r['params'] / 1e6:.2f} M parameters; weights stored in bf16.", "",
             "Tokenizer: byte-level BPE (tokenizers), Llama-3 split regex then ByteLevel; "
             "`<|endoftext|>` (id 0) is BOS, EOS and the document separator; the tokenizer adds "
             "it at the start of every encoding.", "",
             "## Training", "",
             f"Seed {a.seed}; {r['steps']} steps of {a.batch} x {a.ctx} tokens "
             f"({r['tokens_seen'] / 1e6:.1f} M tokens seen, {r['train_seconds']:.0f} s on one "
             f"{r['gpu']}); AdamW (0.9, 0.95), weight decay {a.weight_decay}, peak LR {a.lr}, "
             f"{a.warmup_steps} warm-up steps, cosine to {a.min_lr_frac} x over the wall-clock "
             f"budget, bf16 autocast, grad clip 1.0. Rows: train split packed with separators; "
             f"{a.task_frac:.0%} of rows carry one synthetic task ({a.passkey_frac:.0%} passkey, "
             f"the rest multi-key recall) built from train sentences, with task length growing "
             f"from 256 to {a.ctx} over the first {a.curriculum:.0%} of the budget; loss on every "
             f"token, answer tokens weighted x{a.answer_weight}, attention dropout "
             f"{a.attn_dropout}. Phase 2: after {a.text_epochs} passes over the train stream "
             f"({r['text_tokens'] / 1e6:.1f} M text tokens; the split is only ~4.5 M tokens and "
             "more passes memorize it: held-out PPL climbs while train loss falls), every row is "
             f"a task row, only attention weights train, answer tokens weigh 1 and other tokens "
             f"{a.anchor_weight}; the kept weights are those of step {r['kept_step']} (best "
             "valid-split loss among phase-2 probes with passkey >= 7/8). torch " + r['torch'] + ", "
             f"transformers {r['transformers']}.", "",
             "Command (repo root, after data/build_corpus.sh):", "",
             "```", "python3 data/train_reference.py " + " ".join(
                 f"--{k.replace('_', '-')} {v}" for k, v in sorted(vars(a).items())
                 if k in ("out", "minutes", "seed", "corpus_dir")), "```", "",
             "Hyper-parameters: see `args` in eval_results.json.", "",
             "## Perplexity (fp32, weights as stored)", "",
             "Protocol: tokens = BOS + text (for the splits: BOS doc EOS doc EOS ...), cut into "
             f"non-overlapping windows of {a.ctx}; every window predicts its tokens 1..n-1 with no "
             "context from the previous window; PPL = exp(total NLL / predicted tokens).", "",
             "| set | PPL | predicted tokens |", "|---|---|---|"]
    for k, v in r["ppl"].items():
        name = {"eval_txt": "data/eval.txt"}.get(k, k + " split")
        lines.append(f"| {name} | {v['ppl']:.3f} | {v['tokens']} |")
    for task, table in r["accuracy"].items():
        depths = [d for d in next(iter(table.values())) if d != "all"]
        lines += ["", f"## {task} accuracy (greedy, exact match; {r['eval_samples_per_cell']} "
                  "samples per cell, filler from the test split)", "",
                  "| context | " + " | ".join(f"depth {d}" for d in depths) + " | all |",
                  "|---" * (len(depths) + 2) + "|"]
        for L, row in table.items():
            lines.append(f"| {L} | " + " | ".join(f"{row[d]:.0%}" for d in depths) +
                         f" | {row['all']:.0%} |")
    lines += ["", "Tasks: data/tasks.py (prompt formats there); committed instances in "
              "data/tasks/*_eval.jsonl.", ""]
    with open(os.path.join(a.out, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
