"""GET /api/traces/{id}/export: the app's Export button. The same self-contained HTML file as
`lmpeek export` (lmpeek.views.export), recorded from this app's own routes, in-process."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import Response

from lmpeek.server.guard import TraceId


def add_export_routes(app: FastAPI, holder, traces) -> None:
    @app.get("/api/traces/{trace_id}/export", responses={200: {"content": {"text/html": {}}}})
    def export(
        trace_id: TraceId,
        include: Annotated[
            str,
            Query(
                max_length=300,
                pattern=r"^((attention=\d{1,4}:\d{1,4}|lens)(,(attention=\d{1,4}:\d{1,4}|lens))*)?$",
                description="attention=LAYER:HEAD (comma-separated, repeatable), lens",
            ),
        ] = "",
    ) -> Response:
        """One HTML file of the Explore view of this trace that opens offline (see `lmpeek export`)."""
        from lmpeek.views.export import export_html

        page = export_html(holder.session(), trace_id, include, app=app)
        return Response(
            page,
            media_type="text/html; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="lmpeek-{trace_id}.html"'},
        )
