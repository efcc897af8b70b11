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

With a model and texts (`--model M --text "…"`, the Features tab's "Your text" on each text), also:
- the source's `recorded` entry in GET /api/features: the texts, the features and `top`;
- POST /api/features/{source}/activations for each text, with `features` the exported ones and `top`
  5 (the panel's default), by activation and by corpus quantile, with and without exclude_template:
  the four questions the panel asks of a recorded text, under `post_key` (the body is part of the
  question). The panel shows the texts read-only (a picker when several); another feature, text or
  `top` is "not in this export". Measured with the shipped database and the default model (one
  100-token text, 3 features): +31.5 kB, of which the rankings are most (a plain text's answers with and
  without exclude_template are the same bytes, stored once).

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
from collections.abc import Iterable, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lmpeek.errors import InvalidInput
from lmpeek.views.export import _Recorder, page_html, request_key

HINT = (
    "Open the database in lmpeek (`lmpeek features serve DB`) to browse every feature, search them and "
    "see whole documents"
)
LIST_LIMIT = 50  # web/src/components/FeatureList.svelte: rows a page of the list asks for
LIST_SORTS = ("density", "max", "count", "mean", "feature", "relevance")  # web/src/lib/features.ts SORTS
TEXT_TOP = 5  # web/src/components/FeatureOnline.svelte: the ranked features per token it asks for first
TEXT_FEATURES = 32  # service.MAX_FEATURES: the features one answer holds the values of


def segment(text: str) -> str:
    """A source id as the page puts it in a path (encodeURIComponent), so the recorded key is the one
    the page asks for."""
    return quote(text, safe="!*'()")


def db_path(db: Any) -> Path:
    """The database file of `db` (a path or a FeatureDB)."""
    from lmpeek.features.db import FeatureDB

    return Path(db.path if isinstance(db, FeatureDB) else db).expanduser()


def features_app(db: Any, model: Any = None) -> Any:
    """An app serving the database alone (no model): the routes the export asks and the widget uses;
    with `model` (a LoadedModel, Session or a source for lmpeek.load), an app over its Session serving
    the database too, which answers the online panel. A missing or foreign file fails here, in one line."""
    from lmpeek.server.app import create_app

    if model is None:
        return create_app(None, features=[db_path(db)])
    from lmpeek.views.widget import session_for

    return create_app(session=session_for(model), features=[db_path(db)])


def post_key(path: str, body: dict[str, Any]) -> str:
    """The key a POST is recorded under: request_key's, then its JSON body with sorted keys and no
    spaces (web/src/lib/transport.ts postKey: JSON.stringify of the body, keys sorted, gives the same)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return f"{request_key('POST', path)} {canonical}"


def text_requests(text: str, features: list[int]) -> list[dict[str, Any]]:
    """The bodies the online panel posts for a recorded text (FeatureOnline.svelte run(): the exported
    features, the default top, either rank, either exclude_template)."""
    return [
        {"text": text, "features": features, "rank": rank, "top": TEXT_TOP, "exclude_template": exclude}
        for rank in ("activation", "quantile")
        for exclude in (False, True)
    ]


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


def check_texts(texts: str | Iterable[str], model: Any, chosen: list[int]) -> list[str]:
    """The texts to record (each once, in order): only with a model, with at most TEXT_FEATURES features."""
    out = list(dict.fromkeys([texts] if isinstance(texts, str) else list(texts)))
    if not out:
        return out
    if model is None:
        raise InvalidInput("--text needs --model: the features of a text are computed by the model")
    if len(chosen) > TEXT_FEATURES:
        raise InvalidInput(f"with --text, at most {TEXT_FEATURES} features (one answer holds their values)")
    if any(not isinstance(t, str) or not t for t in out):
        raise InvalidInput("a --text must be a non-empty string")
    return out


def record_pack(
    db: Any, features: int | Iterable[int], source: str | None = None, model: Any = None, texts: Any = ()
) -> bytes:
    """Ask a database-only app the page's questions about `features` of `source` and pack the answers;
    with `model`, also the online panel's about each of `texts`."""
    return _recorded(db, features, source, model, texts)[0]


def _recorded(db: Any, features: Any, source: str | None, model: Any = None,
              texts: Any = ()) -> tuple[bytes, str, list[int]]:  # fmt: skip
    """(the pack, the source's id, the features in order)."""
    app = features_app(db, model if texts else None)
    try:
        src = pick_source(app, source)
        chosen = check_features(src, features)
        return _record(app, src, chosen, check_texts(texts, model, chosen)), src["id"], chosen
    finally:
        app.state.features.close()


def _record_texts(rec: _Recorder, src: dict[str, Any], chosen: list[int], texts: list[str]) -> None:
    """The online panel's answers for each text (text_requests), asked of the app's route as the page
    asks it; a refusal (a model the database was not built on, a text too long) fails the export."""
    from lmpeek.views.asgi import fetch_sync

    path = f"/api/features/{segment(src['id'])}/activations"
    for text in texts:
        for body in text_requests(text, chosen):
            data = json.dumps(body, ensure_ascii=False).encode()
            head, answer = fetch_sync(rec.app, "POST", path, {"content-type": "application/json"}, data)
            if head.status != 200:
                try:
                    why = json.loads(answer).get("detail")
                except (ValueError, AttributeError):
                    why = answer[:300].decode("utf-8", "replace")
                raise InvalidInput(f"--text {text[:40]!r}: {why} (HTTP {head.status})")
            rec.put(post_key(path, body), 200, {"content-type": "application/json"}, answer)


def _record(app: Any, src: dict[str, Any], chosen: list[int], texts: Sequence[str] = ()) -> bytes:
    rec = _Recorder(app)
    sid, base = src["id"], f"/api/features/{segment(src['id'])}"
    name = Path(src["database"]["path"]).name
    said = f"{name}: {len(chosen)} feature pages (exported)"
    rec.put_json("/api/health", {"status": "ready", "message": said, "model": None,
                                 "queue": {"pending": 0, "limit": 0}, "features_only": True})  # fmt: skip
    shown = {k: v for k, v in src.items() if k != "message"}  # why not online: nothing is online in a file
    shown.update(online=False, database={**src["database"], "path": name})  # no local paths in a shared file
    if texts:
        shown["recorded"] = {"texts": list(texts), "features": chosen, "top": TEXT_TOP}
        _record_texts(rec, src, chosen, texts)
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
    db: Any,
    features: int | Iterable[int],
    source: str | None = None,
    title: str | None = None,
    *,
    model: Any = None,
    texts: str | Iterable[str] = (),
) -> str:
    """The whole HTML file: the Features tab on the page of the first of `features` (one index or
    several) of `source` (its id or name; default: the database's first source), every one of their
    pages embedded. `db`: a feature database's path or a FeatureDB. With `model` (the database's model:
    a LoadedModel, a Session or a source for lmpeek.load) and `texts`, "Your text" on each text too."""
    pack, sid, chosen = _recorded(db, features, source, model, texts)
    more = f" (+{len(chosen) - 1} more)" if len(chosen) > 1 else ""
    return page_html(pack, title or f"lmpeek · {sid} · feature #{chosen[0]}{more}", "features")


def export_cli(db: str, features: list[int], source: str | None, out: str, echo: Any = print,
               model: str | None = None, texts: list[str] | None = None) -> Path:  # fmt: skip
    """What `lmpeek features export` runs: write the file, say its size."""
    if texts and model is None:
        raise InvalidInput("--text needs --model: the features of a text are computed by the model")
    loaded = None
    if texts:
        from lmpeek.api import load

        loaded = load(model)
    page = export_html(db, features, source, model=loaded, texts=texts or ())
    path = Path(out)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        raise InvalidInput(f"cannot write {path}: {e.strerror or e}") from None
    n = len(set(features))
    more = f", {len(set(texts))} text{'s' * (len(set(texts)) != 1)}" if texts else ""
    echo(f"wrote {path} ({len(page.encode()) / 1e3:.1f} kB, {n} feature page{'s' * (n != 1)}{more})")
    return path
