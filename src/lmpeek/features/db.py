"""The feature database: one versioned SQLite file that `features.builder.build` writes and
`FeatureDB` reads (stdlib sqlite3; numpy only, no torch, no model needed to read it).

Format 1.0. Every number array is a little-endian blob (int32 token ids, float32 activations, int64
counts). Tables:

    manifest(key, value)        JSON values: format_version, lmpeek_version, status ("building" |
                                "complete"), model {name, source, fingerprint}, tokenizer (its hash),
                                sources (as the table), corpus_inputs, corpus {inputs, hash (blake2b chain
                                over the sequences' int32 ids), documents}, tokens_run, tokens (positions
                                counted: "tokens seen"), build {tokens_limit, batch_size, k, context
                                [left, right], seq_len, skip_first, quantiles, per_bin, sample_size, seed,
                                hist_edges (finite; the last bin runs to inf), correlations (the largest
                                source correlated), n_correlated, n_logits}; no timestamps, so the same
                                build gives the same file contents
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

A reader refuses a file whose format has a newer major version than it knows (naming the lmpeek
that wrote it), and a file whose build has not finished.
"""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from lmpeek.errors import InvalidInput, SourceNotFound

FORMAT_VERSION = "1.0"
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
"""

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
)


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
        conn = sqlite3.connect(f"file:{p}?mode=rw", uri=True)
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


# --- reading ----------------------------------------------------------------------------------------

SORTS = ("feature", "density", "max", "count", "mean")


class FeatureDB:
    """A built feature database, read-only.

    db = FeatureDB("features.db")            # tokenizer=...: labels from it instead of the file's
    db.manifest                              # dict (see the module docstring)
    db.sources                               # [{source, name, kind, hooks, n_features, ...}]
    db.features(sort="density")              # [{feature, count, density, max, mean, ...}], source 0
    db.feature(12)                           # everything about feature 12 (stats, histogram,
                                             # quantile bins, logits, correlations, examples)
    db.examples(12, "top")                   # [{score, doc, pos, tokens, acts, ...}]
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

    def labels(self, ids: Any) -> list[str]:
        """Display labels of token ids: the tokenizer's when one was given, else the file's."""
        ids = [int(i) for i in ids]
        if self._label is not None:
            return [self._label(i) for i in ids]
        if self._labels is None:
            self._labels = dict(self._conn.execute("SELECT token, label FROM vocab"))
        return [self._labels.get(i, f"<{i}>") for i in ids]

    def document(self, doc: int) -> np.ndarray:
        """A stored sequence's token ids (int32)."""
        row = self._conn.execute("SELECT tokens FROM documents WHERE doc = ?", (int(doc),)).fetchone()
        if row is None:
            raise InvalidInput(f"no document {doc} in {self.path}")
        return unblob(row[0], "<i4")

    # --- the API

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
