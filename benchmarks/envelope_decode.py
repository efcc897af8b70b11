"""How long the page's main thread is blocked loading a long trace: the envelope against JSON, in Chromium.

    .venv/bin/python benchmarks/envelope_decode.py [--tokens 4096] [--model default] [--repeat 3]

Starts the app as the browser tests do (tests/e2e/conftest.py: the built front end, Debian's
Chromium), stores one trace of the first N tokens of the text benchmarks/envelope_size.py uses, then
opens it in the page (`#view=explore&traces=ID`: GET /api/traces/ID) `--repeat` times as the page asks
for it (the envelope) and as many times made to receive JSON (the request's Accept rewritten). Prints
per load: bytes on the wire, `lmpeek:decode-trace` (traceFromEnvelope: from the bytes to the Trace
object; JSON: none, Response.json() parses it), the long task that holds the decode (JSON: the longest
before the tokens show), every long task (PerformanceObserver 'longtask', > 50 ms) from navigation to
all tokens shown, and the spans' build (`lmpeek:build-spans`, which both paths share).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

OBSERVE = """
window.__longtasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longtasks.push({ start: e.startTime, duration: e.duration });
}).observe({ type: "longtask", buffered: true });
"""

REPORT = """() => {
  const m = (name) =>
    performance.getEntriesByName(name).map((e) => ({ start: e.startTime, duration: e.duration }));
  return { tasks: window.__longtasks, decode: m("lmpeek:decode-trace"), spans: m("lmpeek:build-spans") };
}"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import httpx
    from envelope_size import corpus
    from playwright.sync_api import sync_playwright

    from lmpeek.capture.tokens import tokenize
    from tests.e2e.conftest import ARGS, CHROMIUM, _serve

    store = pathlib.Path(__import__("tempfile").mkdtemp(prefix="lmpeek-envbench-"))
    server, thread, url = _serve(args.model, store)
    try:
        with httpx.Client(base_url=url, timeout=600) as http:
            while (h := http.get("/api/health").json())["status"] == "loading":
                time.sleep(0.5)
            if h["status"] != "ready":
                raise SystemExit(f"the model did not load: {h['message']}")
            model = server.config.app.state.holder.model
            ids = model.tokenizer(corpus())["input_ids"][: args.tokens]
            text = model.tokenizer.decode(ids)
            # as the server tokenizes it (the README's `<eot>` makes a chat: its template adds tokens)
            while len(tokenize(model.tokenizer, text, 10**6).token_ids) > args.tokens:
                ids = ids[:-16]
                text = model.tokenizer.decode(ids)
            t0 = time.perf_counter()
            r = http.post("/api/trace", json={"text": text})
            r.raise_for_status()
            tid, n = r.json()["id"], len(r.json()["tokens"])
            print(f"{h['model']['name']}: {n} tokens traced in {time.perf_counter() - t0:.0f} s; trace {tid}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            rows = {"envelope": [], "json": []}
            for _ in range(args.repeat):
                for form in rows:
                    rows[form].append(_load(browser, url, tid, n, form))
            browser.close()
    finally:
        server.should_exit = True
        thread.join(10)
    head = f"{'form':<9} {'wire bytes':>11} {'decode':>8} {'its task':>9} {'longest':>8}"
    print(f"{head} {'all long tasks':>15} {'spans':>7}")
    for form, runs in rows.items():
        for r in runs:
            times = f"{r['decode']:>6.0f}ms {r['decode_task']:>7.0f}ms {r['longest']:>6.0f}ms"
            print(f"{form:<9} {r['wire']:>11,} {times} {r['tasks']:>15} {r['spans']:>5.0f}ms")
        med = statistics.median(r["decode_task"] for r in runs)
        print(f"{form:<9} median task holding the decode (JSON: longest task): {med:.0f} ms")


def _load(browser, url: str, tid: str, n: int, form: str) -> dict:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.add_init_script(OBSERVE)
    if form == "json":
        page.route(
            "**/api/traces/*",
            lambda route: route.continue_(headers={**route.request.headers, "accept": "application/json"}),
        )
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    try:
        with page.expect_response(f"**/api/traces/{tid}", timeout=180_000) as info:
            page.goto(f"{url}/#view=explore&traces={tid}")
    except Exception as err:
        page.screenshot(path="/tmp/envelope_decode_failed.png")
        raise SystemExit(
            f"the page never asked for the trace; console: {console}; see /tmp/envelope_decode_failed.png"
        ) from err
    resp = info.value
    wire = int(resp.headers.get("content-length") or 0)
    page.get_by_test_id("explore-tokens").get_by_test_id("token").nth(n - 1).wait_for(timeout=120_000)
    page.wait_for_timeout(300)  # let the observer deliver the last task
    rep = page.evaluate(REPORT)
    context.close()
    tasks = rep["tasks"]
    decode = rep["decode"][0] if rep["decode"] else None
    if decode is not None:  # the long task that ran the decode (decode + what ran after it in that task)
        holding = [t for t in tasks if t["start"] <= decode["start"] <= t["start"] + t["duration"]]
        decode_task = max((t["duration"] for t in holding), default=decode["duration"])
    else:
        decode_task = max((t["duration"] for t in tasks), default=0.0)
    return {
        "wire": wire,
        "decode": decode["duration"] if decode else 0.0,
        "decode_task": decode_task,
        "longest": max((t["duration"] for t in tasks), default=0.0),
        "tasks": "+".join(f"{t['duration']:.0f}" for t in tasks) or "-",
        "spans": rep["spans"][-1]["duration"] if rep["spans"] else 0.0,
    }


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # the server's model thread is a daemon; skip interpreter teardown (torch aborts in it)
