#!/usr/bin/env python3
"""The measurements of bench_model with Hugging Face transformers (the peer), on the same
checkpoint, printed in the same table format:
  prefill tokens/s at batch 1 for each --prefill length (forward with logits_to_keep=1, as
  bench_model computes the last position's logits only);
  decode ms per step at --context tokens for each --batch: prefill the context into a
  DynamicCache, then greedy steps (argmax copied to the host every step) timed over --steps.

    python3 bench/transformers_model.py /tmp/qwen7b-random [--attn sdpa] [--prefill 4096,16384]
        [--context 4096] [--batch 1,8] [--steps 32] [--reps 3]
"""
import argparse
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, DynamicCache


def ints(s):
    return [int(x) for x in s.split(",") if x]


def row(engine, phase, shape, value, unit):
    print(f"| {engine:<12} | {phase:<7} | {shape:<22} | {value:12.2f} | {unit:<7} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation (sdpa, eager, ...)")
    ap.add_argument("--prefill", type=ints, default=[4096, 16384])
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--batch", type=ints, default=[1, 8])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cudnn-sdp", choices=["prefill", "on", "off"], default="prefill",
                    help="torch's cuDNN SDPA backend: it re-plans for every new key length "
                         "(~50 ms per decode step on H200 / torch 2.11), so by default it is used "
                         "for the prefill runs only, the policy of kvcal's full_cache")
    args = ap.parse_args()
    can_switch = hasattr(torch.backends.cuda, "enable_cudnn_sdp")

    dev = "cuda"
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(args.dir, dtype=torch.bfloat16,
                                                 attn_implementation=args.attn).to(dev).eval()
    V = model.config.vocab_size
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"loaded {args.dir} with transformers {transformers.__version__}, torch {torch.__version__}, "
          f"attn {args.attn}, cuDNN SDPA {args.cudnn_sdp}, {nbytes / 1e9:.2f} GB, "
          f"{time.time() - t0:.1f} s", flush=True)
    g = torch.Generator().manual_seed(0)
    engine = "transformers"
    print(f"| {'engine':<12} | {'phase':<7} | {'shape':<22} | {'value':>12} | {'unit':<7} |")
    print("|--------------|---------|------------------------|--------------|---------|")
    with torch.inference_mode():
        if can_switch:
            torch.backends.cuda.enable_cudnn_sdp(args.cudnn_sdp != "off")
        for L in args.prefill:
            ids = torch.randint(0, V, (1, L), generator=g).to(dev)
            times = []
            for r in range(args.reps + 1):
                torch.cuda.synchronize()
                s = time.perf_counter()
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                out.logits[0, -1, 0].item()
                if r > 0:
                    times.append(time.perf_counter() - s)
                del out
            times.sort()
            row(engine, "prefill", f"B1 L{L}", L / times[len(times) // 2], "tok/s")
        if can_switch:
            torch.backends.cuda.enable_cudnn_sdp(args.cudnn_sdp == "on")
        for B in args.batch:
            cache = DynamicCache()
            ids = torch.randint(0, V, (B, args.context), generator=g).to(dev)
            out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            nxt = torch.randint(0, V, (B, 1), generator=g)
            start = 0.0
            for s in range(args.warmup + args.steps):
                if s == args.warmup:
                    start = time.perf_counter()
                out = model(input_ids=nxt.to(dev), past_key_values=cache, use_cache=True,
                            logits_to_keep=1)
                cache = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True).cpu()  # greedy; syncs every step
            ms = (time.perf_counter() - start) * 1e3 / args.steps
            row(engine, "decode", f"B{B} ctx{args.context}", ms, "ms/step")
            del cache, out
            torch.cuda.empty_cache()
    row("bound", "decode", f"weights {nbytes / 1e9:.2f} GB", nbytes / 3.0e12 * 1e3, "ms/step")


if __name__ == "__main__":
    main()
