"""Generation speed: lmpeek.generate with per-step internals against transformers' model.generate.

    .venv/bin/python benchmarks/generate_speed.py [--new 64 256] [--repeat 5] [--model default] [--threads N]

Greedy decoding of the same prompt, the same number of new tokens (no early stop), in one process,
interleaved round-robin (plain, steps, steps+record, plain, …), median wall time per mode:
  plain         model.generate(do_sample=False) on the untouched model (sdpa attention, KV cache)
  steps         lmpeek.generate: each step's top-k, entropy, norms [5 L] and attention entropy [L, H]
  steps+record  the same, also collecting the stored trace of the whole text from the same forwards
                (what `lmpeek serve` and the notebook do: capture.generation_record)
Prints tokens/s and the ratio to plain (higher is better). Target (issue 11): ≥ 0.95× at 64 and 256.
--threads 1 is steadier on a shared machine: with torch's default threads, another process on one of
the cores stalls every parallel op of every mode (whole runs 5-10x slower and the ratios scatter).
"""

from __future__ import annotations

import argparse
import statistics
import time

PROMPT = "The history of the city begins in the early middle ages, when"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    import lmpeek
    from lmpeek.capture.generate import generate

    torch.manual_seed(0)
    model = lmpeek.load(args.model, progress=False)
    ids = torch.tensor([model.tokenizer(PROMPT)["input_ids"]])

    def plain(n: int) -> None:
        model.hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    def steps(n: int, record: bool = False) -> None:
        gen = generate(model, PROMPT, max_new_tokens=n, stop_at_eos=False, record=record)
        for _ in gen:
            pass
        if record:
            gen.record.result()

    modes = {"plain": plain, "steps": steps, "steps+record": lambda n: steps(n, True)}
    for n in args.new:
        for fn in modes.values():  # warm up: first-call costs are not the steady state
            fn(min(n, 8))
        times: dict[str, list[float]] = {m: [] for m in modes}
        cpu: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.repeat):
            for name, fn in modes.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn(n)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        base, base_cpu = statistics.median(times["plain"]), statistics.median(cpu["plain"])
        print(f"{n} new tokens ({args.repeat} rounds, medians, {torch.get_num_threads()} threads):")
        for name, ts in times.items():
            med, med_cpu = statistics.median(ts), statistics.median(cpu[name])
            # CPU time: what the process itself spent, less sensitive to other processes on the machine
            print(
                f"  {name:13s} {n / med:7.1f} tokens/s   {base / med:5.2f}x plain"
                f"   (CPU time {base_cpu / med_cpu:5.2f}x)"
            )


if __name__ == "__main__":
    main()
