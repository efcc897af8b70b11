"""FeatureService: the feature dashboards' one service (the server's Features routes only format it).

    service = FeatureService(["features.db"], ["neurons:3"], model=model)   # model: optional
    service.sources()                              # what can be browsed / computed, by id
    service.feature_list("neurons:3", q="token:def", sort="max")
    service.feature("neurons:3", 17)               # the database's page of feature 17, with its label
    service.activations("neurons:3", "def f(x):", rank="quantile")   # on the model's thread
    service.generate("neurons:3", "Hi<eot>", max_new_tokens=20)    # the text continued, then the same

Sources have string ids: a database source's name ("neurons:12", an SAE folder's name; "name@file"
when two databases share a name), a given spec's name, and, with a model, any "neurons:L" on request.
Database reads are torch-free (`FeatureDB`); `activations` runs one forward (lmpeek.features
.activations: float32 hook values, never a float16 copy), so callers run it on the model's worker
thread as every model job; `attach(model)` loads the given specs the same way.

Quantiles. A value v of feature f gets the fraction of the corpus's counted positions whose activation
is below v, from what the database stores of f: its n positions, `count` activations > 0, `count_neg`
< 0, min and max, and the exact histogram of the activations > 0 over the shared edges (16 bins per
decade, db.HIST_EDGES). For v > 0 in bin [lo, hi) (hi clipped to f's max):

    q = (n - count + (activations > 0 in bins below) + count_in_bin · (v - lo) / (hi - lo)) / n

(linear inside the one bin: off by at most that bin's share of n; v >= max gives 1). For v <= 0 the
database stores no histogram, only count_neg and min: q = count_neg · (v - min) / (0 - min) / n, so 0
gets count_neg / n. Ranking by quantile orders a token's active features (v > 0) by q, then v, then
index: a rare feature firing at all outranks a common one firing hard.

The first position (the attention sink, left out of every database statistic) is left out of
`top_features`; template tokens too with exclude_template (they then have no ranking either).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmpeek import validate
from lmpeek.errors import InvalidInput, LmpeekError
from lmpeek.features.db import HIST_EDGES, LIST_SORTS, FeatureDB

MAX_TOKENS = 4096  # tokens one request may run (the page shows them all)
MAX_VALUES = 1 << 26  # T × F activations one request may hold: 256 MB of float32
MAX_FEATURES = 32  # requested features' values returned per request
MAX_PAIR_FEATURES = 8  # features shown side by side on the crosscoder page
MAX_TOP = 50  # ranking depth per token
TOP_FEATURES = 50  # top_features over the whole text
RANKS = ("activation", "quantile")


class UnknownSource(LmpeekError):
    status_code = 404


class NoDatabase(LmpeekError):
    """The source has no feature database: nothing to list, page through or label."""

    status_code = 409


class NoModel(LmpeekError):
    """No model is loaded, or the loaded model cannot compute this source."""

    status_code = 409


NO_BASE = (
    "a crosscoder reads a (base, chat) model pair: serve the chat model with its base model, "
    "`lmpeek serve CHAT --base-model BASE --features-source CROSSCODER_FOLDER`"
)


@dataclass
class Entry:
    """One source the service knows, by id."""

    id: str
    name: str
    kind: str
    n_features: int
    hooks: list[str]
    db: FeatureDB | None = None
    db_source: int | None = None  # its number in the database
    spec: Any = None  # what features.load takes to compute it online
    hash: str | None = None  # the database's hash of the source (the loaded one must match)
    loaded: Any = None  # the FeatureSource, once loaded with the model
    error: str | None = None  # why it cannot be computed online (a spec that failed to load)
    listed: bool = True  # neurons:L made on request are not listed
    dist: dict[str, np.ndarray] | None = field(default=None, repr=False)


# --- pure functions -------------------------------------------------------------------------------------


def quantiles(dist: dict[str, np.ndarray], features: Any, values: Any) -> np.ndarray:
    """Each value's quantile in its feature's corpus distribution (see the module docstring); `features`
    broadcasts against `values`. NaN for a feature the database saw no positions of."""
    v = np.asarray(values, dtype=np.float64)
    f = np.broadcast_to(np.asarray(features, dtype=np.int64), v.shape)
    n, count, count_neg = dist["n"][f], dist["count"][f], dist["count_neg"][f]
    mx, mn, cum = dist["max"][f], dist["min"][f], dist["cum"]
    B = cum.shape[1] - 1
    b = np.clip(np.searchsorted(HIST_EDGES, v, side="right") - 1, 0, B - 1)
    lo = HIST_EDGES[b]
    hi = np.minimum(HIST_EDGES[b + 1], np.where(np.isnan(mx), np.inf, mx))
    below, in_bin = cum[f, b], cum[f, b + 1] - cum[f, b]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(hi > lo, np.clip((v - lo) / (hi - lo), 0.0, 1.0), 1.0)
        pos = np.where(v >= mx, n, n - count + below + in_bin * frac)
        neg = np.where(mn < 0, count_neg * np.clip((v - mn) / -mn, 0.0, 1.0), 0.0)
        q = np.where(v > 0, pos, neg) / n
    return np.where(n > 0, q, np.nan)


def rank_tokens(
    values: np.ndarray,
    top: int,
    dist: dict[str, np.ndarray] | None = None,
    by_quantile: bool = False,
    leave_out: np.ndarray | None = None,
) -> list[list[dict[str, Any]]]:
    """Per token, its `top` active features (value > 0), best first: by value, or (`by_quantile`, which
    needs `dist`) by quantile, then value; ties to the smaller index. Each {feature, value, quantile}
    (quantile None without `dist`). Tokens in `leave_out` get []."""
    out: list[list[dict[str, Any]]] = []
    for t in range(values.shape[0]):
        if leave_out is not None and leave_out[t]:
            out.append([])
            continue
        active = np.flatnonzero(values[t] > 0)
        v = values[t, active].astype(np.float64)
        q = None if dist is None else quantiles(dist, active, v)
        if by_quantile and q is not None:
            order = np.lexsort((active, -v, -np.nan_to_num(q, nan=-1.0)))[:top]
        else:
            order = np.lexsort((active, -v))[:top]
        out.append(
            [
                {
                    "feature": int(active[j]),
                    "value": float(v[j]),
                    "quantile": None if q is None else _num(q[j]),
                }
                for j in order
            ]
        )
    return out


def top_over_text(
    values: np.ndarray,
    dist: dict[str, np.ndarray] | None = None,
    by_quantile: bool = False,
    rows: np.ndarray | None = None,
    n: int = TOP_FEATURES,
) -> list[dict[str, Any]]:
    """The features most active over the text's `rows` (a token mask; default all): each feature's max,
    its quantile (None without `dist`) and how many of those tokens it is active on (> 0); best first by
    max, or (`by_quantile`) by the max's quantile, then max; ties to the smaller index; only features
    active somewhere."""
    x = values if rows is None else values[rows]
    if not len(x):
        return []
    mx = x.max(0).astype(np.float64)
    active = np.flatnonzero(mx > 0)
    m = mx[active]
    q = None if dist is None else quantiles(dist, active, m)
    if by_quantile and q is not None:
        order = np.lexsort((active, -m, -np.nan_to_num(q, nan=-1.0)))[:n]
    else:
        order = np.lexsort((active, -m))[:n]
    counts = (x[:, active[order]] > 0).sum(0)
    return [
        {
            "feature": int(active[j]),
            "max": float(m[j]),
            "tokens_active": int(c),
            "quantile": None if q is None else _num(q[j]),
        }
        for j, c in zip(order, counts, strict=True)
    ]


def template_flags(tok: Any, text: str, special: Iterable[int] = ()) -> np.ndarray:
    """Which tokens the chat template wrote rather than the user ([T] bool). A token is the user's when
    its character span overlaps a turn's content in the formatted text (turns found in order; a
    template that rewrites a turn leaves all of it flagged); a token with no characters of its own (a
    later byte of a character split over byte tokens) goes with the character before it, unless it is
    a `special` token id (an added BOS). Plain text is one turn: only added special tokens are flagged."""
    from lmpeek.capture.tokens import chat_messages

    formatted = tok.text
    if not tok.chat:
        spans = [(0, len(formatted))]
    else:
        spans, cursor = [], 0
        for message in chat_messages(text):
            for content in dict.fromkeys((message["content"], message["content"].strip())):
                at = formatted.find(content, cursor) if content else -1
                if at >= 0:
                    spans.append((at, at + len(content)))
                    cursor = at + len(content)
                    break
    offsets = np.asarray(tok.offsets, dtype=np.int64).reshape(-1, 2)
    a, b = offsets[:, 0], offsets[:, 1]
    empty = a >= b
    is_special = np.isin(np.asarray(tok.token_ids, dtype=np.int64), np.fromiter(special, dtype=np.int64))
    own = np.zeros(len(offsets), dtype=bool)
    for s, e in spans:
        own |= ~empty & (a < e) & (s < b)
        own |= empty & ~is_special & (s < a) & (a <= e)
    return ~own


def _num(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _corpus_name(inputs: Iterable[str]) -> str:
    names = []
    for item in inputs:
        item = str(item)
        names.append(item if item.startswith(("demo:", "text:")) else Path(item).name or item)
    return ", ".join(names)


_NEURONS = re.compile(r"neurons:(\d{1,6})")


def _safe_id(name: str) -> str:
    # ids travel as one URL path segment
    return re.sub(r"[/\\\x00-\x1f]", "_", str(name)).strip() or "source"


# --- the service ------------------------------------------------------------------------------------------


def _still_there(spec: Any) -> bool:
    """Whether a database's stored spec still names a source some registered kind takes: a shipped
    name such as "default", or a folder whose files are still there (a removed one matches no kind)."""
    from lmpeek.features.sources import kind_for

    try:
        kind_for(spec)
    except LmpeekError:
        return False
    return True


class FeatureService:
    """Feature databases and sources by id (see the module docstring)."""

    def __init__(self, databases: Iterable[Any] = (), sources: Iterable[Any] = (), *, model: Any = None,
                 base_model: Any = None):  # fmt: skip
        self.model: Any = None
        self.base_model: Any = None  # a crosscoder's base model (the served model is the chat one)
        self._summaries: dict[str, dict[str, Any]] = {}  # crosscoder pages, by source id
        self._lock = threading.RLock()
        self._entries: dict[str, Entry] = {}
        self.databases: list[FeatureDB] = []
        try:
            for path in databases:
                db = FeatureDB(path)
                self.databases.append(db)
                for s in db.sources:
                    eid = _safe_id(s["name"])
                    if eid in self._entries:
                        eid = f"{eid}@{Path(db.path).stem}"
                    while eid in self._entries:
                        eid += "+"
                    self._entries[eid] = Entry(
                        eid, s["name"], s["kind"], int(s["n_features"]), list(s["hooks"]), db, s["source"],
                        spec=s["spec"], hash=s["hash"],
                    )  # fmt: skip
        except Exception:
            self.close()
            raise
        self._specs = list(sources)
        if model is not None:
            self.attach(model, base_model)

    def close(self) -> None:
        for db in self.databases:
            db.close()

    def __enter__(self) -> FeatureService:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- the model

    def attach(self, model: Any, base_model: Any = None) -> None:
        """Serve `model`: load the given specs with it (an SAE is checked against it: a misfit warns);
        crosscoders with the pair (base_model, model) when a base model is given. Runs the model (the
        checks): call it where model work runs."""
        from lmpeek import features
        from lmpeek.features.builder import _source_hash

        with self._lock:
            self.model, self.base_model = model, base_model
            for spec in self._specs:
                try:
                    src = features.load(spec, self._models(spec))
                except LmpeekError as err:
                    name = _safe_id(Path(str(spec)).name or str(spec))
                    self._entries.setdefault(name, Entry(name, name, "unknown", 0, [], error=str(err)))
                    continue
                eid = _safe_id(src.name)
                e = self._entries.get(eid)
                if e is not None and e.db is not None and e.hash == _source_hash(src):
                    e.loaded = src  # the database's own source, given again: computed online with it
                    continue
                while eid in self._entries:
                    eid += "+"
                self._entries[eid] = Entry(eid, src.name, src.kind, int(src.n_features), list(src.hooks),
                                           spec=spec, loaded=src)  # fmt: skip

    def _entry(self, source: str) -> Entry:
        with self._lock:
            e = self._entries.get(source)
            if e is not None:
                return e
            m = _NEURONS.fullmatch(str(source))
            model = self.model
            if m is not None and model is not None and int(m.group(1)) < model.n_layers:
                layer = int(m.group(1))
                e = Entry(source, source, "neurons", int(model.bound.d_mlp),
                          [f"blocks.{layer}.mlp.hook_post"], spec=source, listed=False)  # fmt: skip
                self._entries[source] = e
                return e
            known = ", ".join(k for k, v in self._entries.items() if v.listed) or "none"
            more = f"; neurons:L for L in 0..{model.n_layers - 1}" if model is not None else ""
            raise UnknownSource(f"no feature source {str(source)[:200]!r} (sources: {known}{more})")

    def _why_offline(self, e: Entry) -> str | None:
        """None when the loaded model can compute `e`, else why not."""
        model = self.model
        if model is None:
            return "no model is loaded (lmpeek serve MODEL --features DB computes features on text)"
        if e.kind == "crosscoder" and self.base_model is None:
            return NO_BASE
        if e.error is not None:
            return e.error
        if e.loaded is not None:
            return None
        if e.db is not None:
            from lmpeek.models.fingerprint import describe, same_model

            made_by = (e.db.manifest.get("model") or {}).get("fingerprint")
            if not same_model(made_by, model.fingerprint):
                return (
                    f"{Path(e.db.path).name} was built on {describe(made_by)}; the loaded model is "
                    f"{describe(model.fingerprint)}: its features mean nothing on this model"
                )
            if e.kind != "neurons" and not _still_there(e.spec):
                return f"{e.name} was read from {e.spec}, which is not there any more"
        return None

    def source(self, source: str) -> Any:
        """The loaded FeatureSource named `source` (a listed id or neurons:L), for computing with it: an
        intervention's feature ablation, a steering direction's decoder row. Loads it with the model once,
        so call it on the model's thread. UnknownSource / NoModel as the routes answer them."""
        return self._loaded(self._entry(source))

    def _loaded(self, e: Entry) -> Any:
        """The FeatureSource for `e`, loaded with the model once (on the model's thread)."""
        why = self._why_offline(e)
        if why is not None:
            raise NoModel(f"{e.id} cannot be computed: {why}")
        with self._lock:
            if e.loaded is None:
                from lmpeek import features
                from lmpeek.features.builder import _source_hash

                src = features.load(e.spec, self._models(e.spec), check=False)
                if e.hash is not None and _source_hash(src) != e.hash:
                    e.error = (
                        f"{e.spec} is not the source {Path(e.db.path).name if e.db else 'the database'} "
                        f"was built from (its files changed)"
                    )
                    raise NoModel(f"{e.id} cannot be computed: {e.error}")
                e.loaded = src
            return e.loaded

    # --- listing and the database

    def sources(self) -> dict[str, Any]:
        """Every listed source: id, name, kind, n_features, hooks, online (the loaded model computes it)
        and its database (or None); `message` says why a source is not online."""
        out = []
        with self._lock:
            entries = [e for e in self._entries.values() if e.listed]
        for e in entries:
            why = self._why_offline(e)
            item: dict[str, Any] = {
                "id": e.id, "name": e.name, "kind": e.kind, "n_features": e.n_features, "hooks": e.hooks,
                "online": why is None, "database": None if e.db is None else self._db_info(e.db),
            }  # fmt: skip
            if why is not None:
                item["message"] = why
            out.append(item)
        return {"sources": out, "model": None if self.model is None else self.model.name}

    @staticmethod
    def _db_info(db: FeatureDB) -> dict[str, Any]:
        m = db.manifest
        corpus = m.get("corpus") or {}
        return {
            "path": db.path,
            "tokens": m.get("tokens"),
            "documents": corpus.get("documents"),
            "model": (m.get("model") or {}).get("name"),
            "corpus": _corpus_name(corpus.get("inputs") or m.get("corpus_inputs") or []),
            "format_version": str(m.get("format_version")),
        }

    def _db(self, source: str) -> Entry:
        e = self._entry(source)
        if e.db is None:
            raise NoDatabase(
                f"{e.id} has no feature database: lists, feature pages and labels need one (build it with "
                f"`lmpeek features build -s {e.name} -c CORPUS -o features.db`, then `lmpeek serve "
                f"--features features.db`); your text's activations work without one"
            )
        return e

    def feature_list(self, source: str, q: str = "", sort: str = "feature", order: str | None = None,
                     offset: int = 0, limit: int = 50) -> dict[str, Any]:  # fmt: skip
        """{"total", "items"}: one page of the source's features matching `q` (FTS5; see FeatureDB.query)."""
        if sort not in LIST_SORTS:
            raise InvalidInput(f"sort must be one of {', '.join(LIST_SORTS)}, got {sort!r}")
        if order not in (None, "asc", "desc"):
            raise InvalidInput(f"order must be asc or desc, got {order!r}")
        offset = validate.integer("offset", offset, 0)
        limit = validate.integer("limit", limit, 1, 1000)
        e = self._db(source)
        assert e.db is not None
        total, rows = e.db.query(
            e.db_source, q, sort, None if order is None else order == "desc", offset, limit
        )
        keep = ("feature", "density", "max", "count", "mean", "label", "top_tokens")
        return {"total": total, "items": [{k: r[k] for k in keep} for r in rows]}

    def feature(self, source: str, feature: int) -> dict[str, Any]:
        """The database's page of one feature (FeatureDB.feature) with its label and notes."""
        e = self._db(source)
        assert e.db is not None
        page = e.db.feature(feature, e.db_source)
        return {**page, **e.db.label(feature, e.db_source)}

    def document(self, source: str, feature: int, doc: int) -> dict[str, Any]:
        """A stored sequence whole (to widen an example's context)."""
        e = self._db(source)
        assert e.db is not None
        e.db.label(feature, e.db_source)  # the feature must exist, as the route names it
        return e.db.document_info(validate.integer("doc", doc, 0))

    def set_label(self, source: str, feature: int, label: str, notes: str = "") -> Path:
        e = self._db(source)
        assert e.db is not None
        return e.db.set_label(feature, label, notes, e.db_source)

    def _distribution(self, e: Entry) -> dict[str, np.ndarray]:
        with self._lock:
            if e.dist is None:
                assert e.db is not None
                e.dist = e.db.distribution(e.db_source)
            return e.dist

    # --- your text

    def activations(
        self,
        source: str,
        text: str | Sequence[int],
        features: Sequence[int] | None = None,
        rank: str = "activation",
        top: int = 5,
        exclude_template: bool = False,
    ) -> dict[str, Any]:
        """Feature activations of `text` ('<eot>' separates chat turns; or token ids, taken as they
        are) from one forward: the tokens (with template flags), the requested features' values and
        quantiles, each token's top ranked features and the text's top features. Runs the model: call
        it on the model's thread."""
        from lmpeek.capture.tokens import from_ids, tokenize
        from lmpeek.capture.trace import vocab_size

        e, features, src = self._online(source, features, rank, top)
        model = self.model
        if isinstance(text, str):
            tok = tokenize(model.tokenizer, text, model.context_length)
        else:
            tok = from_ids(model.tokenizer, text, model.context_length, vocab_size(model))
        template = template_flags(tok, text, getattr(model.tokenizer, "all_special_ids", None) or ())
        return self._answer(e, src, tok.token_ids, tok.tokens, template, text, features, rank, top,
                            exclude_template, tok.token_bytes)  # fmt: skip

    def _online(
        self, source: str, features: Sequence[int] | None, rank: str, top: int
    ) -> tuple[Entry, list[int] | None, Any]:
        """The checked arguments of a request on your text: its entry, features and loaded source."""
        if rank not in RANKS:
            raise InvalidInput(f"rank must be activation or quantile, got {rank!r}")
        top = validate.integer("top", top, 1, MAX_TOP)
        e = self._entry(source)
        if rank == "quantile" and e.db is None:
            raise InvalidInput(
                f"rank=quantile ranks by each activation's quantile in a corpus: {e.id} has no feature "
                f"database (serve one with --features DB), so rank by activation"
            )
        if features is not None:
            if len(features) > MAX_FEATURES:
                raise InvalidInput(f"at most {MAX_FEATURES} features per request, got {len(features)}")
            features = [validate.integer("feature", f, 0, e.n_features - 1) for f in features]
        return e, features, self._loaded(e)

    def _check_length(self, e: Entry, T: int) -> None:
        if T > MAX_TOKENS or T * e.n_features > MAX_VALUES:
            most = min(MAX_TOKENS, MAX_VALUES // max(e.n_features, 1))
            raise InvalidInput(
                f"text is {T} tokens; features of {e.id} ({e.n_features:,}) are computed for at most "
                f"{most:,} tokens at a time: shorten the text"
            )

    def _answer(
        self,
        e: Entry,
        src: Any,
        ids: np.ndarray,
        labels: list[str],
        template: np.ndarray,
        text: str,
        features: list[int] | None,
        rank: str,
        top: int,
        exclude_template: bool,
        pieces: list[bytes],
    ) -> dict[str, Any]:
        """`activations`' answer for tokens `ids` (shown as `labels`; `template`: flags; `pieces`: each
        token's exact bytes) from one forward over `ids` (a source that scores text alone reads `text`)."""
        from lmpeek import features as feats

        model = self.model
        T = len(ids)
        self._check_length(e, T)
        pair = (self.base_model, model) if getattr(src, "models", None) else None  # a crosscoder
        acts = feats.activations(pair or model, src, ids.tolist() if src.hooks else text)
        acts = np.asarray(acts, dtype=np.float32)
        dist = self._distribution(e) if e.db is not None else None
        leave = template if exclude_template else None
        rows = ~template if exclude_template else np.ones(T, dtype=bool)
        rows[0] = False  # the attention sink, as in the database's statistics
        chosen = [] if features is None else features
        values = acts[:, chosen].T  # [K, T]
        q = None
        if dist is not None:
            q = quantiles(dist, np.asarray(chosen, dtype=np.int64)[:, None], values)
        by_q = rank == "quantile"
        return {
            "tokens": [
                {"id": int(i), "label": lab, "template": bool(f)}
                for i, lab, f in zip(ids.tolist(), labels, template, strict=True)
            ],
            # as a trace envelope's: the page joins these, not the labels, for the text it copies (a BOS
            # and sentencepiece's prepended space have a label but no bytes of the text)
            "token_bytes": [b.hex() for b in pieces],
            "features": chosen,
            "values": values,  # [K, T] float32
            "quantiles": q,  # [K, T] float64, or None without a database
            "ranking": rank_tokens(acts, top, dist, by_q, leave),
            "top_features": top_over_text(acts, dist, by_q, rows),
        }

    # --- your text, continued by the model

    def generation(
        self,
        source: str,
        text: str,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        features: Sequence[int] | None = None,
        rank: str = "activation",
        top: int = 5,
        exclude_template: bool = False,
    ) -> Generator[int, None, dict[str, Any]]:
        """`text` continued by the model (a chat prompt: its template with the assistant turn opened),
        then `activations`' answer for the prompt and the response together, from one forward over the
        final ids, plus `prompt_tokens` (the response is tokens[prompt_tokens:], flagged `generated`),
        `response` (its text), `seed` and `stopped` ("eos" or "length"). Every argument is checked
        here; the returned generator then runs one generation step per `next` (yielding the new token
        id: the server runs it as a job that other requests can interleave with, and can cancel), and
        returns the answer. `generate` runs it to the end. Runs the model: on the model's thread."""
        from lmpeek.capture.generate import generate
        from lmpeek.capture.tokens import tokenize

        e, features, src = self._online(source, features, rank, top)
        if not src.hooks:
            raise InvalidInput(
                f"{e.id} scores text, not token ids: a generated response's exact tokens cannot be given to "
                f"it (run the prompt and the response as text instead)"
            )
        model = self.model
        tok = tokenize(model.tokenizer, text, model.context_length)
        new = validate.integer("max_new_tokens", max_new_tokens, 1, MAX_TOKENS)
        self._check_length(e, len(tok.token_ids) + new)
        gen = generate(model, text, max_new_tokens=new, temperature=temperature, top_p=top_p, top_k=top_k,
                       seed=seed, show_k=1)  # fmt: skip
        special = getattr(model.tokenizer, "all_special_ids", None) or ()
        return self._generate_steps(e, src, tok, text, gen, special, features, rank, top, exclude_template)

    def _generate_steps(
        self, e: Entry, src: Any, tok: Any, text: str, gen: Any, special: Any, features: list[int] | None,
        rank: str, top: int, exclude_template: bool,
    ) -> Generator[int, None, dict[str, Any]]:  # fmt: skip
        from lmpeek.capture.generate import _eos_ids

        ids: list[int] = []
        labels: list[str] = []
        pieces: list[bytes] = []
        try:
            for step in gen:
                ids.append(step.token_id)
                labels.append(step.token)  # as the Generate tab labels it (byte pieces as <0xC3>)
                pieces.append(step.token_bytes)
                yield step.token_id
        finally:
            gen.close()  # cancelled between steps: the KV cache goes now
        P = len(tok.token_ids)
        new = np.asarray(ids, dtype=np.int64)
        # the model's own words are not template, but an end-of-turn token it writes is the template's
        flags = np.concatenate([template_flags(tok, text, special), np.isin(new, list(special))])
        out = self._answer(e, src, np.concatenate([tok.token_ids, new]), [*tok.tokens, *labels], flags, text,
                           features, rank, top, exclude_template, [*tok.token_bytes, *pieces])  # fmt: skip
        return {
            **out,
            "prompt_tokens": P,
            "response": self.model.tokenizer.decode(ids, skip_special_tokens=True),
            "seed": gen.seed,
            "stopped": "eos" if ids and ids[-1] in _eos_ids(self.model) else "length",
        }

    def generate(self, source: str, text: str, **kwargs: Any) -> dict[str, Any]:
        """`generation` run to the end: its answer (see there)."""
        steps = self.generation(source, text, **kwargs)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value

    # --- crosscoders: the (base, chat) pair (features.crosscoder; server/routes_crosscoder.py)

    def _models(self, spec: Any) -> Any:
        """What `features.load` takes for `spec`: the pair (base, chat) for a crosscoder when a base
        model is loaded, else the served model (a crosscoder's hook names are then checked on it)."""
        from lmpeek.features import kind_for

        if self.base_model is not None and not callable(spec) and kind_for(spec).pair:
            return (self.base_model, self.model)
        return self.model

    def crosscoder(self, source: str) -> dict[str, Any]:
        """The crosscoder page's weights part (crosscoder.page_summary, with `online`: whether the pair
        is served), computed once per source; the weights alone are read when no model loaded them."""
        from lmpeek.features import crosscoder

        e = self._entry(source)
        if e.kind != "crosscoder":
            raise InvalidInput(f"{e.id} is a {e.kind} source: the crosscoder page needs a crosscoder")
        with self._lock:
            out = self._summaries.get(e.id)
        if out is None:
            if e.loaded is None and e.error is not None:
                raise NoModel(f"{e.id} cannot be read: {e.error}")
            src = e.loaded if e.loaded is not None else crosscoder.load(e.spec)  # no model: weights only
            out = {**crosscoder.page_summary(src), "source": e.id}
            with self._lock:
                self._summaries[e.id] = out
        return {**out, "online": self._why_offline(e) is None}

    def pair(self, source: str, text: str, features: Sequence[int] = ()) -> dict[str, Any]:
        """Both models on `text` (the chat model's tokens; '<eot>' turns through its chat template), one
        forward each: per feature its activation and each model's contribution per token
        (crosscoder.contributions), each model's hook-value norm per token. On the model's thread."""
        from lmpeek.capture.tokens import tokenize
        from lmpeek.features.crosscoder import contributions, pair_hooks

        summary = self.crosscoder(source)  # a crosscoder, or 400
        e = self._entry(source)
        if len(features) > MAX_PAIR_FEATURES:
            raise InvalidInput(f"at most {MAX_PAIR_FEATURES} features at a time, got {len(features)}")
        chosen = [validate.integer("feature", f, 0, e.n_features - 1) for f in features]
        if self.base_model is None:
            raise NoModel(f"{e.id} cannot be computed: {NO_BASE}")
        src = self._loaded(e)
        model = self.model
        tok = tokenize(model.tokenizer, text, model.context_length)
        if len(tok.token_ids) > MAX_TOKENS:
            raise InvalidInput(f"text is {len(tok.token_ids)} tokens; at most {MAX_TOKENS:,}: shorten it")
        parts = contributions(src, pair_hooks((self.base_model, model), src, tok.token_ids.tolist()), chosen)
        template = template_flags(tok, text, getattr(model.tokenizer, "all_special_ids", None) or ())
        return {
            "tokens": [
                {"id": int(i), "label": lab, "template": bool(f)}
                for i, lab, f in zip(tok.token_ids.tolist(), tok.tokens, template, strict=True)
            ],
            "features": chosen,
            "relative_norm": summary["relative_norm"][chosen],
            "class_of": [summary["class_of"][j] for j in chosen],
            **parts,
        }
