#!/usr/bin/env python3
"""torch SDPA FP16 decode attention per layer, the baseline of bench_decode (issue 11).

Same shapes, timing and table format as bench/bench_decode.cu: Qwen2.5-7B (28 q / 4 kv heads,
head_dim 128), one query token per sequence, B in {1, 8}, L in {4096, 32768}; median of --reps
cudaEvent-timed calls, each after an L2 flush (a 128 MiB memset outside the timed region).
Keys are post-RoPE here (SDPA has no RoPE), as in a transformers decode step. "MB read" = K + V
fp16 + the query and output.

    python3 bench/sdpa_baseline.py [--reps 50] [--batch 1,8] [--len 4096,32768]
"""
import argparse

import torch
import torch.nn.functional as F


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--len", default="4096,32768")
    ap.add_argument("--heads", type=int, default=28)
    ap.add_argument("--kv", type=int, default=4)
    args = ap.parse_args()
    batches = [int(x) for x in args.batch.split(",")]
    lens = [int(x) for x in args.len.split(",")]
    d = 128
    dev = torch.device("cuda")
    flush = torch.empty(128 << 20, dtype=torch.uint8, device=dev)
    print(f"decode attention per layer, {torch.cuda.get_device_name(0)}, {args.heads} q / {args.kv} kv "
          f"heads, d 128, median of {args.reps}, L2 flushed\n")
    print("| method | B | L | time (us) | MB read | TB/s | fp16 MB / MB read | speedup vs fp16 (ours) "
          "| append+compress (Mtok/s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for B in batches:
        for L in lens:
            q = torch.randn(B, args.heads, 1, d, device=dev, dtype=torch.float16)
            k = torch.randn(B, args.kv, L, d, device=dev, dtype=torch.float16)
            v = torch.randn(B, args.kv, L, d, device=dev, dtype=torch.float16)

            def step():
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

            for _ in range(5):
                step()
            times = []
            for i in range(args.reps):
                flush.fill_(i & 0xFF)
                e0 = torch.cuda.Event(enable_timing=True)
                e1 = torch.cuda.Event(enable_timing=True)
                e0.record()
                step()
                e1.record()
                e1.synchronize()
                times.append(e0.elapsed_time(e1))
            times.sort()
            us = 1000.0 * times[len(times) // 2]
            kv_bytes = 2.0 * B * args.kv * L * d * 2
            nbytes = kv_bytes + 2.0 * B * args.heads * d * 2
            print(f"| torch SDPA fp16 | {B} | {L} | {us:.1f} | {nbytes / 1e6:.1f} | "
                  f"{nbytes / (us * 1e-6) / 1e12:.2f} | {kv_bytes / nbytes:.2f} | - | - |", flush=True)
            del q, k, v


if __name__ == "__main__":
    main()
