"""The demo corpus as samples: list and search its documents, open one as a sample text.

The sample library proper is a handful of hand-picked texts; the demo corpus (features.corpus.DEMO, the
Python 3.11 documentation in sections) adds about 1,500 more, too many for a menu, so they are found by
search: SQLite FTS5 over titles and texts, ranked by bm25 (titles weigh 5x), built in memory on first use.

    search("context manager", limit=20) -> (total, [CorpusHit(id, title, chars, snippet)])
    get("corpus:library-contextlib-0") -> Sample(kind="corpus")

Ids are "corpus:" + the document's path slugged ("library/os.rst#3" -> "corpus:library-os-rst-3"), stable
across runs since the corpus file is fixed.
"""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lmpeek.errors import InvalidInput

PREFIX = "corpus:"
MAX_QUERY_CHARS = 200


@dataclass(frozen=True)
class CorpusDoc:
    id: str
    title: str
    text: str
    path: str  # where it is in the source documentation ("library/os.rst#3")


@dataclass(frozen=True)
class CorpusHit:
    id: str
    title: str
    chars: int
    snippet: str  # the best-matching passage, matched words in [brackets]


def _slug(path: str) -> str:
    return PREFIX + (re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-") or "doc")


def _path() -> Path:
    from lmpeek.features.corpus import DEMO

    return DEMO


@lru_cache(maxsize=1)
def documents() -> tuple[CorpusDoc, ...]:
    """Every document of the demo corpus, in file order (empty when it is not installed)."""
    path = _path()
    if not path.is_file():
        return ()
    docs = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append(CorpusDoc(_slug(row["path"]), row["title"], row["text"], row["path"]))
    return tuple(docs)


_lock = threading.Lock()
_index: sqlite3.Connection | None = None


def _fts() -> sqlite3.Connection:
    """The in-memory FTS5 index, built once (about a second) and shared by every thread."""
    global _index
    with _lock:
        if _index is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            # unicode61 without diacritics folding; "_" and "." kept inside words so code names match
            conn.execute(
                "CREATE VIRTUAL TABLE docs USING fts5(title, text, "
                "tokenize = \"unicode61 remove_diacritics 0 tokenchars '_'\")"
            )
            conn.executemany(
                "INSERT INTO docs(rowid, title, text) VALUES (?, ?, ?)",
                ((n, d.title, d.text) for n, d in enumerate(documents())),
            )
            _index = conn
        return _index


def _match(query: str) -> str:
    """A user's words as an FTS5 query: each word a quoted prefix term, all required; so no FTS
    syntax error is ever the user's problem (quotes inside words are doubled)."""
    words = re.findall(r"[\w.]+", query)
    if not words:
        raise InvalidInput(f"search for words: {query!r} has none")
    return " ".join('"' + w.replace('"', '""') + '"*' for w in words[:16])


def search(query: str, limit: int = 20, offset: int = 0) -> tuple[int, list[CorpusHit]]:
    """Documents matching every word of `query` (as prefixes), best first: (total, one page)."""
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidInput(f"a search is at most {MAX_QUERY_CHARS} characters, got {len(query)}")
    docs = documents()
    if not docs:
        return 0, []
    conn = _fts()
    match = _match(query)
    with _lock:  # one connection: sqlite3 objects are not safe to use from two threads at once
        total = conn.execute("SELECT count(*) FROM docs WHERE docs MATCH ?", (match,)).fetchone()[0]
        rows = conn.execute(
            "SELECT rowid, snippet(docs, 1, '[', ']', '…', 16) FROM docs WHERE docs MATCH ? "
            "ORDER BY bm25(docs, 5.0, 1.0), rowid LIMIT ? OFFSET ?",
            (match, int(limit), int(offset)),
        ).fetchall()
    return total, [CorpusHit(docs[r].id, docs[r].title, len(docs[r].text), snip) for r, snip in rows]


@lru_cache(maxsize=1)
def _by_id() -> dict[str, CorpusDoc]:
    return {d.id: d for d in documents()}


def get(doc_id: str) -> CorpusDoc | None:
    """The corpus document with this id, or None."""
    return _by_id().get(doc_id)
