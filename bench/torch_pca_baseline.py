#!/usr/bin/env python3
"""Baselines for bench_pca (issue #6), same shapes, same session, on the GPU machine.

  python3 bench/torch_pca_baseline.py [--blocks 224] [--d 128] [--layers 28] [--kv 4]
                                      [--rows 8192] [--reps 20]
      torch.linalg.eigh of the batch (fp32 and fp64) and the torch fp32 bmm covariance
      accumulation (tokens/s for all blocks), printed as a markdown table.

  python3 bench/torch_pca_baseline.py --check CAPTURE.h5 PCA.h5 [--max-tokens N]
      numpy reference of a fit: per block the covariance in float64 (np.cov(bias=True) of the
      rows fit-pca used), np.linalg.eigh, compared with pca.h5 (eigenvalue rel. error, principal
      angles of the top-r subspaces where the eigengap allows). Needs h5py.

  python3 bench/torch_pca_baseline.py --make-capture OUT.h5 --tokens N [--layers 28 --kv 4 --d 128]
      a synthetic 7B-shaped capture (kvcal.capture v1 layout, fp16, chunked) for end-to-end timing
      of `kvcal fit-pca` (57 KB/token for K + V at 28 x 4 x 128).
"""
import argparse
import json
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
    for dt in (torch.float32, torch.float64):
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
    print(f"\n### torch_pca_baseline ({torch.cuda.get_device_name()}, torch {torch.__version__})\n")
    print("| what | time | rate |\n|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def check(a):
    import h5py
    import numpy as np
    cap, pca = h5py.File(a.check[0], "r"), h5py.File(a.check[1], "r")
    n = int(cap.attrs["n_tokens"])
    if a.max_tokens:
        n = min(n, a.max_tokens)
    gran = pca.attrs["granularity"]
    gran = gran.decode() if isinstance(gran, (bytes, np.bytes_)) else str(gran)
    targets = json.loads(pca.attrs["targets"])
    centered = int(pca.attrs["centered"]) != 0
    worst_rel, worst_ang, blocks = 0.0, 0.0, 0
    for t in targets:
        for layer in range(int(cap.attrs["n_layers"])):
            x = np.asarray(cap[f"layers/{layer}/{t}"][:n], dtype=np.float64)  # [n, kv, d]
            heads = [None] if gran == "layer" else range(x.shape[1])
            for h in heads:
                v = x.reshape(-1, x.shape[2]) if h is None else x[:, h, :]
                c = np.cov(v, rowvar=False, bias=True) if centered else v.T @ v / v.shape[0]
                w, u = np.linalg.eigh(c)
                w, u = w[::-1], u[:, ::-1]
                g = pca[f"{t}/{layer}/{'all' if h is None else h}"]
                ev, basis = g["eigenvalues"][:], g["basis"][:]
                worst_rel = max(worst_rel, float(np.max(np.abs(ev - w) / w[0])))
                d = len(w)
                for r in sorted({1, max(1, d // 8), max(1, d // 4), d // 2}):
                    if w[r - 1] - w[r] < 1e-3 * w[0]:
                        continue
                    s = np.linalg.svd(u[:, :r].T @ basis[:, :r], compute_uv=False)
                    worst_ang = max(worst_ang, float(np.arccos(min(1.0, s.min()))))
                blocks += 1
    print(f"{blocks} blocks, {n} tokens: max eigenvalue error / lambda_1 = {worst_rel:.2e}, "
          f"max principal angle = {worst_ang:.2e} rad")
    ok = worst_rel <= 1e-5 and worst_ang <= 1e-3
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


def make_capture(a):
    import h5py
    import numpy as np
    rng = np.random.default_rng(0)
    n, L, kv, d = a.tokens, a.layers, a.kv, a.d
    model = {"model_type": "qwen2", "n_layers": L, "n_kv_heads": kv, "head_dim": d,
             "rope": {"theta": 1000000.0, "type": "default"}, "config_sha256": "0" * 64}
    chunk = 4096
    with h5py.File(a.make_capture, "w") as f:
        # Strings as fixed-length (np.bytes_): kvcal reads fixed-length string attributes only
        # (h5py writes a plain str as variable-length).
        for k, v in dict(format="kvcal.capture", version=np.int64(1), model=json.dumps(model),
                         n_layers=np.int64(L), n_kv_heads=np.int64(kv), n_heads=np.int64(7 * kv),
                         head_dim=np.int64(d), n_tokens=np.int64(n), dtype="float16",
                         record=json.dumps(["k", "v"])).items():
            f.attrs[k] = np.bytes_(v) if isinstance(v, str) else v
        mix = rng.standard_normal((L, 2, kv, d, d)).astype(np.float32) / np.sqrt(d)
        scale = (0.93 ** np.arange(d)).astype(np.float32) * 4
        for layer in range(L):
            for ti, t in enumerate(("k", "v")):
                ds = f.create_dataset(f"layers/{layer}/{t}", (n, kv, d), dtype="float16",
                                      chunks=(min(chunk, n), kv, d))
                for t0 in range(0, n, chunk):
                    m = min(chunk, n - t0)
                    z = rng.standard_normal((m, kv, d), dtype=np.float32) * scale
                    ds[t0:t0 + m] = np.einsum("hij,mhj->mhi", mix[layer, ti], z).astype(np.float16)
            print(f"layer {layer + 1}/{L}", file=sys.stderr)
    print(f"wrote {a.make_capture}: {n} tokens, {L} layers x {kv} KV heads x {d}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--blocks", type=int, default=224)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--kv", type=int, default=4)
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--check", nargs=2, metavar=("CAPTURE", "PCA"))
    p.add_argument("--max-tokens", type=int, default=0)
    p.add_argument("--make-capture", metavar="OUT")
    p.add_argument("--tokens", type=int, default=1 << 20)
    a = p.parse_args()
    if a.check:
        return check(a)
    if a.make_capture:
        return make_capture(a)
    bench(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
