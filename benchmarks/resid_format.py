"""How to store the residual stream: recompute error, size and speed of each candidate format.

    .venv/bin/python benchmarks/resid_format.py [--tokens 512 4096] [--model default]

A stored trace keeps the residual stream resid [L+1, T, D]; every other hook point of block l is
recomputed by running that block alone on resid[l] (capture.slices.run_block). This script runs the
model once in float32, stores the stream in each candidate format, and for every block compares each
hook point recomputed from the decoded stream with the same block run on the exact float32 stream
(which equals the full forward to float rounding, see tests/capture/test_slices.py):

  err (array)   max over blocks and hook points of max|got - ref| / max|ref| over the whole [T, ...] array
  err (token)   the same per token (what one `vector` request shows), worst token; tokens whose reference
                is all zeros are skipped
  size          bytes of the stored stream; read: one layer's slice read from disk and decoded (median)

Candidates: float32; bfloat16 (8-bit mantissa); float16 (today's, overflows past 65,504); float16 with a
power-of-two scale per row (layer, token) stored beside it in float32. The attention pattern is compared
at up to 1,024 tokens (at 4k tokens a layer's pattern is 600 MB in float32).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

import numpy as np


def _f16_rowscale(x: np.ndarray) -> tuple[dict[str, np.ndarray], callable]:
    peak = np.abs(x).max(-1, keepdims=True)
    # a power of two, so scaling is exact: the row's largest value lands in [2^14, 2^15)
    exp = np.where(peak > 0, np.floor(np.log2(np.maximum(peak, 1e-30))) - 14, 0)
    scale = np.exp2(exp).astype(np.float32)
    return {"resid": (x / scale).astype(np.float16), "scale": scale}


def encode(fmt: str, x: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    if fmt == "float32":
        return {"resid": x.astype(np.float32)}
    if fmt == "float16":
        with np.errstate(over="ignore"):
            return {"resid": x.astype(np.float16)}
    if fmt == "bfloat16":  # numpy has no bfloat16: keep the bit pattern as uint16
        return {"resid": torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)}
    if fmt == "float16+rowscale":
        return _f16_rowscale(x)
    raise ValueError(fmt)


def decode_layer(fmt: str, f, layer: int) -> np.ndarray:
    import torch

    row = f.get_slice("resid")[layer]
    if fmt == "bfloat16":
        return torch.from_numpy(row.view(np.int16)).view(torch.bfloat16).float().numpy()
    if fmt == "float16+rowscale":
        return row.astype(np.float32) * f.get_slice("scale")[layer]
    return row.astype(np.float32)


FORMATS = ("float32", "bfloat16", "float16", "float16+rowscale")


def _rel(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(got.astype(np.float64) - ref)
        whole = float(diff.max() / np.abs(ref).max())
        t = ref.shape[0]
        peak = np.abs(ref).reshape(t, -1).max(1)
        ok = peak > 0
        per_token = float((diff.reshape(t, -1).max(1)[ok] / peak[ok]).max())
    return (whole if np.isfinite(whole) else float("inf")), (
        per_token if np.isfinite(per_token) else float("inf")
    )


def measure(model, ids: list[int], folder: pathlib.Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from lmpeek.capture.slices import run_block
    from lmpeek.capture.trace import resid_names, trace

    T, L = len(ids), model.n_layers
    names = resid_names(model)
    t0 = time.perf_counter()
    full = trace(model, ids, keep=names)
    forward_s = time.perf_counter() - t0
    resid = np.stack([full.tensors.pop(n) for n in names])
    print(f"\n### {model.name}, {T} tokens (float32 traced forward with the stream: {forward_s:.1f} s)")
    print(f"max |resid| = {np.abs(resid).max():.4g} (float16 max 65,504)\n")
    points = [p for p in model.bound.block_points() if p != "attn.hook_pattern" or T <= 1024]

    files = {}
    for fmt in FORMATS:
        path = folder / f"{fmt}.safetensors"
        t0 = time.perf_counter()
        save_file(encode(fmt, resid), str(path))
        files[fmt] = (path, time.perf_counter() - t0)

    ref_blocks = {}
    block_s = []
    for layer in range(L):
        t0 = time.perf_counter()
        ref_blocks[layer] = run_block(model, layer, resid[layer], points)
        block_s.append(time.perf_counter() - t0)

    print("| format | size | write | read 1 layer | err (array) | err (token) | worst hook point |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for fmt in FORMATS:
        path, write_s = files[fmt]
        reads, worst = [], (0.0, 0.0, "")
        with safe_open(str(path), framework="numpy") as f:
            for layer in range(L + 1):
                t0 = time.perf_counter()
                x = decode_layer(fmt, f, layer)
                reads.append(time.perf_counter() - t0)
                if layer == L:  # the last block's output: read directly (ln_final, logit lens)
                    got = {"hook_resid_post(final)": x}
                    ref = {"hook_resid_post(final)": resid[L]}
                else:
                    got = run_block(model, layer, x, points)
                    ref = ref_blocks[layer]
                for p in ref:
                    whole, tok = _rel(got[p], ref[p])
                    name = f"blocks.{layer}.{p}" if tok > worst[1] else worst[2]
                    worst = (max(whole, worst[0]), max(tok, worst[1]), name)
        size = path.stat().st_size
        print(
            f"| {fmt} | {size / 2**20:.1f} MiB | {write_s * 1000:.0f} ms | "
            f"{statistics.median(reads) * 1000:.1f} ms | {worst[0]:.2e} | {worst[1]:.2e} | {worst[2]} |"
        )
    print(f"\nrecomputing one block (all its hook points): median {statistics.median(block_s) * 1000:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 4096])
    ap.add_argument("--model", default="default")
    args = ap.parse_args()

    import lmpeek

    model = lmpeek.load(args.model, progress=False)
    text = (pathlib.Path(__file__).parent / "sample.txt").read_text()
    base = model.tokenizer(text)["input_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.tokens:
            ids = (base * (n // len(base) + 1))[:n]
            measure(model, ids, pathlib.Path(tmp))


if __name__ == "__main__":
    main()
