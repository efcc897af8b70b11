"""Batched capture against a plain batched forward on the default model.

    .venv/bin/python benchmarks/batched_capture.py [--batch 8] [--tokens 512] [--repeat 3]
        [--hooks "blocks.*.hook_resid_post" …]

BATCH texts of mixed lengths (TOKENS/2 .. TOKENS tokens, padded to the longest), interleaved
round-robin in one process, median wall time per mode:
  plain     model.hf(input_ids, attention_mask) on the untouched model (sdpa attention), no hooks
  capture   lmpeek.capture.activations(model, ids, hooks, batch_size=BATCH): the same forward with the
            hook points copied out per text (float32 numpy)
Prints tokens/s (real tokens, not padding) and the ratio capture/plain. Target (issue 11): ≥ 0.9×.
"""

from __future__ import annotations

import argparse

from _batches import interleaved, padded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hooks", nargs="+", default=["blocks.*.hook_resid_post"])
    args = ap.parse_args()

    import torch

    import lmpeek
    from lmpeek.capture.batched import activations

    torch.manual_seed(0)
    model = lmpeek.load("default", progress=False)
    V = model.hf.config.vocab_size
    lengths = [args.tokens // 2 + (args.tokens // 2) * i // max(1, args.batch - 1) for i in range(args.batch)]
    seqs = [torch.randint(100, V, (n,)).tolist() for n in lengths]
    ids, mask = padded(seqs)

    @torch.inference_mode()
    def plain() -> None:
        model.hf(input_ids=ids, attention_mask=mask, use_cache=False)

    def capture() -> None:
        activations(model, seqs, args.hooks, batch_size=args.batch)

    medians = interleaved({"plain": plain, "capture": capture}, args.repeat)
    n = sum(lengths)
    base = medians["plain"]
    print(f"{args.batch} texts, {min(lengths)}..{max(lengths)} tokens ({n} real), hooks {args.hooks}, "
          f"{args.repeat} rounds, medians:")  # fmt: skip
    for name, med in medians.items():
        print(f"  {name:8s} {n / med:8.0f} tokens/s   {base / med:5.2f}x plain")


if __name__ == "__main__":
    main()
