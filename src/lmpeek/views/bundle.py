"""The front end as one self-contained ES module (web/vite.embed.config.ts builds it into the package):
what the notebook widget and the HTML export load. Read lazily: importing lmpeek.views needs no build."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

from lmpeek.errors import LmpeekError


class BundleMissing(LmpeekError):
    """The built front end is not in the package (a source checkout that was never built)."""


def bundle_path() -> Path:
    return Path(str(resources.files("lmpeek").joinpath("static", "app", "embed", "lmpeek.js")))


@lru_cache(maxsize=1)
def _read(path: str, mtime: float) -> str:
    return Path(path).read_text(encoding="utf-8")


def bundle_js() -> str:
    """The bundle's source text (cached until the file changes)."""
    path = bundle_path()
    if not path.is_file():
        raise BundleMissing(
            f"the lmpeek front end is not built ({path} is missing): run `make app`, or "
            "`cd web && npm ci && npm run build`"
        )
    return _read(str(path), path.stat().st_mtime)
