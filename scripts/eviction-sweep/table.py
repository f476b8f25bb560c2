#!/usr/bin/env python3
"""Combined eviction table from the JSON files of scripts/eviction-sweep.sh.

Usage: table.py OUT_DIR   (reads OUT_DIR/eval@<ratio>[.<tag>].json and recall@... likewise;
the baseline row is the first run's: every run repeats it on the same tokens and tasks)
Prints one markdown table: per target ratio and preset the ratio held (allocator pages),
decode-PPL and its delta vs the baseline, passkey correct/n by depth (lengths pooled) and
overall, recall overall.
"""
import json
import os
import sys

DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def cells_by(js, task, idx):
    """{depth: [correct, n]} of cache `idx` (0 = baseline) for `task`."""
    out = {}
    for c in js.get("task_cells", []):
        if c["task"] != task:
            continue
        d = out.setdefault(float(c["depth"]), [0, 0])
        d[0] += c["correct"][idx]
        d[1] += c["n"]
    return out


def total(cells):
    c = sum(v[0] for v in cells.values())
    n = sum(v[1] for v in cells.values())
    return f"{c}/{n}" if n else "-"


def row(name, ratio, ppl, delta, pk, rc):
    depth = " | ".join(
        f"{pk[d][0]}/{pk[d][1]}" if d in pk else "-" for d in DEPTHS)
    return f"| {name} | {ratio} | {ppl} | {delta} | {depth} | {total(pk)} | {total(rc)} |"


def runs(out):
    """{ratio: [tag, ...]} from eval@<ratio>[.<tag>].json ('' = the main run first)."""
    found = {}
    for f in os.listdir(out):
        if f.startswith("eval@") and f.endswith(".json"):
            parts = f[len("eval@"):-len(".json")].split(".", 1)
            found.setdefault(parts[0], []).append(parts[1] if len(parts) > 1 else "")
    return {r: sorted(t) for r, t in sorted(found.items(), key=lambda x: float(x[0]))}


def main():
    out = sys.argv[1]
    print("| preset @ target | ratio held | decode-PPL | delta % | "
          + " | ".join(f"passkey d{d:g}" for d in DEPTHS) + " | passkey all | recall all |")
    print("|---|---|---|---|" + "---|" * len(DEPTHS) + "---|---|")
    base_done = False
    for r, tags in runs(out).items():
        for tag in tags:
            j = "." + tag if tag else ""
            ev = json.load(open(os.path.join(out, f"eval@{r}{j}.json")))
            rp = os.path.join(out, f"recall@{r}{j}.json")
            rc = json.load(open(rp)) if os.path.exists(rp) else {}
            if not base_done:
                b = ev["baseline"]
                print(row("baseline (fp16, full)", "1.00x", f"{b['ppl']:.2f}", "0",
                          cells_by(ev, "passkey", 0), cells_by(rc, "recall", 0)))
                base_done = True
            for i, p in enumerate(ev["presets"]):
                # the file name: two presets may share a recipe name (h2o, h2o-heads); recall@
                # was run with the same presets in the same order
                name = os.path.basename(p["preset"]).rsplit(".", 1)[0] + f" @{r}x"
                print(row(name, f"{p['ppl']['ratio']:.2f}x", f"{p['ppl']['ppl']:.2f}",
                          f"{p['delta_ppl_pct']:+.2f}", cells_by(ev, "passkey", i + 1),
                          cells_by(rc, "recall", i + 1)))


if __name__ == "__main__":
    main()
