"""Many clients at once against `lmpeek serve` on loopback: errors, latency, health, memory.

    .venv/bin/python benchmarks/load.py [--model default] [--clients 50] [--seconds 120]
    .venv/bin/python benchmarks/load.py --sequential 40      # memory after N ~1,000-token traces in a row

Starts `lmpeek serve MODEL` as a child process on a free loopback port (its own empty trace store), then
runs CLIENTS concurrent clients for SECONDS, each looping over a mix of requests:
  trace-short   POST /api/trace, a sentence
  trace-long    POST /api/trace, ~1,000 tokens
  generate      POST /api/generate, 32 tokens, read to the end (or cut off after 3 tokens, 1 in 4 times:
                an abandoned stream, as when a user presses Stop or closes the tab); its latency is the
                time to the first token (the answer), and `generate-all` the time to the last event
  slice         GET an attention row / a vector / a stored summary of a trace made earlier
while a probe calls GET /api/health every 100 ms throughout. Then waits for the server to go idle and
reads its memory again.

Targets (issue 8): no 5xx other than 503 (a full queue, with Retry-After); health p95 < 100 ms; every
request answered or refused within 60 s; the server's RSS after the burst within 300 MB of before.
Every request has a 60 s client timeout; a timeout counts as a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

import httpx
import psutil

SHORT = "The capital of France is Paris, and the capital of Italy is"
LONG = " ".join(
    "In the morning the market opened early and traders watched the screens while the coffee went cold."
    .split() * 55
)  # ~1,000 tokens  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


async def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"lmpeek serve exited with {proc.returncode}")
            try:
                h = (await c.get(f"{url}/api/health")).json()
                if h["status"] == "ready":
                    return
                if h["status"] == "error":
                    raise SystemExit(h["message"])
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.5)
    raise SystemExit("the server did not get ready")


class Stats:
    def __init__(self) -> None:
        self.status: dict[str, Counter] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.failures: list[str] = []
        self.trace_ids: list[str] = []

    def record(self, kind: str, status: int | str, seconds: float) -> None:
        self.status[kind][status] += 1
        self.latency[kind].append(seconds)
        if (
            status == "timeout"
            or status == "broken"
            or (isinstance(status, int) and status >= 500 and status != 503)
        ):
            self.failures.append(f"{kind}: {status}")


async def _client(c: httpx.AsyncClient, url: str, stats: Stats, stop: float, rng: random.Random) -> None:
    while time.monotonic() < stop:
        kind = rng.choices(["trace-short", "trace-long", "generate", "slice"], [3, 1, 2, 4])[0]
        if kind == "slice" and not stats.trace_ids:
            kind = "trace-short"
        t0 = time.monotonic()
        try:
            if kind.startswith("trace"):
                r = await c.post(f"{url}/api/trace", json={"text": SHORT if kind == "trace-short" else LONG})
                if r.status_code == 200:
                    stats.trace_ids.append(r.json()["id"])
                status = r.status_code
            elif kind == "generate":
                status, first, total = await _generate(c, url, abandon=rng.random() < 0.25)
                if first is not None:
                    stats.latency["generate-all"].append(total)
                    t0 = time.monotonic() - first  # the answer is the first token
            else:
                status = await _slice(c, url, rng.choice(stats.trace_ids[-20:]), rng)
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.TransportError as err:
            status = f"transport {type(err).__name__}"
            stats.failures.append(f"{kind}: {status}")
        stats.record(kind, status, time.monotonic() - t0)
        if status == 503:
            await asyncio.sleep(rng.uniform(0.5, 2.0))  # what Retry-After asks for, roughly


async def _generate(c: httpx.AsyncClient, url: str, abandon: bool) -> tuple[int | str, float | None, float]:
    """(status, seconds to the first token or error, seconds to the last event)."""
    body = {"prompt": "Once upon a time", "max_new_tokens": 32, "temperature": 0.8, "seed": 1}
    t0 = time.monotonic()
    async with c.stream("POST", f"{url}/api/generate", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return r.status_code, None, time.monotonic() - t0
        tokens, last, first = 0, None, None
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                last = line[7:]
                tokens += last == "token"
                if first is None and last in ("token", "error", "done"):
                    first = time.monotonic() - t0
                if abandon and tokens >= 3:
                    return 200, first, time.monotonic() - t0  # closing here is the abandoned generation
        status = 200 if last in ("done", "error") else "broken"
        return status, first, time.monotonic() - t0


async def _slice(c: httpx.AsyncClient, url: str, trace_id: str, rng: random.Random) -> int:
    which = rng.choice(["row", "vector", "summary"])
    if which == "summary":
        r = await c.get(f"{url}/api/traces/{trace_id}")
    elif which == "row":
        r = await c.get(
            f"{url}/api/traces/{trace_id}/attention",
            params={"layer": rng.randrange(2), "head": 0, "query": 0},
            headers={"Accept": "application/octet-stream"},
        )
    else:
        r = await c.get(
            f"{url}/api/traces/{trace_id}/vector",
            params={"hook": f"blocks.{rng.randrange(2)}.hook_resid_post", "token": 0},
        )
    return 404 if r.status_code == 404 else r.status_code  # an evicted trace is a fair 404


async def _probe(c: httpx.AsyncClient, url: str, stop: float, out: list[float], bad: list[str]) -> None:
    while time.monotonic() < stop:
        t0 = time.monotonic()
        try:
            r = await c.get(f"{url}/api/health", timeout=10)
            if r.status_code != 200:
                bad.append(f"health {r.status_code}")
        except httpx.HTTPError as err:
            bad.append(f"health {type(err).__name__}")
        out.append(time.monotonic() - t0)
        await asyncio.sleep(0.1)


async def _idle(url: str, timeout: float = 120) -> None:
    async with httpx.AsyncClient(timeout=5) as c:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await c.get(f"{url}/api/health")).json()["queue"]["pending"] == 0:
                return
            await asyncio.sleep(0.5)


async def run(args) -> int:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    store = tempfile.mkdtemp(prefix="lmpeek-load-")
    env = dict(os.environ, LMPEEK_CACHE=os.environ.get("LMPEEK_CACHE", ""), PYTHONUNBUFFERED="1")
    if not env["LMPEEK_CACHE"]:
        del env["LMPEEK_CACHE"]
    cmd = [sys.executable, "-m", "lmpeek.cli", "serve", args.model, "--port", str(port), "--store-dir", store]
    proc = subprocess.Popen(cmd, env=env)
    try:
        await _wait_ready(url, proc)
        server = psutil.Process(proc.pid)
        async with httpx.AsyncClient(timeout=60) as c:  # warm up: first touches load code paths
            for _ in range(2):
                await c.post(f"{url}/api/trace", json={"text": LONG})
        await _idle(url)
        rss_before = server.memory_info().rss
        if args.sequential:
            return await _sequential(url, server, rss_before, args.sequential)
        stats, health, bad = Stats(), [], []
        stop = time.monotonic() + args.seconds
        peak = rss_before
        limits = httpx.Limits(max_connections=args.clients + 5)
        async with httpx.AsyncClient(timeout=60, limits=limits) as c:
            rngs = [random.Random(i) for i in range(args.clients)]
            tasks = [asyncio.create_task(_client(c, url, stats, stop, rng)) for rng in rngs]
            probe = asyncio.create_task(_probe(c, url, stop, health, bad))
            while not all(t.done() for t in tasks):
                peak = max(peak, server.memory_info().rss)
                await asyncio.sleep(0.5)
            await asyncio.gather(*tasks, probe)
        await _idle(url)
        await asyncio.sleep(3)
        rss_after = server.memory_info().rss
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            print("lmpeek serve did not stop on SIGTERM within 30 s")

    print(f"model {args.model} · {args.clients} clients · {args.seconds} s")
    print(f"{'request':<12} {'n':>5} {'p50 s':>7} {'p95 s':>7} {'max s':>7}  statuses")
    for kind in sorted(stats.latency):
        lat = stats.latency[kind]
        codes = ", ".join(f"{k}×{v}" for k, v in sorted(stats.status[kind].items(), key=str))
        p50, p95 = _pct(lat, 0.5), _pct(lat, 0.95)
        print(f"{kind:<12} {len(lat):>5} {p50:>7.2f} {p95:>7.2f} {max(lat):>7.2f}  {codes}")
    hp95 = _pct(health, 0.95) * 1000
    print(f"health       {len(health):>5} p50 {_pct(health, .5) * 1000:.1f} ms · p95 {hp95:.1f} ms · "
          f"max {max(health) * 1000:.1f} ms · failures {len(bad)}")  # fmt: skip
    mb = 1 / 2**20
    before, top, after = rss_before * mb, peak * mb, rss_after * mb
    print(f"server RSS   before {before:.0f} MB · peak {top:.0f} MB · after {after:.0f} MB")
    slowest = max((max(v) for k, v in stats.latency.items() if k != "generate-all"), default=0)
    checks = {
        "no 5xx other than 503, no broken streams, no timeouts": not stats.failures,
        "health p95 < 100 ms, never failed": hp95 < 100 and not bad,
        "every request answered or refused within 60 s": slowest < 60,
        "RSS after within 300 MB of before": rss_after - rss_before < 300 * 2**20,
    }
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if stats.failures:
        print("failures:", Counter(stats.failures).most_common(10))
    return 0 if all(checks.values()) else 1


async def _sequential(url: str, server: psutil.Process, rss_before: int, n: int) -> int:
    mb = 1 / 2**20
    print(f"server RSS before: {rss_before * mb:.0f} MB")
    async with httpx.AsyncClient(timeout=300) as c:
        for i in range(1, n + 1):
            r = await c.post(f"{url}/api/trace", json={"text": LONG})
            r.raise_for_status()
            if i % 10 == 0 or i == n:
                tokens, rss = len(r.json()["tokens"]), server.memory_info().rss * mb
                print(f"after {i:>3} traces of {tokens} tokens: {rss:.0f} MB")
    grew = (server.memory_info().rss - rss_before) * mb
    ok = grew < 300
    print(f"{'PASS' if ok else 'FAIL'}  RSS grew {grew:.0f} MB over {n} traces (target < 300 MB)")
    return 0 if ok else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--sequential", type=int, default=0, help="instead: N long traces one after another")
    sys.exit(asyncio.run(run(ap.parse_args())))


if __name__ == "__main__":
    main()
