"""Cost of lmpeek.trace against a plain transformers forward on the default model.

    .venv/bin/python benchmarks/trace_overhead.py [--lengths 128 512 2048] [--repeat 5]
        [--modes "plain sdpa" summaries] [--no-memory]

For each length T it runs (peak memory: each mode alone in a fresh process):
  plain sdpa   transformers' default forward (the baseline every ratio is against)
  plain eager  transformers' eager forward (what pattern-returning tools must use)
  summaries    lmpeek.trace(model, ids): predictions, norms, attention entropy
  summaries fused  the same with capture.hooks.FUSED_ENTROPY (entropy from torch's fused kernel)
  all patterns lmpeek.trace(model, ids, keep=["blocks.*.attn.hook_pattern"])
and prints the median wall time (all modes of one length in one process, run round-robin), the
ratio to plain sdpa, and the peak resident memory added on top of the loaded model (Linux VmHWM,
reset through /proc/self/clear_refs).
Targets (issue 11): summaries <= 1.15x plain sdpa at 512 tokens, <= 1.20x at 2,048.
`--modes "plain sdpa" summaries --no-memory` measures just those two ratios (plain sdpa is always run:
it is the baseline); `--repeat` is the number of A,B,A,B rounds at 512 tokens and below, half of it
(at least 3) above. The memory of a long trace has its own benchmark: benchmarks/trace_memory.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from _memory import reset_peak, rss_kb

MODES = ("plain sdpa", "plain eager", "summaries", "summaries fused", "all patterns")


def _setup(length: int):
    import torch

    import lmpeek

    torch.manual_seed(0)
    model = lmpeek.load("default", progress=False)
    text = open(__file__.replace("trace_overhead.py", "sample.txt")).read()
    ids = model.tokenizer(text)["input_ids"]
    ids = (ids * (length // len(ids) + 1))[:length]
    return model, ids


def _runner(mode: str, model, ids):
    import torch

    import lmpeek

    if mode.startswith("plain"):
        from transformers import AutoModelForCausalLM

        hf = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32).eval()
        hf.set_attn_implementation(mode.split()[1])
        x = torch.tensor([ids])

        def run():
            with torch.inference_mode():
                return hf(x).logits

        return run
    if mode == "summaries fused":
        from lmpeek.capture import hooks

        def fused():
            hooks.FUSED_ENTROPY = True  # attention entropy from torch's fused kernel, this run only
            try:
                return lmpeek.trace(model, ids)
            finally:
                hooks.FUSED_ENTROPY = False

        return fused
    keep = ["blocks.*.attn.hook_pattern"] if mode == "all patterns" else []
    return lambda: lmpeek.trace(model, ids, keep=keep)


def _child_time(length: int, repeat: int, modes: list[str]) -> None:
    """All modes in one process, run round-robin so that drift in machine speed hits them alike."""
    model, ids = _setup(length)
    runs = {mode: _runner(mode, model, ids) for mode in modes}
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for run in runs.values():
        run()  # warm-up
    for _ in range(repeat):
        for mode, run in runs.items():
            t = time.perf_counter()
            run()
            times[mode].append(time.perf_counter() - t)
    print(json.dumps({mode: statistics.median(ts) for mode, ts in times.items()}))


def _child_memory(mode: str, length: int) -> None:
    """One mode in a fresh process: peak resident memory added by one run on top of the loaded model."""
    model, ids = _setup(length)
    run = _runner(mode, model, ids)
    if mode.startswith("plain"):
        del model
    run()  # warm-up
    base = rss_kb("VmRSS")
    reset_peak()
    run()
    print(json.dumps({"peak_extra_mb": (rss_kb("VmHWM") - base) / 1024}))


def _child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=[m for m in MODES if m != "summaries fused"], choices=MODES)
    ap.add_argument("--no-memory", action="store_true", help="times only (no fresh process per mode)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.child[0] == "time":
            _child_time(int(args.child[1]), int(args.child[2]), args.child[3:])
        else:
            _child_memory(args.child[1], int(args.child[2]))
        return
    modes = [m for m in MODES if m in args.modes or m == "plain sdpa"]
    rows = []
    for length in args.lengths:
        repeat = args.repeat if length <= 512 else max(3, args.repeat // 2)
        times = _child(["time", str(length), str(repeat), *modes])
        base = times["plain sdpa"]
        for mode in modes:
            mb = None if args.no_memory else _child(["memory", mode, str(length)])["peak_extra_mb"]
            rows.append((length, mode, times[mode], times[mode] / base, mb))
            memory = "" if mb is None else f"  +{mb:7.0f} MB"
            print(
                f"{length:>5} {mode:<13} {times[mode]:8.3f} s  {times[mode] / base:5.2f}x{memory}", flush=True
            )
    print("\n| tokens | run | time (s) | × plain sdpa | peak memory over the loaded model |")
    print("|---:|---|---:|---:|---:|")
    for length, mode, s, ratio, mb in rows:
        memory = "–" if mb is None else f"+{mb:.0f} MB"
        print(f"| {length} | {mode} | {s:.3f} | {ratio:.2f}× | {memory} |")


if __name__ == "__main__":
    main()
