"""A 4,096-token sample of the default model through the app's API: trace time, disk, memory, slices.

    .venv/bin/python benchmarks/long_sample.py [--tokens 4096]

Runs the FastAPI app in-process (TestClient) with the default model and prints:
  trace        POST /api/trace: one forward with summaries + the residual stream written to disk
  disk         the stored sample: summaries + the residual stream, float32 [L+1, T, D] (the format
               measured against float16 / bfloat16 / scaled float16 in benchmarks/resid_format.py)
  peak memory  resident memory added by the trace request over the loaded model (Linux VmHWM)
  slices       latency of what the page asks for afterwards: an attention row / column of one head
               (cold: that head's Q/K recomputed from one block's stored input; warm: cached), one
               token's vector at a hook point, and the summary JSON; plus their response sizes.
The plain transformers sdpa forward on the same ids is timed too, as the reference.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

from _memory import reset_peak, rss_kb


def _timed(fn, repeat: int = 1):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    args = ap.parse_args()

    import torch
    from fastapi.testclient import TestClient

    import lmpeek
    from lmpeek.server.app import create_app

    model = lmpeek.load("default", progress=False)
    text = (pathlib.Path(__file__).parent / "sample.txt").read_text()
    ids = model.tokenizer(text)["input_ids"]
    ids = (ids * (args.tokens // len(ids) + 1))[: args.tokens]
    sample = model.tokenizer.decode(ids)
    n_tokens = len(model.tokenizer(sample)["input_ids"])

    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        plain(torch.tensor([ids[:64]]))
        t0 = time.perf_counter()
        plain(torch.tensor([ids]))
        sdpa_s = time.perf_counter() - t0
    del plain

    rows = []
    with (
        tempfile.TemporaryDirectory() as store,
        TestClient(
            create_app(
                "default",
                loader=lambda _src: model,
                background=False,
                store_dir=store,
                allowed_hosts=["testserver"],
            )
        ) as c,
    ):
        c.post("/api/trace", json={"text": "warm up"})
        base = rss_kb("VmRSS")
        reset_peak()
        trace_s, r = _timed(lambda: c.post("/api/trace", json={"text": sample}))
        peak_mb = (rss_kb("VmHWM") - base) / 1024
        data = r.json()
        tid, T = data["id"], len(data["tokens"])
        folder = pathlib.Path(store) / tid
        disk = sum(p.stat().st_size for p in folder.iterdir())
        resid_disk = (folder / "resid.safetensors").stat().st_size
        rows.append(("trace (POST /api/trace)", trace_s, len(r.content)))
        url = f"/api/traces/{tid}"
        binary = {"accept": "application/octet-stream"}
        L = model.n_layers
        slices = [
            (
                "attention row, new head (cold)",
                f"{url}/attention?layer={L // 2}&head=3&query={T - 1}",
                binary,
            ),
            (
                "attention row, same head (warm)",
                f"{url}/attention?layer={L // 2}&head=3&query={T // 2}",
                binary,
            ),
            ("attention column, same head", f"{url}/attention?layer={L // 2}&head=3&key=10", binary),
            ("attention row, another layer", f"{url}/attention?layer={L - 1}&head=0&query={T - 1}", binary),
            (
                "vector, resid_post (cold block)",
                f"{url}/vector?hook=blocks.{L // 3}.hook_resid_post&token=5",
                {},
            ),
            ("vector, same hook (warm)", f"{url}/vector?hook=blocks.{L // 3}.hook_resid_post&token=6", {}),
            ("summary JSON (GET trace)", url, {}),
        ]
        for name, path, headers in slices:
            s, resp = _timed(lambda path=path, headers=headers: c.get(path, headers=headers))
            assert resp.status_code == 200, resp.text
            rows.append((name, s, len(resp.content)))

    print(f"default model, {T} tokens (requested {args.tokens}; text re-tokenised to {n_tokens})")
    print(f"plain transformers sdpa forward: {sdpa_s:.2f} s")
    print(
        f"disk per sample: {disk / 2**20:.0f} MiB (residual stream, float32: {resid_disk / 2**20:.0f} MiB); "
        f"peak memory of the trace request: +{peak_mb:.0f} MB\n"
    )
    print("| request | time | response |")
    print("|---|---:|---:|")
    for name, s, size in rows:
        print(f"| {name} | {s * 1000:.0f} ms | {size / 1024:.0f} kB |")


if __name__ == "__main__":
    main()
