"""The notebook widget: the web app's own bundle in a notebook output, asking a Session in the kernel.

`lmpeek.show(x, model=None, view="explore")` returns a `Widget` (anywidget). With a model, the page's
requests (the same HTTP API the web app uses) travel as widget messages and are answered in-process by
the FastAPI app over that model's Session (views.asgi), so slices, logit lens, histograms… are computed
on demand exactly as in the app. With a Trace alone, the widget shows what the Trace holds (packed
as an export is, views.export.static_pack) and a panel needing more says so. With a feature database
(`lmpeek.show("features.db", feature=17)`), the requests go to an app serving that database alone (no
model: server.app.create_app(None, features=[db])) and the widget opens the Features tab on that feature.
With a model too (`lmpeek.show(db, model=m)`, or `lmpeek.show(m, view="features", source="neurons:3")`
without a database), the app serves the model's Session with the database and source
(create_app(session=…, features=[db], feature_sources=[source])): the online panel ranks features on
your text and generates, as in `lmpeek serve`.

Messages (JSON content + binary buffers), page -> kernel: {"kind": "fetch", "id", "method", "url",
"headers"} with the body as buffer 0; {"kind": "abort", "id"}. Kernel -> page: {"kind": "head", "id",
"status", "headers"}; {"kind": "chunk", "id"} with the bytes as buffer 0; {"kind": "end", "id"}.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import anywidget
import traitlets

from lmpeek.views import asgi
from lmpeek.views.bundle import bundle_js

# by id(): a LoadedModel is an unhashable dataclass; the entry goes when the model does
_SESSIONS: dict[int, Any] = {}
_APPS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_FEATURE_APPS: dict[tuple[str, int], Any] = {}  # (database file, inode): a rebuilt file gets a new app
# per Session: (database key or None, source spec or None) -> the app over the Session with them
_MODEL_FEATURE_APPS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, Any], Any]] = weakref.WeakKeyDictionary()


def session_for(model: Any):
    """One Session per model object (a LoadedModel, a Session, or a source for lmpeek.load), so every
    widget of a model shares its queue and its stored traces."""
    from lmpeek.session import Session

    if isinstance(model, Session):
        return model
    if isinstance(model, str):
        from lmpeek.api import load

        model = load(model)
    key = id(model)
    session = _SESSIONS.get(key)
    if session is None or session.model is not model:
        session = _SESSIONS[key] = Session(model)
        weakref.finalize(model, _SESSIONS.pop, key, None)
    return session


def app_for(session: Any):
    """The FastAPI app over a Session (created once per Session)."""
    app = _APPS.get(session)
    if app is None:
        from lmpeek.server.app import create_app

        app = _APPS[session] = create_app(session=session)
    return app


class Widget(anywidget.AnyWidget):
    """lmpeek in a notebook output. Traits are synced to the page; see the module docstring."""

    view = traitlets.Unicode("explore").tag(sync=True)
    trace_id = traitlets.Unicode("").tag(sync=True)
    # what an export holds (views.export), when there is no model to ask
    pack = traitlets.Bytes(b"").tag(sync=True)
    live = traitlets.Bool(False).tag(sync=True)
    prompt = traitlets.Unicode("").tag(sync=True)
    height = traitlets.Int(640).tag(sync=True)
    # the Features tab's feature to open (-1: none) and its source's id
    feature = traitlets.Int(-1).tag(sync=True)
    feature_source = traitlets.Unicode("").tag(sync=True)

    def __init__(self, session: Any = None, *, app: Any = None, **kwargs: Any) -> None:
        """Requests go to `app` (an ASGI app: a database-only one for feature pages), else to the app
        over `session`; with neither, the widget shows its `pack`."""
        type(self)._esm = bundle_js()  # read when the widget is made: a rebuilt bundle is picked up
        super().__init__(live=session is not None or app is not None, **kwargs)
        self._session = session
        self._app = app
        self._inflight: dict[str, asyncio.Event] = {}
        self.on_msg(self._on_msg)

    def _on_msg(self, _widget: Any, content: dict[str, Any], buffers: list[bytes]) -> None:
        kind = content.get("kind")
        if kind == "abort":
            gone = self._inflight.get(str(content.get("id")))
            if gone is not None:
                gone.set()
        elif kind == "fetch" and self.live:
            # the kernel runs an asyncio loop: answer without blocking it (a generation streams for long)
            asyncio.ensure_future(self._fetch(content, bytes(buffers[0]) if buffers else b""))

    async def _fetch(self, msg: dict[str, Any], body: bytes) -> None:
        rid = str(msg.get("id"))
        gone = self._inflight[rid] = asyncio.Event()
        try:
            app = self._app if self._app is not None else app_for(self._session)
            method, url = str(msg.get("method", "GET")), str(msg.get("url", "/"))
            async for item in asgi.request(app, method, url, msg.get("headers") or {}, body, gone):
                if isinstance(item, asgi.Head):
                    self.send({"kind": "head", "id": rid, "status": item.status, "headers": item.headers})
                else:
                    self.send({"kind": "chunk", "id": rid}, [item])
        except Exception as err:  # noqa: BLE001 - the page gets a 500 with the message, never silence
            detail = f"{type(err).__name__}: {err}".encode()
            self.send({"kind": "head", "id": rid, "status": 500, "headers": {"content-type": "text/plain"}})
            self.send({"kind": "chunk", "id": rid}, [detail])
        finally:
            self._inflight.pop(rid, None)
            self.send({"kind": "end", "id": rid})


VIEWS = ("explore", "attention", "generate", "features", "why")


def show(
    x: Any,
    model: Any = None,
    view: str = "explore",
    *,
    height: int = 640,
    feature: int | None = None,
    source: str | None = None,
) -> Widget:
    """Show a text, a Trace, a stored trace id or a feature database in a notebook.

    `x`: a text (needs `model`), a `Trace` (with `model`, it is run again on that model so any layer
    can be recomputed; without, the widget shows what the Trace holds), or a trace id of `model`'s
    Session. `model`: a LoadedModel, a Session, or a source for `lmpeek.load`. `view`: the tab shown
    first: "explore", "attention" (the trace's attention overview: model, head and neuron views) or
    "generate" (`x` is the prompt, streamed from the model) or "why" (attribution, prompt ablation,
    interventions, patching grids and steering on the text, run by the model as the app does).
    An Attribution (lmpeek.attribute) is drawn as the app's Why tab draws it.

    Feature pages: `x` a feature database (its path or a FeatureDB) with `feature=` (the page to open)
    and/or view="features": its Features tab, browsing the database (no model); `source`: the source's id
    or name (default: the database's first). With `model` too, the tab also computes features on your
    text and generates (the online panel); `x` may then be the model itself with view="features" and
    `source` a spec (e.g. "neurons:3", an SAE folder) and no database."""
    from lmpeek.capture.trace import Trace

    if type(x).__module__ == "lmpeek.attribution.attribute":  # an Attribution, drawn as the app does
        from lmpeek.views.attribution_html import show as show_attribution

        return show_attribution(x, model)
    if feature is not None or view == "features" or _is_database(x):
        return _show_features(x, model, feature, source, height)
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join(map(repr, VIEWS))}, got {view!r}")
    if model is None:
        if not isinstance(x, Trace):
            raise ValueError(
                "lmpeek.show needs model=… to run a text (or pass a Trace to show what it holds)"
            )
        from lmpeek.views.export import static_pack

        if view in ("generate", "why"):
            raise ValueError(f"view={view!r} needs model=… (a Trace alone cannot run the model)")
        return Widget(None, view=view, pack=static_pack(x), height=height)
    session = session_for(model)
    if view == "generate":
        return Widget(session, view="generate", prompt=str(x), height=height)
    if isinstance(x, Trace):
        trace_id = session.trace(x.token_ids).id
    elif isinstance(x, str) and _is_stored(session, x):
        trace_id = x
    else:
        trace_id = session.trace(x).id
    return Widget(session, view=view, trace_id=trace_id, height=height)


def features_app_for(db: Any) -> Any:
    """The database-only app over a feature database (one per file)."""
    from lmpeek.views.features_export import db_path, features_app

    path = db_path(db).resolve()
    key = (str(path), path.stat().st_ino if path.is_file() else -1)
    app = _FEATURE_APPS.get(key)
    if app is None:
        app = _FEATURE_APPS[key] = features_app(path)  # a missing or foreign file fails here, in one line
    return app


def _show_features(x: Any, model: Any, feature: int | None, source: str | None, height: int) -> Widget:
    from os import PathLike

    from lmpeek.features.db import FeatureDB
    from lmpeek.views.features_export import check_features, pick_source

    db = x
    if model is None and _is_model(x):  # show(m, view="features", source="neurons:3")
        db, model = None, x
    if db is not None and not isinstance(db, (str, PathLike, FeatureDB)):
        raise ValueError(f"feature pages need a database (a path or a FeatureDB), not {type(db).__name__}")
    if model is not None:
        app, src = _model_features_app(session_for(model), db, source)
        session = session_for(model)
    else:
        app, session = features_app_for(db), None
        src = pick_source(app, source)
    if src is None and feature is not None:
        raise ValueError(
            'feature= needs a source: name one (source="neurons:3", an SAE folder) or a database'
        )
    f = -1 if feature is None or src is None else check_features(src, [feature])[0]
    feature_source = "" if src is None else src["id"]
    return Widget(session, app=app, view="features", feature=f, feature_source=feature_source, height=height)


def _is_database(x: Any) -> bool:
    """Whether `x` is a feature database: a FeatureDB, a path object, or an existing `.db` file's name."""
    from os import PathLike
    from pathlib import Path

    from lmpeek.features.db import FeatureDB

    if isinstance(x, (FeatureDB, PathLike)):
        return True
    return isinstance(x, str) and x.endswith(".db") and Path(x).expanduser().is_file()


def _is_model(x: Any) -> bool:
    """Whether `x` names a model rather than a feature database: a LoadedModel, a Session, or a string
    that is neither an existing file nor a `.db` name (a source for lmpeek.load)."""
    from pathlib import Path

    from lmpeek.session import Session

    if isinstance(x, Session) or hasattr(x, "hf"):
        return True
    return isinstance(x, str) and not x.endswith(".db") and not Path(x).expanduser().exists()


def _model_features_app(session: Any, db: Any, source: str | None) -> tuple[Any, dict[str, Any] | None]:
    """The app over `session` serving the database `db` (or none) and the source `source` (an id or
    name of the database's, else a spec computed on the model, e.g. "neurons:3"), one per Session and
    arguments; and the source as GET /api/features lists it (None: no source named and no database)."""
    from lmpeek.errors import InvalidInput
    from lmpeek.server.app import create_app
    from lmpeek.views.features_export import db_path

    apps = _MODEL_FEATURE_APPS.setdefault(session, {})
    path = None if db is None else db_path(db).resolve()
    key = None if path is None else (str(path), path.stat().st_ino if path.is_file() else -1)

    def app_with(spec: str | None) -> Any:
        app = apps.get((key, spec))
        if app is None:
            app = apps[(key, spec)] = create_app(
                session=session,
                features=[] if path is None else [path],
                feature_sources=[] if spec is None else [spec],
            )
        return app

    app = app_with(None)
    listed = app.state.features.sources()["sources"]
    if source is None:
        return app, next((s for s in listed if s.get("database")), listed[0] if listed else None)
    src = next((s for s in listed if s["id"] == source), None) or next(
        (s for s in listed if s["name"] == source), None
    )
    if src is not None:
        return app, src
    app = app_with(str(source))  # a spec: loaded with the model (an SAE is checked on it)
    listed = app.state.features.sources()["sources"]
    src = next((s for s in listed if s.get("database") is None and s["kind"] != "unknown"), None)
    if src is None:
        del apps[(key, str(source))]  # a spec that failed to load: the next call tries again
        bad = next((s for s in listed if s["kind"] == "unknown"), None)
        why = bad.get("message") if bad else None
        raise InvalidInput(f"cannot compute the feature source {source!r}: {why or 'unknown source'}")
    return app, src


def _is_stored(session: Any, x: str) -> bool:
    from lmpeek.session import TraceNotFound

    try:
        session.get(x)
    except (TraceNotFound, ValueError):
        return False
    return True
