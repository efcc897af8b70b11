"""The local web app: JSON for summaries, float16 bytes for patterns, server-sent events for generation.

The app object owns all state (the model, its queue, the trace store); `lmpeek serve` is a thin
wrapper. The model is used by one job at a time, on one thread (`lmpeek.worker.ModelWorker`): handlers
submit jobs and await them without holding a thread, so health, static files and cached slices answer
while the model works, a full queue answers 503 with Retry-After, and a client that goes away (Stop, a
closed tab) leaves the queue or has its generation cancelled at once.
"""

from __future__ import annotations

import json
import re
import threading
import traceback
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import AfterValidator, BaseModel, Field
from starlette.concurrency import run_in_threadpool

from lmpeek.errors import LmpeekError
from lmpeek.schema import MEDIA_TYPE
from lmpeek.server import guard, responses
from lmpeek.server.guard import TraceId
from lmpeek.server.sse import SSE_RESPONSES, job_stream
from lmpeek.server.sse import sse as _sse
from lmpeek.session import Session
from lmpeek.store.traces import TraceStore
from lmpeek.worker import ModelWorker

MAX_TEXT_CHARS = 200_000  # far past any context length; refuses pasted novels before tokenising them
MAX_JSON_VALUES = 1_000_000  # arrays larger than this go out as binary only (about 10 MB of JSON)


class ModelHolder:
    """Loads the model in the background, then holds the one `Session` every route asks (over this
    model, its queue and the trace store). `source` None: no model at all (`lmpeek features serve`).
    `on_ready(model)` runs on the loading thread once the model is loaded, before it is `ready`."""

    def __init__(self, source: str, loader=None, max_pending: int = 16, worker: ModelWorker | None = None,
                 store: TraceStore | None = None, session: Session | None = None):  # fmt: skip
        self.source = source
        self.status: Literal["loading", "ready", "error"] = "loading"
        self.message = f"loading {source}…"
        self.model: Any = None
        self.store = store if session is None else session.store
        # one worker per model: a Session's (notebook) and its app's requests share one queue
        if session is not None:
            worker = session.worker
        self.worker = worker if worker is not None else ModelWorker(max_pending=max_pending)
        self._loader = loader
        self._session = session
        self.on_ready: Any = None
        if source is None:
            self.status, self.message = "ready", "no model: serving feature databases only"

    def load(self) -> None:
        try:
            if self._session is not None:
                model = self._session.model
            elif self._loader is not None:
                model = self._loader(self.source)
            else:
                from lmpeek.api import load

                model = load(self.source, progress=False)
            _ = model.fingerprint  # computed here, on the loading thread, not by the first health check
            if self.on_ready is not None:
                self.on_ready(model)
            if self._session is None:
                self._session = Session(model, self.store, worker=self.worker)
            self.model = model
            self.status, self.message = "ready", f"{model.name} ready"
        except Exception as err:  # reported through /api/health; the server keeps running
            self.status = "error"
            self.message = str(err) if isinstance(err, LmpeekError) else f"{type(err).__name__}: {err}"
            # a user's error (e.g. not a causal LM) is its one line, answered 4xx; a bug keeps its traceback
            self.error_status = err.status_code if isinstance(err, LmpeekError) else None
            if self.error_status is None:
                traceback.print_exc()

    def start(self, background: bool = True) -> None:
        if self.source is None:
            return
        if background:
            threading.Thread(target=self.load, name="lmpeek-model-load", daemon=True).start()
        else:
            self.load()

    def ready(self):
        if self.source is None:
            raise HTTPException(
                409,
                detail="no model is loaded: this server (lmpeek features serve) shows feature databases "
                "only; run `lmpeek serve MODEL --features DB` to compute features on your text",
            )
        if self.status == "error" and getattr(self, "error_status", None):  # waiting will not help
            raise HTTPException(self.error_status, detail=f"model could not be loaded: {self.message}")
        if self.status != "ready":
            raise HTTPException(
                503,
                detail=f"model is not ready ({self.status}): {self.message}",
                headers={"Retry-After": "2"},
            )
        return self.model

    def session(self) -> Session:
        """The Session over the loaded model (503 while it loads, as `ready`)."""
        self.ready()
        assert self._session is not None
        return self._session

    async def run(self, fn, request: Request | None = None, kind: str = "job"):
        """Run `fn` on the model's thread without holding a server thread; leaves the queue if the
        client disconnects."""
        return await self.worker.run(fn, kind, request.is_disconnected if request is not None else None)


def _not_blank(value: str) -> str:
    # checked with the other fields, so that one answer lists every problem (text and numbers)
    if value.strip() == "":
        raise ValueError("must not be empty: give some text to run the model on")
    return value


NonBlank = Annotated[str, AfterValidator(_not_blank)]


class TraceRequest(BaseModel):
    text: NonBlank = Field(
        description="Text to run; '<eot>' separates chat turns.", max_length=MAX_TEXT_CHARS
    )
    top_k: int = Field(10, ge=1, le=100, strict=True, description="Alternatives kept per position.")


class GenerateRequest(BaseModel):
    prompt: NonBlank = Field(max_length=MAX_TEXT_CHARS)
    max_new_tokens: int = Field(32, ge=1, le=2048, strict=True)  # strict: `true` is not 1
    temperature: float = Field(0.0, ge=0.0, le=100.0, strict=True, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, strict=True)
    top_k: int = Field(0, ge=0, le=2**31 - 1, strict=True, description="0 = off.")
    seed: int | None = Field(None, ge=-(2**63), lt=2**64, strict=True)  # what torch's generator takes


def _summary(trace_id: str, trace) -> dict[str, Any]:
    return {"id": trace_id, **trace.summary()}


def _step_json(step) -> dict[str, Any]:
    from lmpeek.server.finite import floats, nonfinite_points, number

    return {
        "index": step.index,
        "position": step.position,
        "token": step.token,
        "token_id": step.token_id,
        "token_bytes": step.token_bytes.hex(),  # exact bytes: the page merges byte pieces into characters
        "prob": number(step.prob),
        "topk_tokens": step.topk_tokens,
        "topk_probs": floats(step.topk_probs),
        "topk_ids": step.topk_ids.tolist(),
        "entropy": number(step.entropy),
        # the distribution the token was drawn from (after temperature, top-k, top-p); the topk_* above
        # are the raw temperature-1 prediction
        "sampled_prob": number(step.sampled_prob),
        "sampled_topk_ids": step.sampled_topk_ids.tolist(),
        "sampled_topk_probs": floats(step.sampled_topk_probs),
        "norms": {k: floats(v) for k, v in step.norms.items()},
        "attn_entropy": floats(step.attn_entropy),
        "nonfinite": nonfinite_points(step.norms),  # where the model produced inf/NaN at this step
    }


def _json_bytes(data: Any) -> bytes:
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except ValueError:  # a NaN or inf somewhere: null instead (JSON has neither)
        from lmpeek.server.finite import clean

        return json.dumps(clean(data), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def _static_dir() -> Path | None:
    folder = resources.files("lmpeek").joinpath("static", "app")
    path = Path(str(folder))
    return path if (path / "index.html").is_file() else None


_NOT_BUILT = """<!doctype html><meta charset="utf-8"><title>lmpeek</title>
<p>The lmpeek front end is not built. Run <code>make run</code> (it builds it), or
<code>cd web && npm install && npm run build</code>. The API is described at
<a href="/openapi.json">/openapi.json</a>.</p>"""


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    # stopping (SIGTERM, Ctrl+C): cancel queued and running jobs so open streams end with an error
    # event and the process exits instead of waiting for a generation to finish
    app.state.holder.worker.close(timeout=2.0)
    app.state.features.close()


def create_app(
    source: str | None = "default",
    *,
    background: bool = True,
    loader=None,
    store: TraceStore | None = None,
    store_dir: str | Path | None = None,
    store_budget: str | int | None = None,
    max_pending: int = 16,
    session: Any = None,
    features: Any = (),
    feature_sources: Any = (),
    base_model: Any = None,
    **edge: Any,
):
    """The FastAPI app for one model. `background=False` loads the model before returning. Traces and
    their residual streams go to `store_dir` (default: <lmpeek cache>/traces), within `store_budget`
    bytes or e.g. '4G' (default: $LMPEEK_STORE_BUDGET, else 4 GiB). `edge`: allowed_hosts,
    token, cors_origins, max_body_bytes (see server.guard.install; by default only loopback Host names
    are served, e.g. tests add allowed_hosts=["testserver"]). `max_pending`: model jobs queued or
    running before new ones are refused with 503. `session`: serve this `lmpeek.Session`'s model, queue
    and store (the notebook widget asks the app in-process) instead of loading `source`. `features`:
    feature database files to serve, `feature_sources`: feature source specs (neurons:L, SAE folders)
    computed on the model (server.routes_features). `base_model`: a crosscoder's base model (a source,
    loaded with the same loader, or a loaded model) held beside the served chat model
    (server.routes_crosscoder). `source` None: no model, only the feature databases and the page
    (`lmpeek features serve`); /api/health then says `features_only`."""
    app = FastAPI(
        title="lmpeek",
        summary="See inside a transformer language model while it reads or writes text.",
        version=__import__("lmpeek").__version__,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; /openapi.json stays
        redoc_url=None,
        lifespan=_lifespan,
    )
    guard.install(app, **edge)
    if session is not None:
        source, background, store = session.model.name, False, session.store
    if store is None and source is not None:
        from lmpeek.models.sources import cache_dir

        store = TraceStore(
            Path(store_dir) if store_dir is not None else cache_dir() / "traces", max_disk_bytes=store_budget
        )
    traces = store
    holder = ModelHolder(source, loader, max_pending, store=store, session=session)
    app.state.holder = holder
    app.state.traces = traces
    from lmpeek.features.service import FeatureService  # torch-free until a source is computed
    from lmpeek.server.routes_features import add_feature_routes

    service = FeatureService(features, feature_sources)
    app.state.features = service
    # the given specs load with the model (an SAE is checked on it), a crosscoder with the base model too
    from lmpeek.server.routes_crosscoder import load_base

    holder.on_ready = lambda model: service.attach(model, load_base(base_model, model, loader))

    @app.exception_handler(LmpeekError)
    async def user_error(_request: Request, err: LmpeekError):
        # 400 unless the error says otherwise (409: a trace of another model, 507: the store is full,
        # 503: the model's queue is full)
        retry = getattr(err, "retry_after", None)
        headers = {"Retry-After": str(retry)} if retry is not None else None
        return JSONResponse({"detail": str(err)}, status_code=err.status_code, headers=headers)

    @app.get("/api/health", **responses.typed(responses.Health))
    async def health() -> dict[str, Any]:
        """Model name and shape, whether it is `loading`, `ready` or failed (`error`), and the queue.
        Never waits: it runs on the event loop and reads only plain fields."""
        model = holder.model
        out = {
            "status": holder.status,
            "message": holder.message,
            "model": model.info() if model is not None else None,
            "queue": {"pending": holder.worker.pending(), "limit": holder.worker.max_pending},
        }
        if holder.source is None:  # the page shows only its Features tab
            out["features_only"] = True
        return out

    if source is None:  # lmpeek features serve: the feature routes and the page, nothing that needs a model
        add_feature_routes(app, holder, service)
        _mount_static(app)
        return app

    @app.post(
        "/api/trace",
        responses={
            200: {"model": responses.TraceSummary, "content": {"application/json": {}, MEDIA_TYPE: {}}}
        },
    )
    async def trace_text(req: TraceRequest, request: Request) -> Response:
        """Run the model once on `text`; returns the trace's summaries and its id (as JSON, or as the
        binary envelope with `Accept: application/vnd.lmpeek.trace`, see lmpeek.schema)."""
        session = holder.session()
        stored = await holder.run(lambda: session.trace(req.text, top_k=req.top_k), request, "trace")
        # encoded on a worker thread, not the model's: the next job need not wait for it
        return await run_in_threadpool(_trace_response, stored.id, stored.trace, request)

    @app.get(
        "/api/traces/{trace_id}",
        responses={
            200: {"model": responses.TraceSummary, "content": {"application/json": {}, MEDIA_TYPE: {}}}
        },
    )
    async def get_trace(trace_id: TraceId, request: Request) -> Response:
        """A stored trace's summaries: JSON, or the binary envelope with `Accept:
        application/vnd.lmpeek.trace` (lmpeek.schema; 4.9 MB at 4,096 tokens of the default model
        against 33 MB of JSON, gzipped when the client takes gzip)."""
        # read and encoded on a worker thread: a 4k-token summary is ~32 MB of JSON, which rendered on
        # the event loop would hold up every other request (health included) for a third of a second
        return await run_in_threadpool(
            lambda: _trace_response(trace_id, holder.session().get(trace_id), request)
        )

    def _trace_response(trace_id: str, t, request: Request) -> Response:
        from lmpeek.server.trace_body import trace_body

        h = request.headers
        json_body = lambda: _json_bytes(_summary(trace_id, t))  # noqa: E731
        return trace_body(trace_id, t, h.get("accept"), h.get("accept-encoding"), json_body)

    @app.get(
        "/api/traces/{trace_id}/attention",
        responses={200: {"content": {"application/octet-stream": {}, "application/json": {}}}},
        **responses.typed(responses.Pattern, json_dumps=True),
    )
    def attention(
        request: Request,
        trace_id: TraceId,
        layer: Annotated[int, Query(ge=0)],
        head: Annotated[int, Query(ge=0)],
        query: Annotated[
            int | None, Query(ge=0, description="only this query's row (attention from it)")
        ] = None,
        key: Annotated[
            int | None, Query(ge=0, description="only this key's column (attention to it)")
        ] = None,
        rope: Annotated[
            Literal["full", "applied", "not_applied"],
            Query(description="recompute from the full Q/K, only their rotary part, or only the rest"),
        ] = "full",
    ):
        """One head's attention pattern [T, T], or one row (`query`) or column (`key`) of it.

        float16 little-endian bytes with `Accept: application/octet-stream` (shape in `X-Shape`),
        JSON `{"shape", "data"}` otherwise."""
        pattern = holder.session().attention(trace_id, layer, head, query=query, key=key, rope=rope)
        shape = ",".join(map(str, pattern.shape))
        if "application/octet-stream" in request.headers.get("accept", ""):
            # NaN where the model produced inf/NaN; X-Nonfinite counts them so no client misses it
            bad = int(pattern.size - np.isfinite(pattern).sum())
            return Response(
                pattern.astype("<f2").tobytes(),
                media_type="application/octet-stream",
                headers={"X-Shape": shape, "X-Nonfinite": str(bad),
                         "Access-Control-Expose-Headers": "X-Shape, X-Nonfinite"},
            )  # fmt: skip
        if pattern.size > MAX_JSON_VALUES:
            # as JSON a 4k-token pattern is ~200 MB and takes the server seconds to write
            raise HTTPException(
                422,
                detail=f"a {shape.replace(',', '×')} pattern is too large for JSON ({pattern.size:,} values, "
                f"limit {MAX_JSON_VALUES:,}): send 'Accept: application/octet-stream' for float16 bytes, "
                "or ask for one row (query=) or column (key=)",
            )
        from lmpeek.server.finite import floats

        return {"shape": list(pattern.shape), "data": floats(pattern.astype(np.float32))}

    @app.post(
        "/api/generate",
        response_class=StreamingResponse,
        responses=SSE_RESPONSES,
    )
    async def generate_stream(req: GenerateRequest, request: Request) -> StreamingResponse:
        """Server-sent events: `start` (prompt tokens, the seed used), one `token` per new token, then
        `done` with the id of a trace of the whole text, or `error` with a `detail` (every stream ends
        with one of the two). Closing the connection cancels the generation."""
        session = holder.session()
        sampling = req.model_dump(exclude={"prompt"})
        # validation errors surface as 4xx before the stream starts
        gen = await holder.run(lambda: session.start_generation(req.prompt, **sampling), request, "generate")
        prompt = gen.prompt

        def run() -> Iterator[str]:  # a generator job: one step per turn on the model's thread
            for step, scale in gen:
                yield _sse("token", {**_step_json(step), "attn_entropy_scale": scale.to_json()})
            return _sse("done", {"trace_id": gen.store()})

        # the seed used (drawn when none was given): send it back to repeat the run
        prompt_bytes = [b.hex() for b in prompt.token_bytes]  # the page merges byte pieces
        start = {"prompt_tokens": prompt.tokens, "prompt_token_bytes": prompt_bytes}
        return job_stream(holder, [_sse("start", {**start, "seed": gen.seed})], run, "generate")

    @app.get("/api/components", **responses.typed(list[responses.HookPoint]))
    def list_components() -> list[dict[str, Any]]:
        """The hook points a view can select for this model (`{l}` stands for the layer)."""
        return holder.session().hook_points()

    @app.get(
        "/api/traces/{trace_id}/vector",
        responses={200: {"content": {"application/json": {}, "application/octet-stream": {}}}},
        **responses.typed(responses.Vector, json_dumps=True),
    )
    def vector(
        trace_id: TraceId,
        hook: Annotated[str, Query(pattern=guard.HOOK_PATTERN)],
        token: Annotated[int, Query(ge=0)],
        head: Annotated[int | None, Query(ge=0)] = None,
        format: Literal["json", "npy"] = "json",
    ):
        """One token's vector at a hook point (float32), as JSON or as a .npy file to download."""
        v = holder.session().vector(trace_id, hook, token, head)
        name = f"{hook}{'' if head is None else f'.head{head}'}.token{token}".replace("{", "").replace(
            "}", ""
        )
        if format == "npy":
            import io

            buf = io.BytesIO()
            np.save(buf, v)
            disposition = f'attachment; filename="{re.sub(r"[^A-Za-z0-9_.-]", "_", name)}.npy"'
            return Response(
                buf.getvalue(),
                media_type="application/octet-stream",
                headers={"Content-Disposition": disposition},
            )
        from lmpeek.server.finite import floats

        return {"hook": hook, "head": head, "token": token, "shape": list(v.shape), "data": floats(v)}

    from lmpeek.server.routes_analysis import add_analysis_routes

    add_analysis_routes(app, holder)
    from lmpeek.server.routes_export import add_export_routes

    add_export_routes(app, holder, traces)
    from lmpeek.server.routes_metric import add_metric_routes  # every Explore metric with its colour scale

    add_metric_routes(app, holder)
    from lmpeek.server.routes_store import add_store_routes

    add_store_routes(app, holder, traces)  # GET /api/traces: the stored traces, to reopen one
    from lmpeek.server.routes_attention import add_attention_routes  # the Attention tab's grid and q·k

    add_attention_routes(app)
    from lmpeek.server.routes_flow import add_flow_routes  # the information-flow graph (issue 13)

    add_flow_routes(app)
    add_feature_routes(app, holder, service)  # the Features tab: databases, search, labels, your text
    # the Why tab (issue 13): attributions, prompt ablation, steering, interventions, patching grids, as jobs
    from lmpeek.server.routes_ablation import add_ablation_routes
    from lmpeek.server.routes_intervene import add_intervene_routes
    from lmpeek.server.routes_patching import add_patching_routes
    from lmpeek.server.routes_steering import add_steering_routes
    from lmpeek.server.routes_why import add_why_routes

    for add in (add_why_routes, add_ablation_routes, add_steering_routes, add_intervene_routes,
                add_patching_routes):  # fmt: skip
        add(app, holder)

    @app.get("/api/samples", **responses.typed(list[responses.Sample]))
    def samples() -> list[dict[str, Any]]:
        """The bundled sample texts, and the user's (a folder named by $LMPEEK_SAMPLES)."""
        from lmpeek.samples import library

        return [{"id": s.id, "title": s.title, "kind": s.kind, "chars": len(s.text)} for s in library()]

    @app.get("/api/samples/search", **responses.typed(responses.CorpusSearch))
    def search_samples(
        q: Annotated[str, Query(min_length=1, max_length=200)],
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
        offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    ) -> dict[str, Any]:
        """Documents of the demo corpus matching every word of `q` (prefixes), best first; open one
        with /api/samples/{id}."""
        from lmpeek.samples import corpus

        total, hits = corpus.search(q, limit, offset)
        return {"total": total, "documents": len(corpus.documents()), "items": [vars(h) for h in hits]}

    @app.get("/api/samples/{sample_id}", **responses.typed(responses.SampleText))
    def sample(sample_id: Annotated[str, PathParam(max_length=300)]) -> dict[str, Any]:
        from lmpeek.samples import get

        try:
            s = get(sample_id)
        except KeyError as err:
            raise HTTPException(404, detail=str(err).strip("'\"")) from None
        return {"id": s.id, "title": s.title, "kind": s.kind, "text": s.text}

    _mount_static(app)
    holder.start(background)
    return app


def _mount_static(app: FastAPI) -> None:
    """The built page at /, or a page saying how to build it."""
    static = _static_dir()
    if static is not None:
        app.mount("/", StaticFiles(directory=static, html=True), name="app")
    else:

        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        def not_built() -> str:
            return _NOT_BUILT
