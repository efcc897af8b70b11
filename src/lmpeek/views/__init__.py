"""Ways to show a trace outside the web app, with the same bundle and the same routes: the notebook
widget (`show`) and the self-contained HTML export (`export_html`). Importing this package needs no
torch and no built front end; both are loaded when a view is made."""

from __future__ import annotations

from typing import Any

__all__ = ["export_html", "show"]


def __getattr__(name: str) -> Any:
    if name == "show":
        from lmpeek.views.widget import show

        return show
    if name == "export_html":
        from lmpeek.views.export import export_html

        return export_html
    raise AttributeError(f"module 'lmpeek.views' has no attribute {name!r}")
