"""A feature database in other tools' formats: tiny-activation-dashboard's dict and SQLite file (both
ways), and Neuronpedia / SAEDashboard JSON for one feature.

    from lmpeek.features import formats
    td = formats.to_td_dict("features.db", tokenizer=model.tokenizer)   # {feature: [(max_act, tokens, acts)]}
    formats.write_td_sqlite("features.db", "td.db", tokenizer=model.tokenizer)
    OfflineFeatureCentricDashboard.from_db("td.db", tokenizer)          # tiny-dashboard opens it
    back = formats.from_td("td.db", tokenizer)                          # or from_td(td_dict, tokenizer)
    back.examples(12)                                                   # as FeatureDB.examples(12, "top")
    page = formats.neuronpedia_json("features.db", 12)                  # one feature, SAEDashboard layout

tiny-dashboard (pip `tiny-dashboard` 0.7.3, read from its source):
- the dict is `{feature: [(max_act, tokens, token_acts), ...]}`, largest max_act first (it shows the
  first 30 and "Use Absolute Max" divides by examples[0][0]); `tokens` are raw vocabulary pieces as
  `tokenizer.tokenize` gives them ("Ġthe", "▁the", "Ċ": its tooltip looks the id up with
  `convert_tokens_to_ids(token)`), `token_acts` one float per token, NaN = not coloured;
- its renderer refuses negative activations (ValueError "Activations must be non-negative floats"),
  so `negatives="clip"` (the default) writes max(a, 0); "nan" writes NaN (not coloured, no tooltip
  value; but its collapsed view centres on np.argmax(token_acts), which is the first NaN); "keep"
  writes them as they are (exact, for other readers; tiny-dashboard cannot show such an example);
- the SQLite file is one table `data_table(key INTEGER PRIMARY KEY, examples TEXT)`, one row per
  feature, `examples` = json.dumps of the list (tuples become lists; NaN is written as the `NaN`
  literal, which Python's json.loads, its reader, accepts). Its LazyReadDict hard-codes the column
  name `key`; table and column names are put into its SQL as they are, so only identifiers are taken.

An lmpeek example becomes: max_act = its score (the activation at its position), tokens = its window
(the stored context around the position), token_acts = the feature's activations there. Only the
"top" examples are written (tiny-dashboard has one list per feature); features that never fired
(no activation > 0) have no examples and are left out (an empty list breaks its "Use Absolute Max").
The tokenizer must be the one the database was built with (its hash is checked against the manifest).

`from_td` reads a dict (or any mapping with keys() and [], such as tiny-dashboard's LazyReadDict) or a
SQLite path into a `TDFeatures`: an in-memory, read-only object with FeatureDB's example API
(`features()`, `feature(i)`, `examples(i)`, `labels(ids)`) whose examples have FeatureDB's keys. What the
format does not hold is None (doc, pos, start); `index` is the first position whose activation equals
max_act (the example's own position for a file lmpeek wrote), else the largest activation.

`neuronpedia_json` writes one feature in the layout of SAEDashboard's NeuronpediaDashboardFeature
(sae_dashboard/neuronpedia/neuronpedia_dashboard.py), the batch files Neuronpedia imports: top examples
with bin_min -1, bin_max = the feature's max, bin_contains -1 (as its converter parses "TOP ACTIVATIONS");
quantile examples with their bin's lo, hi and share of all tokens; `correlated_features_l1` holds the
cosine, as SAEDashboard's does. What the database does not hold (neuron alignment, correlated neurons,
decoder weights) is an empty list. The activation histogram is lmpeek's (log-spaced bins of the
activations > 0, bar_values = bin centres), not SAEDashboard's 50 equal-width bins. Values are not
rounded (SAEDashboard rounds to 3 decimals). Unless strict=True, Neuronpedia's own field names are added
(feature: maxActApprox; each activation: maxValue, maxValueTokenIndex, minValue), which SAEDashboard's
dataclasses do not take.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lmpeek.errors import InvalidInput, SourceNotFound
from lmpeek.features.db import FeatureDB

TD_TABLE = "data_table"
TD_COLUMN = "examples"
NEGATIVES = ("clip", "nan", "keep")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# SAEDashboard's NeuronpediaDashboardFeature.to_dict() keys, in its order
NP_FEATURE_KEYS = (
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_values",
    "freq_hist_data_bar_heights", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations", "vector",
)  # fmt: skip
NP_ACTIVATION_KEYS = ("bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index")

TDExample = tuple[float, list[str], list[float]]


# --- helpers ------------------------------------------------------------------------------------------


class _Opened:
    """A FeatureDB given as one or as a path (opened here and closed on exit)."""

    def __init__(self, db: Any):
        self.owned = not isinstance(db, FeatureDB)
        self.db = FeatureDB(db) if self.owned else db

    def __enter__(self) -> FeatureDB:
        return self.db

    def __exit__(self, *exc: Any) -> None:
        if self.owned:
            self.db.close()


def _check_tokenizer(db: FeatureDB, tokenizer: Any) -> Any:
    """The tokenizer the database was built with (given, or the FeatureDB's own when it keeps one)."""
    from lmpeek.models.fingerprint import tokenizer_hash

    tokenizer = tokenizer if tokenizer is not None else getattr(db, "tokenizer", None)
    if tokenizer is None:
        raise InvalidInput(
            "tiny-dashboard's tokens are the tokenizer's raw vocabulary pieces ('Ġthe'): pass the "
            "tokenizer of the model the database was built with (tokenizer=model.tokenizer)"
        )
    want = db.manifest.get("tokenizer")
    if want is not None and tokenizer_hash(tokenizer) != want:
        model = (db.manifest.get("model") or {}).get("name", "another model")
        raise InvalidInput(
            f"this tokenizer is not the one {db.path} was built with (that was {model}'s, hash {want}): "
            "its vocabulary pieces would be other tokens"
        )
    return tokenizer


def _negatives(acts: list[float], mode: str) -> list[float]:
    if mode == "keep":
        return acts
    fill = 0.0 if mode == "clip" else math.nan
    return [fill if a < 0 else a for a in acts]


def _identifier(what: str, name: str) -> str:
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise InvalidInput(f"{what} must be a plain SQL identifier (letters, digits, _), got {name!r}")
    return name


def _real(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _td_examples(feature: Any, examples: Any) -> list[TDExample]:
    """One feature's tiny-dashboard examples checked and normalised to (float, [str], [float]), sorted
    by max_act, largest first (stable)."""
    if not isinstance(examples, (list, tuple)):
        raise InvalidInput(f"feature {feature}: examples must be a list, got {type(examples).__name__}")
    out = []
    for j, ex in enumerate(examples):
        where = f"feature {feature}, example {j}"
        if not isinstance(ex, (list, tuple)) or len(ex) != 3:
            raise InvalidInput(f"{where}: expected (max_act, tokens, token_acts), got {ex!r:.80}")
        max_act, tokens, acts = ex
        if not _real(max_act):
            raise InvalidInput(f"{where}: max_act must be a number, got {max_act!r:.40}")
        if not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens):
            raise InvalidInput(f"{where}: tokens must be a list of strings (raw vocabulary pieces)")
        if not isinstance(acts, (list, tuple, np.ndarray)) or not all(_real(a) for a in acts):
            raise InvalidInput(f"{where}: token_acts must be a list of numbers (NaN for no colour)")
        if len(acts) != len(tokens):
            raise InvalidInput(f"{where}: {len(tokens)} tokens but {len(acts)} token_acts")
        out.append((float(max_act), list(tokens), [float(a) for a in acts]))
    out.sort(key=lambda e: -e[0] if not math.isnan(e[0]) else math.inf)
    return out


def _feature_key(feature: Any) -> int:
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer, str)):
        raise InvalidInput(f"tiny-dashboard's feature keys are integers, got {feature!r:.40}")
    try:
        key = int(feature)  # JSON-loaded dicts have string keys
    except ValueError:
        raise InvalidInput(f"tiny-dashboard's feature keys are integers, got {feature!r:.40}") from None
    return key


# --- lmpeek -> tiny-dashboard ----------------------------------------------------------------------------


def iter_td(
    db: FeatureDB,
    source: int | str = 0,
    features: Iterable[int] | None = None,
    max_examples: int | None = None,
    *,
    tokenizer: Any = None,
    negatives: str = "clip",
) -> Iterator[tuple[int, list[TDExample]]]:
    """(feature, examples) in tiny-dashboard's layout, one feature at a time (see to_td_dict)."""
    from lmpeek import validate

    if negatives not in NEGATIVES:
        raise InvalidInput(f"negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
    if max_examples is not None:
        max_examples = validate.integer("max_examples", max_examples, 1)
    tokenizer = _check_tokenizer(db, tokenizer)
    if features is None:
        ids = [r["feature"] for r in db.features(source=source) if r["count"] > 0]
    else:
        ids = list(dict.fromkeys(int(validate.integer("feature", f, 0)) for f in features))
    pieces: dict[int, str] = {}
    for f in ids:
        examples = db.examples(f, "top", source)[:max_examples]
        if not examples:
            continue
        out = []
        for e in examples:
            for t in e["token_ids"]:
                if t not in pieces:
                    pieces[t] = tokenizer.convert_ids_to_tokens(int(t))
            tokens = [pieces[t] for t in e["token_ids"]]
            out.append((float(e["score"]), tokens, _negatives([float(a) for a in e["acts"]], negatives)))
        yield f, out  # FeatureDB returns top examples best first: already sorted by max_act


def to_td_dict(
    db: Any,
    source: int | str = 0,
    features: Iterable[int] | None = None,
    max_examples: int | None = None,
    *,
    tokenizer: Any = None,
    negatives: str = "clip",
) -> dict[int, list[TDExample]]:
    """tiny-dashboard's `{feature: [(max_act, tokens, token_acts), ...]}` for `source` of the feature
    database `db` (a FeatureDB or its path): every feature that fired (or `features`), at most
    `max_examples` top examples each (all stored by default), largest max_act first. `tokenizer`: the
    one the database was built with (checked). `negatives`: "clip" (tiny-dashboard refuses values < 0),
    "nan" or "keep" (see the module docstring)."""
    with _Opened(db) as d:
        return dict(iter_td(d, source, features, max_examples, tokenizer=tokenizer, negatives=negatives))


def write_td_sqlite(
    data: Any,
    path: Any,
    *,
    tokenizer: Any = None,
    source: int | str = 0,
    features: Iterable[int] | None = None,
    max_examples: int | None = None,
    negatives: str = "clip",
    table_name: str = TD_TABLE,
    column_name: str = TD_COLUMN,
    overwrite: bool = False,
) -> Path:
    """Write tiny-dashboard's SQLite file at `path` from a feature database (a FeatureDB or its path:
    the options are to_td_dict's) or from a tiny-dashboard dict (checked, each list sorted by max_act).
    The file is written next to `path` and moved into place when complete. Returns the path.

    Opened by `OfflineFeatureCentricDashboard.from_db(path, tokenizer)` (table_name and column_name
    are from_db's arguments of the same names)."""
    table = _identifier("table_name", table_name)
    column = _identifier("column_name", column_name)
    out = Path(path).expanduser()
    if out.exists() and not overwrite:
        raise InvalidInput(f"{out} exists: pass overwrite=True (--overwrite) to replace it")
    if not out.parent.is_dir():
        raise SourceNotFound(f"folder {str(out.parent)!r} does not exist")
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    opened = None
    try:
        if isinstance(data, Mapping):
            items: Iterable[tuple[Any, list[TDExample]]] = (
                (_feature_key(f), _td_examples(f, ex)) for f, ex in data.items()
            )
        else:
            opened = _Opened(data)
            items = iter_td(
                opened.db, source, features, max_examples, tokenizer=tokenizer, negatives=negatives
            )
        conn = sqlite3.connect(str(tmp))
        try:
            conn.execute(f"CREATE TABLE {table} (key INTEGER PRIMARY KEY, {column} TEXT)")
            seen: set[int] = set()
            for f, examples in items:
                if f in seen:  # "3" and 3 in one dict
                    raise InvalidInput(f"feature {f} appears twice")
                seen.add(f)
                rows = [[m, t, a] for m, t, a in examples]
                conn.execute(
                    f"INSERT INTO {table} (key, {column}) VALUES (?, ?)",
                    (f, json.dumps(rows, ensure_ascii=False, allow_nan=True)),
                )
            conn.commit()
        finally:
            conn.close()
        os.replace(tmp, out)
    finally:
        if opened is not None:
            opened.__exit__()
        tmp.unlink(missing_ok=True)
    return out


# --- tiny-dashboard -> lmpeek ----------------------------------------------------------------------------


class _SQLiteTD(Mapping):
    """A tiny-dashboard SQLite file as a read-only mapping feature -> parsed examples (read on demand,
    like its LazyReadDict, but with one connection)."""

    def __init__(self, path: Path, table: str, column: str):
        self.path = path
        try:
            self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            cols = [r[1] for r in self._conn.execute(f"PRAGMA table_info({table})")]
        except sqlite3.DatabaseError as err:
            raise InvalidInput(f"{path} is not a SQLite file ({err})") from None
        missing = [c for c in ("key", column) if c not in cols]
        if missing:
            self._conn.close()
            what = f"no table {table}" if not cols else f"table {table} has no column {', '.join(missing)}"
            raise InvalidInput(
                f"{path} is not a tiny-dashboard file: {what} (expected {table}(key INTEGER PRIMARY KEY, "
                f"{column} TEXT))"
            )
        self._table, self._column = table, column
        self._keys = [k for (k,) in self._conn.execute(f"SELECT key FROM {table} ORDER BY key")]
        self._key_set = set(self._keys)

    def __getitem__(self, key: Any) -> Any:
        if key not in self._key_set:
            raise KeyError(key)
        (text,) = self._conn.execute(
            f"SELECT {self._column} FROM {self._table} WHERE key = ?", (key,)
        ).fetchone()
        try:
            return json.loads(text)
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"{self.path}: feature {key}'s examples are not JSON ({err})") from None

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def close(self) -> None:
        self._conn.close()


class TDFeatures:
    """Examples read from tiny-dashboard's dict or SQLite file, with FeatureDB's example API (read-only,
    one source, "top" examples only; converted on first use and kept).

    td = from_td("td.db", tokenizer)
    td.ids                       # feature ids, ascending
    td.features(sort="max")      # [{feature, max, n_examples}]
    td.examples(12)              # [{score, index, token_ids, tokens (labels), pieces, acts, rank, ...}]
    td.feature(12)               # {feature, max, n_examples, examples: {"top": [...], "quantile": []}}
    """

    def __init__(self, data: Mapping, tokenizer: Any, path: str | None = None):
        from lmpeek.capture.tokens import token_labels_fn

        self.path = path
        self._data = data
        self._tokenizer = tokenizer
        self._vocab = tokenizer.get_vocab()
        self._label = token_labels_fn(tokenizer)
        self._keys: dict[int, Any] = {}
        for k in data.keys():
            key = _feature_key(k)
            if key in self._keys:
                raise InvalidInput(f"feature {key} appears twice")
            self._keys[key] = k
        self.ids = sorted(self._keys)
        self._cache: dict[int, list[dict[str, Any]]] = {}
        self.sources = [{"source": 0, "name": "tiny-dashboard", "kind": "tiny-dashboard",
                         "n_features": self.ids[-1] + 1 if self.ids else 0}]  # fmt: skip

    def close(self) -> None:
        if isinstance(self._data, _SQLiteTD):
            self._data.close()

    def __enter__(self) -> TDFeatures:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, feature: Any) -> bool:
        return feature in self._keys

    def __repr__(self) -> str:
        return f"TDFeatures({self.path or 'dict'}: {len(self.ids)} features)"

    def labels(self, ids: Any) -> list[str]:
        return [self._label(int(i)) for i in ids]

    def _check_source(self, source: int | str) -> None:
        if source not in (0, "tiny-dashboard"):
            raise InvalidInput(f"a tiny-dashboard file has one source (0), not {source!r}")

    def examples(self, i: int, kind: str = "top", source: int | str = 0) -> list[dict[str, Any]]:
        """Feature i's examples, largest max_act first, with FeatureDB.examples' keys (doc, pos and
        start are None: the format does not hold them) plus `pieces` (the raw vocabulary pieces)."""
        if kind not in ("top", "quantile"):
            raise InvalidInput(f"kind must be 'top' or 'quantile', got {kind!r}")
        self._check_source(source)
        if i not in self._keys:
            raise InvalidInput(f"no feature {i!r} in {self.path or 'this tiny-dashboard dict'}")
        if kind == "quantile":
            return []
        i = int(i)
        if i not in self._cache:
            self._cache[i] = [self._example(i, r, ex) for r, ex in enumerate(self._raw(i))]
        return [dict(e, token_ids=list(e["token_ids"]), tokens=list(e["tokens"]), pieces=list(e["pieces"]),
                     acts=list(e["acts"])) for e in self._cache[i]]  # fmt: skip

    def _raw(self, i: int) -> list[TDExample]:
        return _td_examples(i, self._data[self._keys[i]])

    def _example(self, feature: int, rank: int, ex: TDExample) -> dict[str, Any]:
        max_act, pieces, acts = ex
        ids = []
        for p in pieces:
            t = self._vocab.get(p)
            if t is None:
                raise InvalidInput(
                    f"feature {feature}, example {rank}: {p!r} is not in this tokenizer's vocabulary "
                    "(tiny-dashboard stores raw vocabulary pieces such as 'Ġthe': was it written for "
                    "another tokenizer?)"
                )
            ids.append(int(t))
        at = [j for j, a in enumerate(acts) if a == max_act]
        a = np.asarray(acts, dtype=np.float64)
        index = at[0] if at else (int(np.nanargmax(a)) if np.isfinite(a).any() else None)
        return {
            "bin": 0,
            "rank": rank,
            "score": max_act,
            "doc": None,
            "pos": None,
            "start": None,
            "index": index,
            "token_ids": ids,
            "tokens": self.labels(ids),
            "pieces": list(pieces),
            "acts": list(acts),
        }

    def features(
        self, sort: str = "feature", source: int | str = 0, descending: bool | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """One row per feature: {feature, max (the largest max_act), n_examples}; sort by "feature",
        "max" or "n_examples" (descending by default except for "feature")."""
        if sort not in ("feature", "max", "n_examples"):
            raise InvalidInput(f"sort must be one of feature, max, n_examples, got {sort!r}")
        self._check_source(source)
        rows = []
        for f in self.ids:
            raw = self._raw(f)
            rows.append({"feature": f, "max": raw[0][0] if raw else None, "n_examples": len(raw)})
        desc = sort != "feature" if descending is None else descending

        def key(r: dict[str, Any]) -> tuple:
            v = r[sort]
            missing = v is None or (isinstance(v, float) and math.isnan(v))
            return (missing, -v if desc and not missing else (v if not missing else 0), r["feature"])

        rows.sort(key=key)
        return rows if limit is None else rows[: int(limit)]

    def feature(self, i: int, source: int | str = 0) -> dict[str, Any]:
        top = self.examples(i, "top", source)
        return {
            "source": "tiny-dashboard",
            "feature": int(i),
            "max": top[0]["score"] if top else None,
            "n_examples": len(top),
            "examples": {"top": top, "quantile": []},
        }


def from_td(
    data: Any, tokenizer: Any, *, table_name: str = TD_TABLE, column_name: str = TD_COLUMN
) -> TDFeatures:
    """tiny-dashboard's examples as a TDFeatures: `data` is its dict `{feature: [(max_act, tokens,
    token_acts), ...]}` (or any mapping, e.g. its LazyReadDict) or the path of its SQLite file;
    `tokenizer` the one whose vocabulary pieces the tokens are. Malformed examples and pieces not in
    the vocabulary are InvalidInput when the feature is read."""
    if isinstance(data, Mapping) or (hasattr(data, "keys") and hasattr(data, "__getitem__")):
        return TDFeatures(data, tokenizer)
    if not isinstance(data, (str, os.PathLike)):
        raise InvalidInput(f"from_td reads a tiny-dashboard dict or a SQLite path, not {type(data).__name__}")
    path = Path(data).expanduser()
    if not path.is_file():
        raise SourceNotFound(f"tiny-dashboard file {str(data)!r} does not exist")
    mapping = _SQLiteTD(path, _identifier("table_name", table_name), _identifier("column_name", column_name))
    try:
        return TDFeatures(mapping, tokenizer, str(path))
    except Exception:
        mapping.close()
        raise


# --- Neuronpedia / SAEDashboard ----------------------------------------------------------------------------


def _centres(edges: np.ndarray, last: float | None) -> list[float]:
    hi = edges[1:].copy()
    if len(hi) and not np.isfinite(hi[-1]):  # the open top bin [1e4, inf): its values are <= max
        hi[-1] = max(float(last), float(edges[-2])) if last is not None else float(edges[-2])
    return ((edges[:-1] + hi) / 2).tolist()


def neuronpedia_json(
    db: Any, feature: int, source: int | str = 0, *, dataset: str | None = None, strict: bool = False
) -> dict[str, Any]:
    """Feature `feature` of `source` in the feature database `db` (a FeatureDB or its path) as one
    feature of a Neuronpedia batch file, SAEDashboard's layout (see the module docstring). `dataset`:
    the corpus name to record (default: the corpus inputs the database was built from). strict=True:
    only SAEDashboard's keys."""
    with _Opened(db) as d:
        f = d.feature(feature, source)
        m = d.manifest
        acts = []
        top_max = f["max"] if f["max"] is not None else 0.0
        bins = {b["bin"]: b for b in f["quantile_bins"]}
        for kind in ("top", "quantile"):
            for e in f["examples"][kind]:
                if kind == "top":
                    lo, hi, share = -1.0, float(top_max), -1.0
                else:
                    b = bins[e["bin"]]
                    lo, hi, share = float(b["lo"]), float(b["hi"]), float(b["share"])
                values = [float(v) for v in e["acts"]]
                a: dict[str, Any] = {
                    "bin_min": lo,
                    "bin_max": hi,
                    "bin_contains": share,
                    "tokens": list(e["tokens"]),
                    "values": values,
                    "qualifying_token_index": int(e["index"]),
                }
                if not strict:
                    a["maxValue"] = max(values) if values else 0.0
                    a["maxValueTokenIndex"] = int(np.argmax(values)) if values else 0
                    a["minValue"] = min(values) if values else 0.0
                acts.append(a)
        edges = np.asarray(f["histogram"]["edges"], dtype=np.float64)
        lg = f["logits"]
        if lg is not None:
            lh = lg["histogram"]
            n_bins = len(lh["counts"])
            l_edges = np.linspace(lh["lo"], lh["hi"], n_bins + 1)
            logit_values, logit_heights = ((l_edges[:-1] + l_edges[1:]) / 2).tolist(), list(lh["counts"])
        else:
            logit_values, logit_heights = [], []
        corpus = m.get("corpus") or {}
        out: dict[str, Any] = {
            "feature_index": int(f["feature"]),
            "neuron_alignment_indices": [],
            "neuron_alignment_values": [],
            "neuron_alignment_l1": [],
            "correlated_neurons_indices": [],
            "correlated_neurons_l1": [],
            "correlated_neurons_pearson": [],
            "correlated_features_indices": [c["feature"] for c in f["correlated"]],
            "correlated_features_l1": [c["cosine"] for c in f["correlated"]],  # SAEDashboard's name for it
            "correlated_features_pearson": [c["pearson"] for c in f["correlated"]],
            "neg_str": [t["label"] for t in lg["bottom"]] if lg else [],
            "neg_values": [t["value"] for t in lg["bottom"]] if lg else [],
            "pos_str": [t["label"] for t in lg["top"]] if lg else [],
            "pos_values": [t["value"] for t in lg["top"]] if lg else [],
            "frac_nonzero": float(f["density"]),
            "freq_hist_data_bar_values": _centres(edges, f["max"]) if len(edges) else [],
            "freq_hist_data_bar_heights": list(f["histogram"]["counts"]),
            "logits_hist_data_bar_heights": logit_heights,
            "logits_hist_data_bar_values": logit_values,
            "n_prompts_total": int(corpus.get("documents", 0)),
            "n_tokens_in_prompt": int((m.get("build") or {}).get("seq_len", 0)),
            "dataset": dataset if dataset is not None else ", ".join(map(str, corpus.get("inputs") or [])),
            "decoder_weights_dist": [],
            "activations": acts,
            "vector": [],
        }
        if not strict:
            out["maxActApprox"] = float(top_max)
        return out


# --- the CLI --------------------------------------------------------------------------------------------


def _tokenizer_of(model: Any) -> Any:
    if isinstance(model, str):
        import lmpeek

        return lmpeek.load(model).tokenizer
    return getattr(model, "tokenizer", model)  # a loaded model, or a tokenizer


def export_td_cli(
    db_path: Any,
    out: Any,
    model: Any = None,
    source: int | str = 0,
    max_examples: int | None = None,
    negatives: str = "clip",
    overwrite: bool = False,
    echo: Any = print,
) -> Path:
    """What `lmpeek features export-td DB -o td.db` runs: the tokenizer of `model` (a spec, a loaded
    model or a tokenizer; default: the model the database was built from, as the manifest names it),
    then write_td_sqlite, then say what was written."""
    with FeatureDB(db_path) as db:
        if model is None:
            built = db.manifest.get("model") or {}
            model = built.get("source") or built.get("name")
            if not model:
                raise InvalidInput(f"{db_path} does not name its model: pass --model")
        tokenizer = _tokenizer_of(model)
        path = write_td_sqlite(db, out, tokenizer=tokenizer, source=source, max_examples=max_examples,
                               negatives=negatives, overwrite=overwrite)  # fmt: skip
    conn = sqlite3.connect(str(path))
    try:
        n = conn.execute(f"SELECT COUNT(*) FROM {TD_TABLE}").fetchone()[0]
    finally:
        conn.close()
    echo(f"{path}: {n:,} features in tiny-dashboard's format (OfflineFeatureCentricDashboard.from_db)")
    return path
