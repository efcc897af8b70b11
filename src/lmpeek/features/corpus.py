"""Corpus readers for the feature builder: documents from local files, then token sequences to run.

    documents(corpus)            -> Document(text, path) in a fixed order
    sequences(tokenizer, documents, seq_len) -> Sequence(ids, path, part) of at most seq_len tokens

A corpus is a path, a text, or a list of them:

- a folder: every .txt / .md / .jsonl / .parquet file under it (recursively; hidden files and other
  suffixes skipped), in sorted path order, so two runs read the same documents in the same order;
- a .txt or .md file: one document (UTF-8);
- a .jsonl (or gzip-compressed .jsonl.gz) file: one document per line, from its "text" field (blank
  lines skipped);
- a .parquet file: one document per row of its "text" column (needs pyarrow; read in row batches);
- "demo": the bundled demo corpus, the Python 3.11 documentation in sections (1.8 M tokens of the
  default model; PSF License: see NOTICE and scripts/make_demo_corpus.py), `DEMO`;
- a `pathlib.Path` is always a path; a `str` is a path when it names an existing file or folder, or
  looks like one (no whitespace, and a '/' or a corpus suffix), which then must exist; any other
  string is the text of one document (handy in tests and notebooks).

Long documents are cut into sequences of at most `seq_len` tokens. Every sequence starts with the
special tokens the tokenizer puts in front of a text (a BOS), so each one reads like the start of a
text, as the model saw in training and as a feature dashboard shows it; `part` numbers the pieces of
one document. Texts are tokenized without their length limit (the model only ever sees `seq_len`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmpeek.errors import InvalidInput

TEXT_SUFFIXES = (".txt", ".md")
SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".jsonl.gz", ".parquet")
# the bundled demo corpus (scripts/make_demo_corpus.py); the name "demo" stands for it
DEMO = Path(__file__).resolve().parents[1] / "data" / "corpus" / "python-docs-3.11.jsonl.gz"
TEXT_FIELD = "text"
_PARQUET_ROWS = 1024  # rows per read: a parquet file is streamed, never loaded whole


@dataclass(frozen=True)
class Document:
    text: str
    path: str  # where it came from: "a/b.txt", "c.jsonl:12" (line), "d.parquet:5" (row), "<text 3>",
    # "demo:library/os.rst#3" (the demo corpus: the section of the documentation)


@dataclass(frozen=True)
class Sequence:
    ids: np.ndarray  # [T] int32, T <= seq_len
    path: str  # the document's path (see Document)
    part: int  # 0 for a document's first sequence, 1 for the next piece, ...


def _looks_like_path(text: str) -> bool:
    return not any(c.isspace() for c in text) and ("/" in text or os.sep in text or text.endswith(SUFFIXES))


def _exists(text: str) -> bool:
    try:
        return Path(text).expanduser().exists()
    except (OSError, ValueError):  # a text too long to be a file name, or with a NUL byte
        return False


def _items(corpus: Any) -> list[Path | str]:
    """The corpus as a list of Paths (to read) and strs (texts); missing paths refused here, before
    any model runs."""
    if isinstance(corpus, (str, os.PathLike)):
        corpus = [corpus]
    elif not isinstance(corpus, Iterable):
        raise InvalidInput(f"corpus must be a path, a text or a list of them, got {type(corpus).__name__}")
    out: list[Path | str] = []
    for item in corpus:
        if item == "demo":
            if not DEMO.is_file():
                raise InvalidInput(f"the demo corpus is missing from this installation ({DEMO})")
            item = DEMO
        if isinstance(item, os.PathLike) or (
            isinstance(item, str) and (_looks_like_path(item) or _exists(item))
        ):
            path = Path(item).expanduser()
            if not path.exists():
                raise InvalidInput(f"corpus path {str(item)!r} does not exist")
            if path.is_file() and not path.name.lower().endswith(SUFFIXES):
                raise InvalidInput(
                    f"corpus file {str(item)!r}: lmpeek reads {', '.join(SUFFIXES)} files and folders of them"
                )
            out.append(path)
        elif isinstance(item, str):
            out.append(item)
        else:
            raise InvalidInput(f"corpus items must be paths or texts, got {type(item).__name__}")
    if not out:
        raise InvalidInput("the corpus is empty: give a folder, files or texts")
    return out


def inputs(corpus: Any) -> list[str]:
    """What the corpus is, for a manifest: each path resolved, each text as "text:" + a short hash."""
    return [
        f"demo:{DEMO.name}"  # not this installation's path: a shipped database names its corpus
        if isinstance(item, Path) and item.resolve() == DEMO
        else str(item.resolve())
        if isinstance(item, Path)
        else "text:" + hashlib.blake2b(item.encode(), digest_size=8).hexdigest()
        for item in _items(corpus)
    ]


def _files(folder: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / n for n in names if not n.startswith(".") and n.lower().endswith(SUFFIXES)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InvalidInput(
            f"corpus file {path} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    except OSError as err:
        raise InvalidInput(f"corpus file {path} cannot be read: {err.strerror or err}") from None


def _jsonl(path: Path) -> Iterator[Document]:
    try:
        if path.name.lower().endswith(".gz"):
            handle = gzip.open(path, "rt", encoding="utf-8")
        else:
            handle = path.open(encoding="utf-8")
    except OSError as err:
        raise InvalidInput(f"corpus file {path} cannot be read: {err.strerror or err}") from None
    demo = path.resolve() == DEMO
    with handle:
        try:
            for n, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise InvalidInput(f"{path}:{n} is not JSON ({err.msg})") from None
                text = row.get(TEXT_FIELD) if isinstance(row, dict) else None
                if not isinstance(text, str):
                    raise InvalidInput(f'{path}:{n} has no "{TEXT_FIELD}" string (a .jsonl corpus needs one)')
                # the demo corpus's documents say where they are in the documentation, and a shipped
                # database holds no path of the machine that built it
                where = f"demo:{row.get('path')}" if demo else f"{path}:{n}"
                yield Document(text, where)
        except UnicodeDecodeError as err:
            raise InvalidInput(f"corpus file {path} is not UTF-8 text ({err.reason})") from None
        except (OSError, EOFError) as err:  # gzip: not a gzip file, or cut short
            raise InvalidInput(f"corpus file {path} cannot be read: {err}") from None


def _parquet(path: Path) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidInput(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        handle = pq.ParquetFile(path)
    except Exception as err:  # pyarrow's own error types for a file that is not parquet
        raise InvalidInput(f"{path} is not a readable parquet file: {err}") from None
    if TEXT_FIELD not in handle.schema_arrow.names:
        raise InvalidInput(
            f'{path} has no "{TEXT_FIELD}" column (columns: {", ".join(handle.schema_arrow.names)})'
        )
    row = 0
    for batch in handle.iter_batches(batch_size=_PARQUET_ROWS, columns=[TEXT_FIELD]):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str):
                yield Document(text, f"{path}:{row}")
            row += 1


def _from_file(path: Path) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or path.name.lower().endswith(".jsonl.gz"):
        yield from _jsonl(path)
    elif suffix == ".parquet":
        yield from _parquet(path)
    else:
        yield Document(_read_text(path), str(path))


def documents(corpus: Any) -> Iterator[Document]:
    """Every document of `corpus` (see the module docstring), lazily, in a fixed order; empty texts
    are skipped. Bad paths are refused when called, not when first iterated."""
    items = _items(corpus)

    def walk() -> Iterator[Document]:
        for n, item in enumerate(items):
            if isinstance(item, str):
                docs: Iterable[Document] = [Document(item, f"<text {n}>")]
            elif item.is_dir():
                docs = (d for f in _files(item) for d in _from_file(f))
            else:
                docs = _from_file(item)
            yield from (d for d in docs if d.text.strip())

    return walk()


def special_prefix(tokenizer: Any) -> list[int]:
    """The token ids the tokenizer puts in front of every text (a BOS; often nothing)."""
    probe = "x"
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    n = len(full) - len(bare)
    return full[:n] if n > 0 and full[n:] == bare else []


def sequences(tokenizer: Any, docs: Iterable[Document], seq_len: int) -> Iterator[Sequence]:
    """Each document's tokens in pieces of at most `seq_len` (prefix included), in order. A piece
    with fewer than two tokens is dropped (with the first position left out there is nothing to count)."""
    prefix = special_prefix(tokenizer)
    body = seq_len - len(prefix)
    if body < 1:
        raise InvalidInput(
            f"seq_len {seq_len} leaves no room after the tokenizer's {len(prefix)} prefix tokens"
        )
    for doc in docs:
        # verbose=False: no "longer than the maximum length" notice; the model never sees more than seq_len
        ids = tokenizer(doc.text, add_special_tokens=False, verbose=False)["input_ids"]
        for part, a in enumerate(range(0, len(ids), body)):
            seq = prefix + list(ids[a : a + body])
            if len(seq) >= 2:
                yield Sequence(np.asarray(seq, dtype=np.int32), doc.path, part)
