"""GET /api/traces/{id}/export: the app's Export button. The same self-contained HTML file as
`lmpeek export` (lmpeek.views.export), recorded from this app's own routes, in-process."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import Response

from lmpeek.server.guard import TraceId

# one item of `lmpeek export --include` (views.export.Include.parse says what each means)
_ITEM = r"(attention=\d{1,4}:\d{1,4}|lens|grid|grid=\d{1,6}:\d{1,6}|qk=\d{1,4}:\d{1,4}:\d{1,6})"


def add_export_routes(app: FastAPI, holder, traces) -> None:
    @app.get("/api/traces/{trace_id}/export", responses={200: {"content": {"text/html": {}}}})
    def export(
        trace_id: TraceId,
        include: Annotated[
            str,
            Query(
                max_length=300,
                pattern=rf"^({_ITEM}(,{_ITEM})*)?$",
                description="comma-separated: attention=LAYER:HEAD, lens, grid, grid=START:END, "
                "qk=LAYER:HEAD:QUERY (see `lmpeek export --include`)",
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
