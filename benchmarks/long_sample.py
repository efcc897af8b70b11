"""A 4,096-token sample of the default model through the app's API: trace time, disk, memory, slices.

    .venv/bin/python benchmarks/long_sample.py [--tokens 4096] [--repeat 5]

Runs the FastAPI app in-process (TestClient) with the default model and prints:
  trace        POST /api/trace: one forward with summaries + the residual stream written to disk
  disk         the stored sample: summaries + the residual stream, float32 [L+1, T, D] (the format
               measured against float16 / bfloat16 / scaled float16 in benchmarks/resid_format.py)
  peak memory  resident memory added by the trace request over the loaded model (Linux VmHWM)
  slices       latency of what the page asks for afterwards: an attention row / column of one head
               (cold: that head's Q/K recomputed from one block's stored input; warm: cached), one
               token's vector at a hook point, and the summary JSON; plus their response sizes.
The plain transformers sdpa forward on the same ids is timed too, as the reference: with --repeat N
the plain forward and the HTTP trace run interleaved (plain, trace, plain, trace, ...) and their
medians give the ratio; the cold/warm attention rows then take N fresh layers (cold: the layer's Q/K
not yet computed for that trace; warm: another query of the same head) and report medians.
Targets (issue 11): HTTP trace / plain forward ≤ 1.3×; cold slice ≤ 300 ms, warm ≤ 10 ms.
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
    ap.add_argument("--repeat", type=int, default=1)
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

    def plain_forward() -> None:
        with torch.inference_mode():
            plain(torch.tensor([ids]))

    with torch.inference_mode():
        plain(torch.tensor([ids[:64]]))

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
        envelope = {"accept": "application/vnd.lmpeek.trace"}  # what the page asks for
        c.post("/api/trace", json={"text": "warm up"}, headers=envelope)
        base = rss_kb("VmRSS")
        reset_peak()
        trace_s, r = _timed(lambda: c.post("/api/trace", json={"text": sample}, headers=envelope))
        peak_mb = (rss_kb("VmHWM") - base) / 1024
        newest = c.get("/api/traces").json()[0]["id"]  # the catalogue, newest first
        data = c.get(f"/api/traces/{newest}").json()  # its id and tokens
        plain_times, http_times = [], []
        for _ in range(args.repeat):  # interleaved: drift in the machine's speed hits both alike
            plain_times.append(_timed(plain_forward)[0])
            post = lambda: c.post("/api/trace", json={"text": sample}, headers=envelope)  # noqa: E731
            http_times.append(_timed(post)[0])
        sdpa_s, http_s = statistics.median(plain_times), statistics.median(http_times)
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
        cold, warm = [], []
        for layer in range(min(args.repeat, L)):  # each round a layer not computed yet for this trace
            row = f"{url}/attention?layer={layer}&head=1&query="
            cold.append(_timed(lambda row=row: c.get(f"{row}{T - 1}", headers=binary))[0])
            warm.append(_timed(lambda row=row: c.get(f"{row}{T - 2}", headers=binary))[0])

    print(f"default model, {T} tokens (requested {args.tokens}; text re-tokenised to {n_tokens})")
    print(
        f"plain transformers sdpa forward: {sdpa_s:.2f} s; "
        f"HTTP trace (envelope, stream stored): {http_s:.2f} s "
        f"= {http_s / sdpa_s:.2f}x (medians of {args.repeat}, interleaved; target <= 1.3x)"
    )
    print(
        f"attention row at {T} tokens, medians of {len(cold)} layers: "
        f"cold {statistics.median(cold) * 1000:.0f} ms "
        f"(target <= 300), warm {statistics.median(warm) * 1000:.1f} ms (target <= 10)"
    )
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
