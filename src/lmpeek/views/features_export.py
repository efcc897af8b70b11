"""Feature pages as one self-contained HTML file (issue 12): the Features tab of a feature database,
opening on a feature's page, with no server, no model and no network.

    lmpeek features export features.db --feature 17 --feature 93 -o features.html
    html = lmpeek.features.export_html("features.db", [17, 93], source="neurons:10")

Recorded as a trace export is (views.export: the app's own routes asked in-process, the answers
packed into the page; the page reads them through web/src/lib/transport.ts staticFetcher), from an app
serving the database alone (server.app.create_app(None, features=[db])). The pack holds:
- the health answer of a server without a model, so the page shows only its Features tab;
- GET /api/features with the chosen source alone (its database's path cut to the file's name, not
  online: nothing is computed in a file);
- each chosen feature's page, as the route answers it;
- the feature list of just the chosen features, in every sort and order the page offers (each page of
  50), ordered as the database orders them (key, then feature index; NULL lowest, as SQLite).

Not recorded, said by the page as "not in this export": other features (a correlated feature's link,
with the `--feature` that adds it), a search, and an example's whole document ("context"). Documents
are left out by size. Measured on the default model's neurons:10 over 20k tokens of the demo corpus
(20 top + 10 x 5 quantile examples a feature): a feature's page costs ~42 kB in the file (gzip +
base85; the bundle ~142 kB once), and the documents of its examples (55 distinct 128-token sequences)
would add ~35 kB more, most of another page, to widen a 33-token window that already holds the
activating context. A large corpus shares fewer documents between features, so they would cost that
for every feature.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from numbers import Integral
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lmpeek.errors import InvalidInput
from lmpeek.views.export import _Recorder, page_html

HINT = (
    "Open the database in lmpeek (`lmpeek features serve DB`) to browse every feature, search them and "
    "see whole documents"
)
LIST_LIMIT = 50  # web/src/components/FeatureList.svelte: rows a page of the list asks for
LIST_SORTS = ("density", "max", "count", "mean", "feature", "relevance")  # web/src/lib/features.ts SORTS


def segment(text: str) -> str:
    """A source id as the page puts it in a path (encodeURIComponent), so the recorded key is the one
    the page asks for."""
    return quote(text, safe="!*'()")


def db_path(db: Any) -> Path:
    """The database file of `db` (a path or a FeatureDB)."""
    from lmpeek.features.db import FeatureDB

    return Path(db.path if isinstance(db, FeatureDB) else db).expanduser()


def features_app(db: Any) -> Any:
    """An app serving the database alone (no model): the routes the export asks and the widget uses.
    A missing or foreign file fails here, in one line."""
    from lmpeek.server.app import create_app

    return create_app(None, features=[db_path(db)])


def pick_source(app: Any, source: str | None) -> dict[str, Any]:
    """The source as GET /api/features lists it, by id or name (None: the first with a database)."""
    listed = [s for s in app.state.features.sources()["sources"] if s.get("database")]
    if source is None:
        src = listed[0] if listed else None
    else:
        src = next((s for s in listed if s["id"] == source), None) or next(
            (s for s in listed if s["name"] == source), None
        )
    if src is None:
        ids = ", ".join(s["id"] for s in listed) or "none"
        raise InvalidInput(f"no feature source {source!r} in this database (sources: {ids})")
    return src


def check_features(src: dict[str, Any], features: int | Iterable[int]) -> list[int]:
    """`features` of `src`, checked: in range, each once, in the order given, at least one."""
    chosen: list[int] = []
    for f in [features] if isinstance(features, Integral) else list(features):
        if isinstance(f, bool) or not isinstance(f, Integral) or not 0 <= f < src["n_features"]:
            raise InvalidInput(
                f"feature {f!r} is not a feature of {src['id']} (it has features 0..{src['n_features'] - 1})"
            )
        if int(f) not in chosen:  # numpy's integers too
            chosen.append(int(f))
    if not chosen:
        raise InvalidInput("name at least one feature to export (--feature N)")
    return chosen


def list_answers(rows: list[dict[str, Any]]) -> dict[tuple[str, str | None, int], dict[str, Any]]:
    """The feature list route's answers for `rows` alone: (sort, order, offset) -> {"total", "items"},
    for every sort and order the page asks (relevance without a search: feature order, one order),
    ordered as FeatureDB.query orders a list (the key, NULL lowest as in SQLite, then the feature)."""
    by_feature = sorted(rows, key=lambda r: r["feature"])
    out = {}
    for sort in LIST_SORTS:
        key = "feature" if sort == "relevance" else sort
        for order in (None,) if sort == "relevance" else ("desc", "asc"):
            # a stable sort on the feature order: ties keep it in both directions, as in the database
            ranked = sorted(
                by_feature, key=lambda r: (r[key] is not None, r[key] or 0), reverse=order == "desc"
            )
            for offset in range(0, len(ranked), LIST_LIMIT):
                page = ranked[offset : offset + LIST_LIMIT]
                out[(sort, order, offset)] = {"total": len(ranked), "items": page}
    return out


def record_pack(db: Any, features: int | Iterable[int], source: str | None = None) -> bytes:
    """Ask a database-only app the page's questions about `features` of `source` and pack the answers."""
    return _recorded(db, features, source)[0]


def _recorded(db: Any, features: Any, source: str | None) -> tuple[bytes, str, list[int]]:
    """(the pack, the source's id, the features in order)."""
    app = features_app(db)
    try:
        src = pick_source(app, source)
        chosen = check_features(src, features)
        return _record(app, src, chosen), src["id"], chosen
    finally:
        app.state.features.close()


def _record(app: Any, src: dict[str, Any], chosen: list[int]) -> bytes:
    rec = _Recorder(app)
    sid, base = src["id"], f"/api/features/{segment(src['id'])}"
    name = Path(src["database"]["path"]).name
    said = f"{name}: {len(chosen)} feature pages (exported)"
    rec.put_json("/api/health", {"status": "ready", "message": said, "model": None,
                                 "queue": {"pending": 0, "limit": 0}, "features_only": True})  # fmt: skip
    shown = {k: v for k, v in src.items() if k != "message"}  # why not online: nothing is online in a file
    shown.update(online=False, database={**src["database"], "path": name})  # no local paths in a shared file
    rec.put_json("/api/features", {"sources": [shown], "model": None})
    rows = []
    for f in chosen:
        if (status := rec.record(f"{base}/{f}")) != 200:
            raise InvalidInput(f"feature {f} of {sid}: {rec.detail(f'{base}/{f}')} (HTTP {status})")
        # the row the list route gives this feature (sorted by feature, it is the one at offset f)
        params = {"sort": "feature", "order": "asc", "offset": f, "limit": 1}
        head, body = rec.ask(f"{base}/list", params)
        items = json.loads(body).get("items") if head.status == 200 else None
        if not items or items[0]["feature"] != f:
            raise InvalidInput(f"feature {f} of {sid} is not in the database's list")
        rows.append(items[0])
    for (sort, order, offset), answer in list_answers(rows).items():
        params = {"sort": sort, "order": order, "offset": offset, "limit": LIST_LIMIT}
        rec.put_json(f"{base}/list", answer, params)
    return rec.pack(trace_id=None, hint=HINT, attention={}, open={"source": sid, "feature": chosen[0]})


def export_html(
    db: Any, features: int | Iterable[int], source: str | None = None, title: str | None = None
) -> str:
    """The whole HTML file: the Features tab on the page of the first of `features` (one index or
    several) of `source` (its id or name; default: the database's first source), every one of their
    pages embedded. `db`: a feature database's path or a FeatureDB."""
    pack, sid, chosen = _recorded(db, features, source)
    more = f" (+{len(chosen) - 1} more)" if len(chosen) > 1 else ""
    return page_html(pack, title or f"lmpeek · {sid} · feature #{chosen[0]}{more}", "features")


def export_cli(db: str, features: list[int], source: str | None, out: str, echo: Any = print) -> Path:
    """What `lmpeek features export` runs: write the file, say its size."""
    page = export_html(db, features, source)
    path = Path(out)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot write {path}: {e.strerror or e}") from None
    n = len(set(features))
    echo(f"wrote {path} ({len(page.encode()) / 1e3:.1f} kB, {n} feature page{'s' * (n != 1)})")
    return path
