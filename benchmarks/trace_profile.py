"""Where a summaries trace spends the time a plain sdpa forward does not: torch.profiler op totals.

    .venv/bin/python benchmarks/trace_profile.py [--tokens 512] [--repeat 3] [--threads N]

Runs the default model's plain sdpa forward (a fresh transformers copy, as trace_overhead.py) and
lmpeek.trace(model, ids) alternately, `--repeat` times each after a warm-up, under torch.profiler, and
prints per op: total CPU time per run in each, and the difference, largest first; then the time outside
any torch op (Python: hooks, the attention function, the prediction loop).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict


def _ops(prof) -> dict[str, float]:
    """op name -> self CPU time in ms (summed over its calls)."""
    out: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        out[e.key] += e.self_cpu_time_total / 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    import lmpeek

    if args.threads:
        torch.set_num_threads(args.threads)
    model = lmpeek.load("default", progress=False)
    text = open(__file__.replace("trace_profile.py", "sample.txt")).read()
    ids = model.tokenizer(text)["input_ids"]
    ids = (ids * (args.tokens // len(ids) + 1))[: args.tokens]
    x = torch.tensor([ids])

    from transformers import AutoModelForCausalLM

    # the baseline of benchmarks/trace_overhead.py: a fresh copy in transformers' default sdpa
    # (lmpeek.load leaves its model in eager, which pattern-returning code needs)
    hf = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32).eval()
    hf.set_attn_implementation("sdpa")

    def plain():
        with torch.inference_mode():
            hf(x)

    def summaries():
        lmpeek.trace(model, ids)

    runs = {"plain sdpa": plain, "summaries": summaries}
    for run in runs.values():
        run()  # warm-up
    ops: dict[str, dict[str, float]] = {}
    wall: dict[str, float] = defaultdict(float)
    for name, run in runs.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.repeat):
                t = time.perf_counter()
                run()
                wall[name] += (time.perf_counter() - t) * 1000 / args.repeat
        ops[name] = {k: v / args.repeat for k, v in _ops(prof).items()}
    a, b = ops["plain sdpa"], ops["summaries"]
    print(f"{args.tokens} tokens, per run (profiled, so slower than unprofiled):")
    for name in runs:
        in_ops = sum(ops[name].values())
        print(f"  {name:<11} wall {wall[name]:8.1f} ms   in torch ops {in_ops:8.1f} ms")
    print(f"\n{'op':<58} {'plain ms':>9} {'trace ms':>9} {'extra ms':>9}")
    rows = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0) - a.get(k, 0)))
    for k in rows[: args.top]:
        print(f"{k[:58]:<58} {a.get(k, 0):9.1f} {b.get(k, 0):9.1f} {b.get(k, 0) - a.get(k, 0):9.1f}")


if __name__ == "__main__":
    main()
