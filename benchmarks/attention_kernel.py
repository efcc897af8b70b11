"""The blocked attention kernel (output + each query's entropy) against torch's fused flash attention.

    .venv/bin/python benchmarks/attention_kernel.py [--lengths 512 2048 4096] [--blocks 32 64 128]
        [--threads N] [--repeat 7]

One layer of the default model's shape (9 query heads, 3 KV heads, head size 64), random inputs,
interleaved round-robin in one process, median wall time per case:
  flash       torch's CPU flash attention (what a plain sdpa forward runs; no entropy)
  blocked B   capture.attention_kernel.causal_attention with B queries per block (output and entropy)
Prints milliseconds and the ratio to flash: the kernel's share of a trace's overhead (30 layers).
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 4096])
    ap.add_argument("--blocks", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()

    import torch

    from lmpeek.capture.attention_kernel import causal_attention

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    for T in args.lengths:
        q, k, v = torch.randn(1, 9, T, 64) * 2, torch.randn(1, 3, T, 64), torch.randn(1, 3, T, 64)
        kr, vr = k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)
        cases = {"flash": lambda q=q, kr=kr, vr=vr: flash(q, kr, vr, is_causal=True, scale=0.125)}
        for b in args.blocks:
            cases[f"blocked {b}"] = lambda b=b, q=q, k=k, v=v: causal_attention(q, k, v, None, 0.125, block=b)
        times: dict[str, list[float]] = {c: [] for c in cases}
        with torch.inference_mode():
            for fn in cases.values():
                fn()  # warm up
            for _ in range(args.repeat):
                for name, fn in cases.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["flash"])
        print(f"{T} tokens ({torch.get_num_threads()} threads, medians of {args.repeat}):")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:11s} {med * 1000:8.1f} ms   {med / base:5.2f}x flash")


if __name__ == "__main__":
    main()
