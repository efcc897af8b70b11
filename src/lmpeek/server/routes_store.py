"""What the trace store holds: `GET /api/traces` lists stored traces so the page can reopen one (and a
shared link can say whether its trace is still there)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query
from starlette.concurrency import run_in_threadpool

from lmpeek.models.fingerprint import same_model
from lmpeek.server.responses import StoredTrace, typed
from lmpeek.store.traces import TraceStore

PREVIEW_CHARS = 80


def listing(store: TraceStore, loaded: dict[str, Any] | None, limit: int) -> list[dict[str, Any]]:
    """The store's catalogue, newest first, as the page shows it. `loaded`: the running model's
    fingerprint (None while it loads); a trace made by another model is listed with `other_model: true`
    (it cannot be opened here, but the user should see why it is not openable rather than miss it)."""
    out = []
    for row in store.catalogue()[:limit]:
        preview = row.get("preview") or ""
        out.append(
            {
                "id": row["id"],
                "model": row.get("model") or "",
                "created": row.get("created"),
                "n_tokens": row.get("n_tokens"),
                "preview": preview[:PREVIEW_CHARS],
                "truncated": len(preview) > PREVIEW_CHARS,
                "other_model": loaded is not None and not same_model(row.get("fingerprint"), loaded),
            }
        )
    return out


def add_store_routes(app: FastAPI, holder: Any, store: TraceStore) -> None:
    @app.get("/api/traces", **typed(list[StoredTrace]))
    async def list_traces(
        limit: Annotated[int, Query(ge=1, le=1000, description="at most this many, newest first")] = 100,
        model: Annotated[
            str, Query(pattern="^(loaded|all)$", description="'loaded': only the loaded model's traces")
        ] = "all",
    ) -> list[dict[str, Any]]:
        """Stored traces, newest first: id, model name, created (Unix seconds), token count, the first
        80 characters of the text; `other_model` marks traces the loaded model cannot read."""
        loaded = holder.model.fingerprint if holder.model is not None else None
        # the catalogue is SQLite on disk: read off the event loop so health never waits on it
        rows = await run_in_threadpool(listing, store, loaded, limit if model == "all" else 1000)
        if model == "loaded":
            rows = [r for r in rows if not r["other_model"]][:limit]
        return rows
