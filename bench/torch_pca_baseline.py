#!/usr/bin/env python3
"""Baselines for bench_pca (issue #6), same shapes, same session, on the GPU machine.

  python3 bench/torch_pca_baseline.py [--blocks 224] [--d 128] [--layers 28] [--kv 4]
                                      [--rows 32768] [--reps 20] [--no-eig]
      torch.linalg.eigh of the batch (fp32 and fp64) and the torch covariance accumulation
      (tokens/s for all blocks), printed as a markdown table:
        - fp32 bmm on fp32 data (TF32 off), one bmm per (layer, K|V) slot: the issue's baseline;
        - the same work as one baddbmm over all blocks;
        - fp16 data, fp32 output (torch.bmm out_dtype where this torch has it; otherwise fp16
          output, which loses precision and is labelled so): the honest row for fp16 captures.

The numpy check of a fit is tests/fixtures/check_pca_numpy.py; synthetic captures for end-to-end
timing come from bench/make_synthetic_capture (capture writer). scripts/pca-gpu-bench.sh runs all.
"""
import argparse
import sys
import time


def bench(a):
    import torch
    dev = "cuda"
    g = torch.Generator(device="cpu").manual_seed(1)
    rows = []
    # Same construction as bench_pca: random rotations, decaying spectrum.
    q, _ = torch.linalg.qr(torch.randn(a.blocks, a.d, a.d, generator=g, dtype=torch.float64))
    decay = 0.85 + 0.1 * (torch.arange(a.blocks) % 7).double() / 7.0
    lam = 10 * decay[:, None] ** torch.arange(a.d).double()[None, :] + 1e-3
    c = q @ torch.diag_embed(lam) @ q.transpose(1, 2)
    c = 0.5 * (c + c.transpose(1, 2))
    for dt in (torch.float32, torch.float64) if a.eig else ():
        x = c.to(dev, dt)
        torch.linalg.eigh(x)
        torch.cuda.synchronize()
        best = 1e30
        for _ in range(max(1, min(a.reps, 5))):
            t0 = time.perf_counter()
            torch.linalg.eigh(x)
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        rows.append((f"torch.linalg.eigh {a.blocks} x {a.d}^2 {str(dt).replace('torch.', '')}",
                     f"{best * 1e3:.2f} ms", ""))
    # fp32 means fp32: no TF32 in the baseline (the "torch fp32 bmm").
    torch.backends.cuda.matmul.allow_tf32 = False
    # Covariance: per (layer, K|V) a [rows, kv, d] block; X^T X per head with bmm, fp32.
    slots = 2 * a.layers
    x = (3.0 + torch.randn(a.rows, a.kv, a.d, device=dev, dtype=torch.float32))
    acc = torch.zeros(slots, a.kv, a.d, a.d, device=dev, dtype=torch.float32)
    sums = torch.zeros(slots, a.kv, a.d, device=dev, dtype=torch.float32)

    def step():
        xh = x.permute(1, 2, 0)  # [kv, d, rows]
        for s in range(slots):
            acc[s] += torch.bmm(xh, xh.transpose(1, 2))
            sums[s] += xh.sum(-1)

    step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.reps):
        step()
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    rows.append((f"torch fp32 bmm covariance {slots * a.kv} blocks, per (layer, K|V) slot, "
                 f"{a.rows}-token blocks",
                 f"{sec * 1e3 / a.reps:.2f} ms/block", f"{a.rows * a.reps / sec / 1e6:.2f} M tok/s"))
    # The same work as one bmm over all blocks (data pre-arranged as [blocks, rows, d]).
    del acc, sums
    xb = 3.0 + torch.randn(slots * a.kv, a.rows, a.d, device=dev, dtype=torch.float32)
    acc = torch.zeros(slots * a.kv, a.d, a.d, device=dev, dtype=torch.float32)
    sums = torch.zeros(slots * a.kv, a.d, device=dev, dtype=torch.float32)

    def step_all():
        acc.baddbmm_(xb.transpose(1, 2), xb)
        sums.add_(xb.sum(1))

    step_all()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.reps):
        step_all()
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    rows.append((f"torch fp32 bmm covariance {slots * a.kv} blocks in one baddbmm, "
                 f"{a.rows}-token blocks (allow_tf32={torch.backends.cuda.matmul.allow_tf32})",
                 f"{sec * 1e3 / a.reps:.2f} ms/block", f"{a.rows * a.reps / sec / 1e6:.2f} M tok/s"))
    del xb, acc, sums
    # fp16 data (what captures store), per slot as in the first row; fp32 Gram matrices.
    xh16 = (3.0 + torch.randn(a.rows, a.kv, a.d, device=dev)).half().permute(1, 2, 0)
    acc = torch.zeros(slots, a.kv, a.d, a.d, device=dev, dtype=torch.float32)
    sums = torch.zeros(slots, a.kv, a.d, device=dev, dtype=torch.float32)
    try:
        torch.bmm(xh16[:, :, :16], xh16[:, :, :16].transpose(1, 2), out_dtype=torch.float32)
        how = "fp32 output (bmm out_dtype)"

        def gram(v):
            return torch.bmm(v, v.transpose(1, 2), out_dtype=torch.float32)
    except (TypeError, RuntimeError):
        how = "fp16 output, converted (this torch has no bmm out_dtype; lossy)"

        def gram(v):
            return torch.bmm(v, v.transpose(1, 2)).float()

    def step_half():
        for s in range(slots):
            acc[s] += gram(xh16)
            sums[s] += xh16.sum(-1, dtype=torch.float32)

    step_half()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.reps):
        step_half()
    torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    rows.append((f"torch fp16-input bmm covariance {slots * a.kv} blocks, per slot, {how}, "
                 f"{a.rows}-token blocks",
                 f"{sec * 1e3 / a.reps:.2f} ms/block", f"{a.rows * a.reps / sec / 1e6:.2f} M tok/s"))
    print(f"\n### torch_pca_baseline ({torch.cuda.get_device_name()}, torch {torch.__version__})\n")
    print("| what | time | rate |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--blocks", type=int, default=224)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--kv", type=int, default=4)
    p.add_argument("--rows", type=int, default=32768)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--no-eig", dest="eig", action="store_false")
    a = p.parse_args()
    bench(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
