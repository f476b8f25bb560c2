#!/usr/bin/env python3
"""Creates a random-weight checkpoint with Qwen2.5-7B shapes for bench_model and
transformers_model.py: 28 layers, hidden 3584, 28 q / 4 kv heads (head_dim 128), intermediate
18944, vocab 152064, q/k/v biases, untied lm_head, bf16, written in safetensors shards with an
index (model-0000N-of-0000M.safetensors + model.safetensors.index.json). Nothing is downloaded:
the weights come from transformers' own initializer (normal, std = initializer_range) on the GPU
when one is present.

    python3 bench/make_random_checkpoint.py /tmp/qwen7b-random [--tiny] [--shard-size 4GB]

--tiny writes a 2-layer model of the same family with small shapes (a quick check of the
scripts). Requires torch and transformers (5.x; 4.4x also works).
"""
import argparse
import json
import os
import time

import torch
import transformers
from transformers import Qwen2Config, Qwen2ForCausalLM

QWEN25_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 max_position_embeddings=32768, rms_norm_eps=1e-6)
TINY = dict(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32768,
            rms_norm_eps=1e-6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--tiny", action="store_true", help="small shapes, for testing the scripts")
    ap.add_argument("--shard-size", default="4GB", help="max_shard_size for save_pretrained")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    shapes = TINY if args.tiny else QWEN25_7B
    kw = dict(shapes, tie_word_embeddings=False, use_sliding_window=False, bos_token_id=151643,
              eos_token_id=151643, hidden_act="silu")
    if int(transformers.__version__.split(".")[0]) >= 5:
        kw["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
    else:
        kw["rope_theta"] = 1000000.0
    if args.tiny:
        kw["bos_token_id"] = kw["eos_token_id"] = 0
    cfg = Qwen2Config(**kw)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = Qwen2ForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model = model.to(torch.bfloat16).eval()
    n = sum(p.numel() for p in model.parameters())
    print(f"initialized {n / 1e9:.2f} B parameters on {device} in {time.time() - t0:.1f} s")
    t0 = time.time()
    os.makedirs(args.out, exist_ok=True)
    model.save_pretrained(args.out, max_shard_size=args.shard_size)
    # Keep only what kvcal reads; no generation config.
    gen = os.path.join(args.out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    with open(os.path.join(args.out, "config.json")) as f:
        written = json.load(f)
    files = sorted(f for f in os.listdir(args.out) if f.endswith(".safetensors"))
    size = sum(os.path.getsize(os.path.join(args.out, f)) for f in files)
    print(f"wrote {args.out}: {len(files)} shard(s), {size / 1e9:.2f} GB, model_type "
          f"{written['model_type']}, in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
