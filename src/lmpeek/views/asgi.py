"""Requests to the lmpeek app without a network: the notebook widget and the HTML exporter ask the same
FastAPI routes the web page asks, in-process, so every number they show comes from one code path.

`request()` drives the ASGI app directly (the app is a plain ASGI callable: no sockets, no HTTP
client), yielding the response's status, headers and body chunks as they come, so a server-sent
event stream (generation) reaches the widget event by event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class Head:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


async def request(
    app: Callable[..., Any],
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    disconnected: asyncio.Event | None = None,
) -> AsyncIterator[Head | bytes]:
    """Yields the response head once, then each body chunk. `disconnected`, when set, tells the app
    the client went away (a closed widget, Stop): a streaming route then cancels its job."""
    parts = urlsplit(url)
    hdrs = {"host": "127.0.0.1", **{k.lower(): v for k, v in (headers or {}).items()}}
    if body:
        hdrs["content-length"] = str(len(body))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": unquote(parts.path),  # decoded, as a server gives it ("neurons%3A3" is "neurons:3")
        "raw_path": parts.path.encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in hdrs.items()],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    out: asyncio.Queue[Head | bytes | None] = asyncio.Queue()
    sent_body = False
    gone = disconnected or asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            pairs = message.get("headers", [])
            head = {k.decode("latin-1"): v.decode("latin-1") for k, v in pairs}
            await out.put(Head(message["status"], head))
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                await out.put(bytes(chunk))
            if not message.get("more_body", False):
                await out.put(None)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await out.put(None)

    task = asyncio.ensure_future(run())
    try:
        while True:
            item = await out.get()
            if item is None:
                break
            yield item
    finally:
        gone.set()
        if not task.done():
            try:
                await asyncio.wait_for(task, timeout=5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the caller already has its answer
                task.cancel()
        elif task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def fetch(app: Callable[..., Any], method: str, url: str, headers: dict[str, str] | None = None,
                body: bytes = b"") -> tuple[Head, bytes]:  # fmt: skip
    """The whole response: (head, body)."""
    head: Head | None = None
    chunks: list[bytes] = []
    async for item in request(app, method, url, headers, body):
        if isinstance(item, Head):
            head = item
        else:
            chunks.append(item)
    if head is None:
        raise RuntimeError(f"{method} {url}: the app sent no response")
    return head, b"".join(chunks)


def fetch_sync(app: Callable[..., Any], method: str, url: str, headers: dict[str, str] | None = None,
               body: bytes = b"") -> tuple[Head, bytes]:  # fmt: skip
    """`fetch` from synchronous code (the exporter, the CLI), in a fresh event loop; on another thread
    when this one already runs a loop (a notebook cell: the kernel's loop; Playwright's sync API)."""

    def run() -> tuple[Head, bytes]:
        return asyncio.run(fetch(app, method, url, headers, body))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="lmpeek-export") as pool:
        return pool.submit(run).result()
