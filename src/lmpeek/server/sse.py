"""Server-sent event streams of model jobs: the generate stream and every long job (attribution,
prompt ablation, patching grids, steering sweeps) go through `job_stream`, so each stream ends with
exactly one `end`-kind event or an `error` {detail}, and closing the connection cancels the job.

`long_run_stream` is the shape every long job shares (session.LongRun): `estimate` {forwards,
seconds, cached} first, `progress` {done, total} while it runs, then `result` (the caller's JSON of
`run.result`) or `error`.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi.responses import StreamingResponse

from lmpeek.errors import LmpeekError

SSE_RESPONSES = {200: {"content": {"text/event-stream": {}}}}  # for a route's OpenAPI entry


def sse(event: str, data: Any) -> str:
    # one event per frame; json.dumps never emits raw newlines, so `data:` stays one line
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False, allow_nan=False)}\n\n"


def error_text(err: BaseException) -> str:
    """What a stream's `error` event says: the message of an error lmpeek raised on purpose, else
    the exception's type and message (the traceback goes to the server log)."""
    if isinstance(err, LmpeekError):
        return str(err)
    traceback.print_exception(err)
    return f"internal error: {type(err).__name__}: {err}"


def job_stream(
    holder: Any, first: list[str], steps: Callable[[], Iterator[str]], kind: str
) -> StreamingResponse:
    """Stream `first` (events known before the job runs), then the frames `steps()` yields as a
    generator job on the model's queue (admitted already: the caller's `holder.run` waited its turn),
    its returned frame last. A failure becomes an `error` event; leaving early cancels the job."""
    job, sink = holder.worker.stream(steps, kind, follow_up=True)

    async def events() -> AsyncIterator[str]:
        try:
            for frame in first:
                yield frame
            while True:
                got, item = await sink.get()
                if got == "error":
                    yield sse("error", {"detail": error_text(item)})
                    return
                yield item
                if got == "end":
                    return
        finally:  # the client went away (Stop, Cancel, reload, closed tab) or the stream ended
            job.cancel("the client closed the stream")

    return StreamingResponse(events(), media_type="text/event-stream")


def long_run_stream(holder: Any, run: Any, kind: str, result_json: Callable[[Any], Any]) -> StreamingResponse:
    """A session.LongRun as `estimate`, `progress`…, `result` | `error`."""
    est = run.estimate

    def steps() -> Iterator[str]:  # on the model's thread, in turns
        for done, total in run:
            yield sse("progress", {"done": int(done), "total": int(total)})
        return sse("result", result_json(run.result))

    first = [sse("estimate", {"forwards": est.forwards, "seconds": est.seconds, "cached": est.cached})]
    return job_stream(holder, first, steps, kind)
