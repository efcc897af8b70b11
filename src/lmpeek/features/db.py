"""The feature database: one versioned SQLite file that `features.builder.build` writes and
`FeatureDB` reads (stdlib sqlite3; numpy only, no torch, no model needed to read it).

Format 1.1 (1.0 files are read too: their search index is built in memory when opened). Every number
array is a little-endian blob (int32 token ids, float32 activations, int64
counts). Tables:

    manifest(key, value)        JSON values: format_version, lmpeek_version, status ("building" |
                                "complete"), model {name, source, fingerprint}, tokenizer (its hash),
                                sources (as the table), corpus_inputs, corpus {inputs, hash (blake2b chain
                                over the sequences' int32 ids), documents}, tokens_run, tokens (positions
                                counted: "tokens seen"), build {tokens_limit, batch_size, shard_batches, k,
                                context [left, right], seq_len, skip_first, quantiles, per_bin, sample_size,
                                seed, hist_edges (finite; the last bin runs to inf), correlations (the largest
                                source correlated), n_correlated, n_logits}; no timestamps, so the same
                                build gives the same file contents. A crosscoder build adds base_model
                                {name, source, fingerprint} ("model" is then the chat model, whose
                                tokenizer read the corpus), and its crosscoder sources say
                                logits_model: "chat" (their logits: the chat-side decoder rows)
    sources(source, name, kind, spec, hooks, n_features, hash, logits, correlations)
    documents(doc, tokens, n_tokens, path, part)
                                every sequence the model ran, once: token ids (int32 blob); `path` is
                                the file (":line" for jsonl, ":row" for parquet) and `part` the piece
    vocab(token, label, bytes)  display label and exact bytes of every token id the file mentions
    features(source, feature, n, count, count_neg, sum, sum_sq, max, min, density, hist_first, hist)
                                over the n counted positions: count of activations > 0 (count_neg: < 0),
                                sum and sum of squares (float64), max, min, density = count / n, and the
                                histogram of the activations > 0 over the manifest's hist_edges: bins
                                hist_first .. hist_first + len - 1 as int64 counts (the rest are 0)
    quantile_bins(source, feature, bin, lo, hi, count)
                                the activations > 0 split at their quantiles (equal shares of `count`,
                                as near as the histogram's edges allow): bin b holds lo < a < hi for
                                b = 0, lo <= a < hi for inner bins and lo <= a <= hi (= max) for the last;
                                `count` is exact (from the histogram), count / n is its share of tokens
    examples(source, feature, kind, bin, rank, score, doc, pos, start, length, nz_offsets, nz_values)
                                kind "top": the k largest activations > 0 (bin 0; ties: earlier doc and
                                position first); kind "quantile": up to per_bin uniform random samples
                                from each quantile bin. score = the activation at (doc, pos). The
                                feature's activations on the window doc[start : start + length]
                                (pos - context.left .. pos + context.right, inside the counted part of
                                the document) are stored sparsely: the window offsets of the non-zero
                                values (uint16) and the values (float32), every other position 0; or,
                                when most are non-zero, densely: no offsets and `length` values
    logits(source, feature, top_ids, top_values, bottom_ids, bottom_values, hist, hist_lo, hist_hi)
                                the feature's direct effect on the logits (see builder.directions): the
                                n_logits largest and smallest, and a 50-bin histogram of all V values
    correlations(source, feature, rank, other, pearson, cosine)
                                the most correlated other features of the same source over the counted
                                positions (Pearson), with the cosine of the two activation vectors
    state(key, value)           the builder's checkpoint (numpy .npy blobs); emptied when complete
    labels(source, feature, label, notes)
                                (1.1) what users wrote about a feature; empty after a build. The only
                                table a reader writes (`FeatureDB.set_label`); a read-only file's labels
                                go to a JSON sidecar instead (`labels_sidecar`)
    search                      (1.1) an FTS5 index, one row per feature with a label, notes or top
                                examples: rowid = source << 32 | feature; columns label, notes and
                                token (the labels of the tokens at `pos` of its top examples, best
                                first, repeated as often as they peak), so `token:def` finds features
                                peaking on "def" and plain words search all three columns

A reader refuses a file whose format has a newer major version than it knows (naming the lmpeek
that wrote it), and a file whose build has not finished.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lmpeek.errors import InvalidInput, LmpeekError, SourceNotFound

FORMAT_VERSION = "1.1"
MAJOR = 1

# The activation histogram's fixed edges, shared by every feature (so no warm-up decides them and a
# resumed or merged build bins exactly as a one-shot one): (0, 1e-4), then 16 bins per decade up to
# 1e4 (each 15.5 % wide), then [1e4, inf). Activations <= 0 are not binned (count_neg, min).
HIST_EDGES = np.concatenate([[0.0], np.geomspace(1e-4, 1e4, 8 * 16 + 1), [np.inf]])

SCHEMA = """
CREATE TABLE manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sources (source INTEGER PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, spec TEXT,
    hooks TEXT NOT NULL, n_features INTEGER NOT NULL, hash TEXT NOT NULL, logits INTEGER NOT NULL,
    correlations INTEGER NOT NULL);
CREATE TABLE documents (doc INTEGER PRIMARY KEY, tokens BLOB NOT NULL, n_tokens INTEGER NOT NULL,
    path TEXT NOT NULL, part INTEGER NOT NULL);
CREATE TABLE vocab (token INTEGER PRIMARY KEY, label TEXT NOT NULL, bytes BLOB NOT NULL);
CREATE TABLE features (source INTEGER NOT NULL, feature INTEGER NOT NULL, n INTEGER NOT NULL,
    count INTEGER NOT NULL, count_neg INTEGER NOT NULL, sum REAL NOT NULL, sum_sq REAL NOT NULL,
    max REAL, min REAL, density REAL NOT NULL, hist_first INTEGER NOT NULL, hist BLOB NOT NULL,
    PRIMARY KEY (source, feature)) WITHOUT ROWID;
CREATE TABLE quantile_bins (source INTEGER NOT NULL, feature INTEGER NOT NULL, bin INTEGER NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (source, feature, bin)) WITHOUT ROWID;
CREATE TABLE examples (source INTEGER NOT NULL, feature INTEGER NOT NULL, kind TEXT NOT NULL,
    bin INTEGER NOT NULL, rank INTEGER NOT NULL, score REAL NOT NULL, doc INTEGER NOT NULL,
    pos INTEGER NOT NULL, start INTEGER NOT NULL, length INTEGER NOT NULL, nz_offsets BLOB NOT NULL,
    nz_values BLOB NOT NULL, PRIMARY KEY (source, feature, kind, bin, rank)) WITHOUT ROWID;
CREATE INDEX examples_doc ON examples (doc);
CREATE TABLE logits (source INTEGER NOT NULL, feature INTEGER NOT NULL, top_ids BLOB NOT NULL,
    top_values BLOB NOT NULL, bottom_ids BLOB NOT NULL, bottom_values BLOB NOT NULL, hist BLOB NOT NULL,
    hist_lo REAL NOT NULL, hist_hi REAL NOT NULL, PRIMARY KEY (source, feature)) WITHOUT ROWID;
CREATE TABLE correlations (source INTEGER NOT NULL, feature INTEGER NOT NULL, rank INTEGER NOT NULL,
    other INTEGER NOT NULL, pearson REAL NOT NULL, cosine REAL NOT NULL,
    PRIMARY KEY (source, feature, rank)) WITHOUT ROWID;
CREATE TABLE state (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE labels (source INTEGER NOT NULL, feature INTEGER NOT NULL, label TEXT NOT NULL,
    notes TEXT NOT NULL, PRIMARY KEY (source, feature)) WITHOUT ROWID;
CREATE VIRTUAL TABLE search USING fts5(label, notes, token);
"""
LABELS_SCHEMA = """CREATE TABLE IF NOT EXISTS {schema}.labels (source INTEGER NOT NULL,
    feature INTEGER NOT NULL, label TEXT NOT NULL, notes TEXT NOT NULL, PRIMARY KEY (source, feature))
    WITHOUT ROWID"""
SEARCH_SCHEMA = "CREATE VIRTUAL TABLE {schema}.search USING fts5(label, notes, token)"

TABLES = (
    "manifest",
    "sources",
    "documents",
    "vocab",
    "features",
    "quantile_bins",
    "examples",
    "logits",
    "correlations",
    "state",
    "labels",
)  # and `search`, the FTS5 index (a virtual table made from examples, vocab and labels)


# --- blobs ------------------------------------------------------------------------------------------


def blob(array: Any, dtype: str) -> bytes:
    """A little-endian blob of `array` as `dtype` ("<i4", "<f4", "<i8", "<u2", ...)."""
    return np.ascontiguousarray(array, dtype=np.dtype(dtype)).tobytes()


def unblob(data: bytes, dtype: str) -> np.ndarray:
    return np.frombuffer(data, dtype=np.dtype(dtype)).astype(np.dtype(dtype).newbyteorder("="))


def npy(array: np.ndarray) -> bytes:
    """An array as .npy bytes (dtype and shape kept exactly; for the checkpoint)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def from_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def window(length: int, offsets: bytes, values: bytes) -> np.ndarray:
    """An example's window activations [length] from its stored blobs (sparse, or dense: no offsets)."""
    v = unblob(values, "<f4")
    if not offsets and len(v) == length:
        return v
    acts = np.zeros(length, dtype=np.float32)
    acts[unblob(offsets, "<u2").astype(np.int64)] = v
    return acts


# --- the file ---------------------------------------------------------------------------------------


def create(path: Path) -> sqlite3.Connection:
    """A new, empty database at `path` (which must not exist)."""
    conn = sqlite3.connect(str(path))
    conn.executescript(SCHEMA)
    conn.commit()
    return conn


def connect(path: Any) -> sqlite3.Connection:
    """An existing feature database, or a one-line error saying what `path` is instead."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SourceNotFound(f"feature database {str(path)!r} does not exist")
    try:
        # check_same_thread=False: the server reads one file from its worker threads; FeatureDB
        # serialises every use of the connection with its own lock
        conn = sqlite3.connect(f"file:{p}?mode=rw", uri=True, check_same_thread=False)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise InvalidInput(f"{path} is not an lmpeek feature database ({err})") from None
    if "manifest" not in names:
        conn.close()
        raise InvalidInput(f"{path} is not an lmpeek feature database (it has no manifest table)")
    return conn


def read_manifest(conn: sqlite3.Connection) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM manifest ORDER BY key")}


def write_manifest(conn: sqlite3.Connection, values: dict[str, Any]) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO manifest (key, value) VALUES (?, ?)",
        [(k, json.dumps(v, sort_keys=True, allow_nan=False)) for k, v in values.items()],
    )


def check_version(manifest: dict[str, Any], path: Any) -> None:
    """Refuse a format this lmpeek cannot read, naming the lmpeek version that wrote it."""
    from lmpeek import __version__

    version = str(manifest.get("format_version", ""))
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise InvalidInput(f"{path} has no readable format version ({version!r})") from None
    if major > MAJOR:
        writer = manifest.get("lmpeek_version", "a newer version")
        raise InvalidInput(
            f"{path} is feature database format {version}, written by lmpeek {writer}; this lmpeek "
            f"({__version__}) reads format {MAJOR}.x: upgrade to lmpeek {writer} or newer to read it"
        )


# --- search and labels --------------------------------------------------------------------------------


def search_rowid(source: int, feature: int) -> int:
    return (int(source) << 32) | int(feature)


def peak_tokens(conn: sqlite3.Connection) -> dict[tuple[int, int], np.ndarray]:
    """(source, feature) -> the token ids at `pos` of its top examples, best first."""
    docs = {d: unblob(t, "<i4") for d, t in conn.execute("SELECT doc, tokens FROM documents")}
    rows = np.asarray(
        conn.execute(
            "SELECT source, feature, doc, pos FROM examples WHERE kind = 'top' ORDER BY source, feature, rank"
        ).fetchall(),
        dtype=np.int64,
    ).reshape(-1, 4)
    if not len(rows):
        return {}
    order = sorted(docs)  # every document once, concatenated: one gather for all peaks
    start = dict(zip(order, np.cumsum([0] + [len(docs[d]) for d in order[:-1]]).tolist(), strict=True))
    flat = np.concatenate([docs[d] for d in order])
    ids = flat[np.asarray([start[d] for d in rows[:, 2].tolist()], dtype=np.int64) + rows[:, 3]]
    key = rows[:, 0] * (1 << 32) + rows[:, 1]
    cut = np.flatnonzero(np.r_[True, key[1:] != key[:-1], True])
    return {
        (int(rows[a, 0]), int(rows[a, 1])): ids[a:b]
        for a, b in zip(cut[:-1].tolist(), cut[1:].tolist(), strict=True)
    }


def fill_search(
    conn: sqlite3.Connection,
    schema: str = "main",
    labels: dict[tuple[int, int], tuple[str, str]] | None = None,
) -> None:
    """Fill `schema`.search (empty, created) from the top examples, the vocabulary and `labels`
    ((source, feature) -> (label, notes); default: the labels table, when there is one)."""
    if labels is None:
        labels = read_labels(conn)
    vocab = dict(conn.execute("SELECT token, label FROM vocab"))
    peaks = peak_tokens(conn)
    rows = []
    for key in sorted(set(peaks) | set(labels)):
        label, notes = labels.get(key, ("", ""))
        token = " ".join(vocab.get(int(t), "") for t in peaks.get(key, ()))
        rows.append((search_rowid(*key), label, notes, token))
    conn.executemany(f"INSERT INTO {schema}.search (rowid, label, notes, token) VALUES (?, ?, ?, ?)", rows)


def read_labels(conn: sqlite3.Connection, schema: str = "main") -> dict[tuple[int, int], tuple[str, str]]:
    """(source, feature) -> (label, notes) from `schema`.labels ({} when the file has no such table)."""
    has = conn.execute(
        f"SELECT 1 FROM {schema}.sqlite_master WHERE type = 'table' AND name = 'labels'"
    ).fetchone()
    if has is None:
        return {}
    return {(s, f): (lab, notes) for s, f, lab, notes in conn.execute(f"SELECT * FROM {schema}.labels")}


class LabelsNotWritable(LmpeekError):
    """Labels could be stored neither in the database file nor in a sidecar file."""

    status_code = 409


def _writable(path: Path) -> bool:
    # SQLite writes a journal next to the file: the folder must be writable too
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def labels_sidecar(path: Any) -> Path:
    """Where the labels of a read-only database go: `<file>.labels.json` next to it when its folder
    is writable, else <lmpeek cache>/feature-labels/<name>-<hash of its path>.json."""
    p = Path(path).expanduser().resolve()
    if os.access(p.parent, os.W_OK):
        return p.with_name(p.name + ".labels.json")
    from lmpeek.models.cache import cache_dir

    digest = hashlib.blake2b(str(p).encode(), digest_size=8).hexdigest()
    return cache_dir() / "feature-labels" / f"{p.stem}-{digest}.json"


def _valid_text(name: str, value: Any) -> None:
    """A str SQLite can store: valid Unicode (no lone surrogates, which UTF-8 cannot encode)."""
    if not isinstance(value, str):
        raise InvalidInput(f"{name} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInput(
            f"{name} is not valid Unicode (a lone surrogate at character {err.start})"
        ) from None


def _fts_error(query: str, err: Exception) -> InvalidInput:
    return InvalidInput(
        f'search {query[:100]!r} is not a valid query ({err}): use words, "quoted phrases", AND / OR / NOT, '
        f"prefix*, token:WORD (features peaking on that token), label:WORD or notes:WORD; put words with "
        f"punctuation in double quotes"
    )


# --- reading ----------------------------------------------------------------------------------------

SORTS = ("feature", "density", "max", "count", "mean")
LIST_SORTS = (*SORTS, "relevance")  # relevance: the search's bm25 rank (feature order without a query)


def _locked(method):
    """Run `method` holding the database's lock (one connection, used from several threads)."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return run


class FeatureDB:
    """A built feature database, read-only except for labels.

    db = FeatureDB("features.db")            # tokenizer=...: labels from it instead of the file's
    db.manifest                              # dict (see the module docstring)
    db.sources                               # [{source, name, kind, hooks, n_features, ...}]
    db.features(sort="density")              # [{feature, count, density, max, mean, ...}], source 0
    db.feature(12)                           # everything about feature 12 (stats, histogram,
                                             # quantile bins, logits, correlations, examples)
    db.examples(12, "top")                   # [{score, doc, pos, tokens, acts, ...}]
    db.query(q="token:def", sort="max")      # (total, a page of rows with label and top_tokens)
    db.set_label(12, "Python keywords")      # stored in the file (or a sidecar: read-only files)
    db.distribution()                        # every feature's corpus histogram, for quantiles

    Safe to use from several threads (one lock around the connection).
    """

    def __init__(self, path: Any, tokenizer: Any = None):
        self.path = str(path)
        self._conn = connect(path)
        try:
            self.manifest = read_manifest(self._conn)
            check_version(self.manifest, path)
            if self.manifest.get("status") != "complete":
                raise InvalidInput(
                    f"{path} is a feature build that has not finished (run the same build again to resume it)"
                )
        except Exception:
            self._conn.close()
            raise
        self.tokenizer = tokenizer  # what labels tokens, also for exports (formats.to_td_dict)
        self._label = None
        if tokenizer is not None:
            from lmpeek.capture.tokens import token_labels_fn

            self._label = token_labels_fn(tokenizer)
        self._labels: dict[int, str] | None = None
        self._lock = threading.RLock()
        self._search: str | None = None  # the schema holding the search index, once opened
        self._user_labels: dict[tuple[int, int], tuple[str, str]] | None = None
        self._docs: dict[int, np.ndarray] = {}
        self.sources = [
            {
                "source": s,
                "name": n,
                "kind": k,
                "spec": spec,
                "hooks": json.loads(h),
                "n_features": f,
                "hash": hsh,
                "logits": bool(lg),
                "correlations": bool(c),
            }
            for s, n, k, spec, h, f, hsh, lg, c in self._conn.execute(
                "SELECT source, name, kind, spec, hooks, n_features, hash, logits, correlations "
                "FROM sources ORDER BY source"
            )
        ]
        # the stored edges end at the last finite one; the last bin is [last, inf)
        self.hist_edges = np.r_[np.asarray(self.manifest["build"]["hist_edges"], dtype=np.float64), np.inf]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> FeatureDB:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        names = ", ".join(s["name"] for s in self.sources)
        return f"FeatureDB({self.path!r}: {names}; {self.manifest.get('tokens')} tokens)"

    # --- helpers

    def _source(self, source: int | str) -> dict[str, Any]:
        for s in self.sources:
            if source in (s["source"], s["name"]):
                return s
        names = ", ".join(f"{s['source']} ({s['name']})" for s in self.sources)
        raise InvalidInput(f"no source {source!r} in {self.path}; it has {names}")

    def _feature_index(self, source: dict[str, Any], feature: Any) -> int:
        from lmpeek import validate

        return validate.integer("feature", feature, 0, source["n_features"] - 1)

    @_locked
    def labels(self, ids: Any) -> list[str]:
        """Display labels of token ids: the tokenizer's when one was given, else the file's."""
        ids = [int(i) for i in ids]
        if self._label is not None:
            return [self._label(i) for i in ids]
        if self._labels is None:
            self._labels = dict(self._conn.execute("SELECT token, label FROM vocab"))
        return [self._labels.get(i, f"<{i}>") for i in ids]

    @_locked
    def document(self, doc: int) -> np.ndarray:
        """A stored sequence's token ids (int32)."""
        row = self._conn.execute("SELECT tokens FROM documents WHERE doc = ?", (int(doc),)).fetchone()
        if row is None:
            raise InvalidInput(f"no document {doc} in {self.path}")
        return unblob(row[0], "<i4")

    # --- the API

    @_locked
    def features(
        self,
        sort: str = "feature",
        source: int | str = 0,
        descending: bool | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """One summary row per feature of `source`, sorted by `sort` (one of SORTS; descending by default
        except for "feature")."""
        if sort not in SORTS:
            raise InvalidInput(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
        s = self._source(source)
        desc = sort != "feature" if descending is None else descending
        key = "sum / n" if sort == "mean" else sort
        order = f"{key} {'DESC' if desc else 'ASC'}, feature ASC"
        sql = (
            "SELECT feature, count, density, max, min, sum / n FROM features WHERE source = ? "
            f"ORDER BY {order}" + (" LIMIT ?" if limit is not None else "")
        )
        args = (s["source"],) + ((int(limit),) if limit is not None else ())
        return [
            {"feature": f, "count": c, "density": d, "max": mx, "min": mn, "mean": mean}
            for f, c, d, mx, mn, mean in self._conn.execute(sql, args)
        ]

    @_locked
    def feature(self, i: int, source: int | str = 0) -> dict[str, Any]:
        """Everything stored about feature `i` of `source`."""
        s = self._source(source)
        i = self._feature_index(s, i)
        key = (s["source"], i)
        row = self._conn.execute(
            "SELECT n, count, count_neg, sum, sum_sq, max, min, density, hist_first, hist FROM features "
            "WHERE source = ? AND feature = ?",
            key,
        ).fetchone()
        n, count, count_neg, total, total_sq, mx, mn, density, first, hist = row
        counts = unblob(hist, "<i8")
        mean = total / n if n else 0.0
        out: dict[str, Any] = {
            "source": s["name"],
            "feature": i,
            "n": n,
            "count": count,
            "count_neg": count_neg,
            "density": density,
            "sum": total,
            "mean": mean,
            "std": float(np.sqrt(max(total_sq / n - mean * mean, 0.0))) if n else 0.0,
            "max": mx,
            "min": mn,
            "histogram": {
                "edges": self.hist_edges[first : first + len(counts) + 1].tolist(),
                "counts": counts.tolist(),
            },
            "quantile_bins": [
                {"bin": b, "lo": lo, "hi": hi, "count": c, "share": c / n if n else 0.0}
                for b, lo, hi, c in self._conn.execute(
                    "SELECT bin, lo, hi, count FROM quantile_bins WHERE source = ? AND feature = ? "
                    "ORDER BY bin",
                    key,
                )
            ],
            "logits": None,
            "correlated": [
                {"feature": o, "pearson": p, "cosine": c}
                for o, p, c in self._conn.execute(
                    "SELECT other, pearson, cosine FROM correlations WHERE source = ? AND feature = ? "
                    "ORDER BY rank",
                    key,
                )
            ],
        }
        lg = self._conn.execute(
            "SELECT top_ids, top_values, bottom_ids, bottom_values, hist, hist_lo, hist_hi FROM logits "
            "WHERE source = ? AND feature = ?",
            key,
        ).fetchone()
        if lg is not None:
            top, bottom = unblob(lg[0], "<i4"), unblob(lg[2], "<i4")
            out["logits"] = {
                "top": [
                    {"token": int(t), "label": lab, "value": float(v)}
                    for t, lab, v in zip(top, self.labels(top), unblob(lg[1], "<f4"), strict=True)
                ],
                "bottom": [
                    {"token": int(t), "label": lab, "value": float(v)}
                    for t, lab, v in zip(bottom, self.labels(bottom), unblob(lg[3], "<f4"), strict=True)
                ],
                "histogram": {"counts": unblob(lg[4], "<i4").tolist(), "lo": lg[5], "hi": lg[6]},
            }
        out["examples"] = {kind: self.examples(i, kind, s["source"]) for kind in ("top", "quantile")}
        return out

    @_locked
    def examples(self, i: int, kind: str = "top", source: int | str = 0) -> list[dict[str, Any]]:
        """Feature `i`'s examples of `kind` ("top" or "quantile"), best first (quantile: by bin, then
        rank). Each: score, doc, pos, bin, rank, the window's token ids and labels (`tokens`), its
        activations (`acts`, float, 0 where the feature is off), `start` (the window's first position
        in the document) and `index` (pos's index in the window)."""
        if kind not in ("top", "quantile"):
            raise InvalidInput(f"kind must be 'top' or 'quantile', got {kind!r}")
        s = self._source(source)
        i = self._feature_index(s, i)
        rows = self._conn.execute(
            "SELECT e.bin, e.rank, e.score, e.doc, e.pos, e.start, e.length, e.nz_offsets, e.nz_values, "
            "d.tokens FROM examples e JOIN documents d ON d.doc = e.doc "
            "WHERE e.source = ? AND e.feature = ? AND e.kind = ? ORDER BY e.bin, e.rank",
            (s["source"], i, kind),
        ).fetchall()
        out = []
        for b, rank, score, doc, pos, start, length, offsets, values, tokens in rows:
            acts = window(length, offsets, values)
            ids = unblob(tokens, "<i4")[start : start + length]
            out.append(
                {
                    "bin": b,
                    "rank": rank,
                    "score": score,
                    "doc": doc,
                    "pos": pos,
                    "start": start,
                    "index": pos - start,
                    "token_ids": ids.tolist(),
                    "tokens": self.labels(ids),
                    "acts": acts.tolist(),
                }
            )
        return out

    @_locked
    def document_info(self, doc: int) -> dict[str, Any]:
        """A stored sequence whole: {doc, path, part, token_ids, tokens} (`tokens`: display labels)."""
        row = self._conn.execute(
            "SELECT tokens, path, part FROM documents WHERE doc = ?", (int(doc),)
        ).fetchone()
        if row is None:
            n = self._conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
            raise InvalidInput(f"no document {doc} in {self.path} (it has documents 0 to {n - 1})")
        ids = unblob(row[0], "<i4")
        return {"doc": int(doc), "path": row[1], "part": row[2], "token_ids": ids.tolist(),
                "tokens": self.labels(ids)}  # fmt: skip

    # --- search, labels, distributions

    def _open_search(self) -> str:
        """The schema whose `search` table to query: the file's own (format 1.1, writable), or an
        in-memory copy (a 1.0 file: built from its top examples; a read-only file: its labels live in
        the sidecar, which the file's index does not know)."""
        if self._search is not None:
            return self._search
        path = Path(self.path).expanduser()
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        labels = read_labels(self._conn)
        self._writable = _writable(path)
        if not self._writable:
            side = labels_sidecar(path)
            if side.is_file():
                labels |= _read_sidecar(side, self.sources)
        self._user_labels = labels
        if "search" in tables and self._writable:
            self._search = "main"
            return "main"
        try:
            self._conn.execute("ATTACH DATABASE ':memory:' AS mem")
        except sqlite3.OperationalError as err:
            if "already in use" not in str(err):
                raise
        self._conn.execute(SEARCH_SCHEMA.format(schema="mem"))
        if "search" in tables:  # a read-only 1.1 file: its index, then the sidecar's labels over it
            self._conn.execute(
                "INSERT INTO mem.search (rowid, label, notes, token) SELECT rowid, label, notes, token "
                "FROM main.search"
            )
            for (s, f), (label, notes) in labels.items():
                self._put_search("mem", s, f, label, notes)
        else:
            fill_search(self._conn, "mem", labels)
        self._search = "mem"
        return "mem"

    def _put_search(self, schema: str, source: int, feature: int, label: str, notes: str) -> None:
        rowid = search_rowid(source, feature)
        row = self._conn.execute(f"SELECT token FROM {schema}.search WHERE rowid = ?", (rowid,)).fetchone()
        self._conn.execute(f"DELETE FROM {schema}.search WHERE rowid = ?", (rowid,))
        token = row[0] if row is not None else ""
        if label or notes or token:
            self._conn.execute(
                f"INSERT INTO {schema}.search (rowid, label, notes, token) VALUES (?, ?, ?, ?)",
                (rowid, label, notes, token),
            )

    @_locked
    def label(self, i: int, source: int | str = 0) -> dict[str, str]:
        """{"label", "notes"} users wrote for feature `i` ("" when none)."""
        s = self._source(source)
        i = self._feature_index(s, i)
        self._open_search()
        assert self._user_labels is not None
        label, notes = self._user_labels.get((s["source"], i), ("", ""))
        return {"label": label, "notes": notes}

    @_locked
    def set_label(self, i: int, label: str, notes: str = "", source: int | str = 0) -> Path:
        """Store a label and notes for feature `i` (both empty: remove them), searchable at once;
        returns the file they went to: the database, or its sidecar when the database is read-only."""
        s = self._source(source)
        i = self._feature_index(s, i)
        for name, value in (("label", label), ("notes", notes)):
            _valid_text(name, value)
        schema = self._open_search()
        assert self._user_labels is not None
        key = (s["source"], i)
        labels = dict(self._user_labels)
        if label or notes:
            labels[key] = (label, notes)
        else:
            labels.pop(key, None)
        path = Path(self.path).expanduser()
        where = path
        try:
            if self._writable:
                self._conn.execute(LABELS_SCHEMA.format(schema="main"))  # a 1.0 file gets the table
                self._conn.execute("DELETE FROM labels WHERE source = ? AND feature = ?", key)
                if label or notes:
                    self._conn.execute("INSERT INTO labels VALUES (?, ?, ?, ?)", (*key, label, notes))
            else:
                where = labels_sidecar(path)
                _write_sidecar(where, labels, self.sources)
            self._put_search(schema, *key, label, notes)
            self._conn.commit()
        except (sqlite3.OperationalError, OSError) as err:
            self._conn.rollback()
            raise LabelsNotWritable(f"could not store the label of feature {i} in {where}: {err}") from None
        self._user_labels = labels
        return where

    @_locked
    def query(
        self,
        source: int | str = 0,
        q: str = "",
        sort: str = "feature",
        descending: bool | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(how many features match, one page of them): `q` is an FTS5 query over labels, notes and
        peak tokens (empty: every feature); rows sorted by `sort` (LIST_SORTS; descending by default
        except "feature"), each with its label and `top_tokens` (see `top_tokens`)."""
        if sort not in LIST_SORTS:
            raise InvalidInput(f"sort must be one of {', '.join(LIST_SORTS)}, got {sort!r}")
        _valid_text("q", q)
        s = self._source(source)
        sid = s["source"]
        offset = int(offset)
        limit = int(limit)
        q = q.strip()
        desc = sort not in ("feature", "relevance") if descending is None else descending
        direction = "DESC" if desc else "ASC"
        key = {"mean": "f.sum / f.n", "relevance": "m.score" if q else "f.feature"}.get(sort, f"f.{sort}")
        columns = "f.feature, f.count, f.density, f.max, f.min, f.sum / f.n"
        schema = self._open_search()
        if q:
            # bm25 is lower for better matches: "relevance" ascending lists the best first
            if sort == "relevance":
                direction = "DESC" if descending else "ASC"
            matched = (
                f"WITH m AS (SELECT rowid - ? AS feature, bm25(search) AS score FROM {schema}.search "
                "WHERE search MATCH ? AND rowid BETWEEN ? AND ?) "
            )
            args: tuple = (search_rowid(sid, 0), q, search_rowid(sid, 0), search_rowid(sid, 0xFFFFFFFF))
            body = "FROM m JOIN features f ON f.source = ? AND f.feature = m.feature"
            try:
                total = self._conn.execute(f"{matched}SELECT COUNT(*) {body}", (*args, sid)).fetchone()[0]
                order = f"ORDER BY {key} {direction}, f.feature ASC"
                rows = self._conn.execute(
                    f"{matched}SELECT {columns} {body} {order} LIMIT ? OFFSET ?",
                    (*args, sid, limit, offset),
                ).fetchall()
            except sqlite3.OperationalError as err:
                raise _fts_error(q, err) from None
        else:
            total = self._conn.execute("SELECT COUNT(*) FROM features WHERE source = ?", (sid,)).fetchone()[0]
            rows = self._conn.execute(
                f"SELECT {columns} FROM features f WHERE f.source = ? ORDER BY {key} {direction}, "
                "f.feature ASC LIMIT ? OFFSET ?",
                (sid, limit, offset),
            ).fetchall()
        assert self._user_labels is not None
        peaks = self.top_tokens([r[0] for r in rows], sid)
        items = [
            {
                "feature": f,
                "count": c,
                "density": d,
                "max": mx,
                "min": mn,
                "mean": mean,
                "label": self._user_labels.get((sid, f), ("", ""))[0],
                "top_tokens": peaks[f],
            }
            for f, c, d, mx, mn, mean in rows
        ]
        return int(total), items

    def _document(self, doc: int) -> np.ndarray:
        ids = self._docs.get(doc)
        if ids is None:
            if len(self._docs) > 4096:
                self._docs.clear()
            ids = self._docs[doc] = self.document(doc)
        return ids

    @_locked
    def top_tokens(self, features: Any, source: int | str = 0, n: int = 5) -> dict[int, list[str]]:
        """feature -> the labels of the tokens at its top examples' peaks (`pos`), distinct, best
        example first, at most n."""
        s = self._source(source)
        feats = [int(f) for f in features]
        out: dict[int, list[str]] = {f: [] for f in feats}
        if not feats:
            return out
        rows = self._conn.execute(
            f"SELECT feature, doc, pos FROM examples WHERE source = ? AND kind = 'top' AND feature IN "
            f"({', '.join('?' * len(feats))}) ORDER BY feature, rank",
            (s["source"], *feats),
        ).fetchall()
        for f, doc, pos in rows:
            label = self.labels([self._document(doc)[pos]])[0]
            if label not in out[f] and len(out[f]) < n:
                out[f].append(label)
        return out

    @_locked
    def distribution(self, source: int | str = 0) -> dict[str, np.ndarray]:
        """Every feature's corpus distribution as stored, dense: n, count (> 0), count_neg, max, min
        ([F]; max/min NaN where n is 0) and `cum` [F, B + 1] float64, the cumulative histogram of the
        activations > 0 over `hist_edges` (B bins; cum[:, b] = how many lie in bins before b)."""
        s = self._source(source)
        F, B = s["n_features"], len(self.hist_edges) - 1
        out = {k: np.zeros(F) for k in ("n", "count", "count_neg")}
        out |= {k: np.full(F, np.nan) for k in ("max", "min")}
        hist = np.zeros((F, B), dtype=np.float64)
        for f, n, c, cn, mx, mn, first, h in self._conn.execute(
            "SELECT feature, n, count, count_neg, max, min, hist_first, hist FROM features WHERE source = ?",
            (s["source"],),
        ):
            out["n"][f], out["count"][f], out["count_neg"][f] = n, c, cn
            out["max"][f] = np.nan if mx is None else mx
            out["min"][f] = np.nan if mn is None else mn
            counts = unblob(h, "<i8")
            hist[f, first : first + len(counts)] = counts
        out["cum"] = np.concatenate([np.zeros((F, 1)), np.cumsum(hist, axis=1)], axis=1)
        return out


def _read_sidecar(path: Path, sources: list[dict[str, Any]]) -> dict[tuple[int, int], tuple[str, str]]:
    """A sidecar's labels: {"labels": {source name: {feature: {"label", "notes"}}}} (unknown sources
    and unreadable files are skipped: labels are never worth refusing a database for)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    index = {s["name"]: s["source"] for s in sources}
    out = {}
    for name, feats in (data.get("labels") or {}).items() if isinstance(data, dict) else ():
        if name in index and isinstance(feats, dict):
            for f, v in feats.items():
                if str(f).isdigit() and isinstance(v, dict):
                    out[(index[name], int(f))] = (str(v.get("label", "")), str(v.get("notes", "")))
    return out


def _write_sidecar(
    path: Path, labels: dict[tuple[int, int], tuple[str, str]], sources: list[dict[str, Any]]
) -> None:
    names = {s["source"]: s["name"] for s in sources}
    data: dict[str, dict[str, dict[str, str]]] = {}
    for (s, f), (label, notes) in sorted(labels.items()):
        data.setdefault(names[s], {})[str(f)] = {"label": label, "notes": notes}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"format": 1, "labels": data}, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a crash leaves the old file or the new one
