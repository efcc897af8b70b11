"""Sample texts: a bundled library (one of each kind of text worth looking at) plus the user's own.

Bundled samples live in `texts/` next to this module, listed by `texts/index.json`. User samples come
from a folder (argument, or `$LMPEEK_SAMPLES`): each `.txt` / `.md` file is one sample, each line of a
`.jsonl` file is one sample. Bad user files never raise: they are skipped (or, for invalid UTF-8,
decoded with replacement characters) with a `SampleWarning` naming the file and the reason.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from lmpeek.errors import LmpeekError

KINDS = (
    "prose",
    "expository",
    "dialogue",
    "code-python",
    "code-rust",
    "math",
    "table",
    "non-english",
    "chat",
    "repetition",
    "user",
    "corpus",  # a document of the demo corpus (samples/corpus.py): found by search, not listed
)
ENV_VAR = "LMPEEK_SAMPLES"
MAX_USER_FILE_BYTES = 5 * 1024 * 1024
USER_SUFFIXES = (".txt", ".md", ".jsonl")
ID_RE = re.compile(r"^[a-z0-9:_-]+$")

_MD_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Sample:
    id: str  # stable and URL-safe: "prose-lighthouse", "user:notes", "user:notes-3"
    title: str
    kind: str  # one of KINDS
    text: str
    source: str  # "bundled", or the path of the user file


class SampleWarning(UserWarning):
    """A user sample file (or line) that was skipped or only partly readable."""


class UnknownSample(LmpeekError, KeyError):
    """`get` of an id that is in neither the bundled library nor the user folder."""

    def __str__(self) -> str:  # KeyError would show the message's repr
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------- bundled


@lru_cache(maxsize=1)
def _bundled() -> tuple[Sample, ...]:
    folder = resources.files("lmpeek.samples").joinpath("texts")
    index = json.loads(folder.joinpath("index.json").read_text(encoding="utf-8"))
    return tuple(
        Sample(
            id=entry["id"],
            title=entry["title"],
            kind=entry["kind"],
            text=_clean(folder.joinpath(entry["file"]).read_text(encoding="utf-8")),
            source="bundled",
        )
        for entry in index
    )


def bundled() -> list[Sample]:
    """The samples shipped with lmpeek, in index order."""
    return list(_bundled())


def descriptions() -> dict[str, str]:
    """Bundled sample id -> its one-line description from the index."""
    index = resources.files("lmpeek.samples").joinpath("texts", "index.json").read_text(encoding="utf-8")
    return {entry["id"]: entry.get("description", "") for entry in json.loads(index)}


# ---------------------------------------------------------------- user folder


def _clean(text: str) -> str:
    """Normalise line endings and drop the trailing newline(s) editors add."""
    return text.replace("\r\n", "\n").replace("\r", "\n").rstrip("\n")


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")
    return slug or "sample"


def _title_from_name(stem: str) -> str:
    title = re.sub(r"[_\s]+", " ", stem).strip()
    return (title[:1].upper() + title[1:]) if title else stem


def _warn(path: Path, reason: str, line: int | None = None, *, skipped: bool = True) -> None:
    where = f"{path}:{line}" if line is not None else str(path)
    verb = "skipping sample" if skipped else "sample"
    warnings.warn(f"{verb} {where}: {reason}", SampleWarning, stacklevel=3)


def _read_text(path: Path) -> str | None:
    """The file's text, or None (after a warning) if it cannot be used."""
    try:
        size = path.stat().st_size
        if size > MAX_USER_FILE_BYTES:
            _warn(path, f"file is {size / 1e6:.1f} MB, over the {MAX_USER_FILE_BYTES // 2**20} MB limit")
            return None
        data = path.read_bytes()
    except OSError as err:
        _warn(path, f"cannot read it ({err.strerror or err})")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        _warn(path, f"not valid UTF-8 (byte {err.start}); invalid bytes shown as U+FFFD", skipped=False)
        return data.decode("utf-8-sig", errors="replace")


def _file_sample(path: Path, sample_id: str) -> Sample | None:
    text = _read_text(path)
    if text is None:
        return None
    text = _clean(text)
    if not text.strip():
        _warn(path, "it is empty")
        return None
    title = _title_from_name(path.stem)
    if path.suffix.lower() == ".md" and (heading := _MD_HEADING.search(text)):
        title = heading.group(1).strip() or title
    return Sample(id=sample_id, title=title, kind="user", text=text, source=str(path))


def _jsonl_samples(path: Path, taken: set[str]) -> list[Sample]:
    content = _read_text(path)
    if content is None:
        return []
    if not content.strip():
        _warn(path, "it is empty")
        return []
    stem_slug = _slug(path.stem)
    samples = []
    # not splitlines(): JSON strings may hold U+2028 and friends unescaped
    for number, line in enumerate(content.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item: Any = json.loads(line)
        except json.JSONDecodeError as err:
            _warn(path, f"invalid JSON ({err.msg})", number)
            continue
        if isinstance(item, str):
            item = {"text": item}
        if not isinstance(item, dict):
            _warn(
                path, f"expected an object with a 'text' field or a string, got {type(item).__name__}", number
            )
            continue
        text = item.get("text")
        if not isinstance(text, str):
            _warn(path, "no 'text' string", number)
            continue
        if not text.strip():
            _warn(path, "the text is empty", number)
            continue
        title = item.get("title")
        if not isinstance(title, str) or not title.strip():
            title = f"{_title_from_name(path.stem)} #{number}"
        kind = item.get("kind", "user")
        if kind not in KINDS:
            _warn(
                path,
                f"unknown kind {kind!r} (known: {', '.join(KINDS)}); using 'user'",
                number,
                skipped=False,
            )
            kind = "user"
        own_id = item.get("id")
        if isinstance(own_id, (str, int)) and not isinstance(own_id, bool) and str(own_id).strip():
            base = "user:" + _slug(str(own_id).removeprefix("user:"))
        else:
            base = f"user:{stem_slug}-{number}"
        sample_id = _unique(base, taken)
        taken.add(sample_id)
        samples.append(Sample(id=sample_id, title=title.strip(), kind=kind, text=text, source=str(path)))
    return samples


def _unique(sample_id: str, taken: set[str]) -> str:
    """`sample_id`, or `sample_id-2`, `-3`, ... if it is already taken (ids are assigned in name order)."""
    candidate, n = sample_id, 1
    while candidate in taken:
        n += 1
        candidate = f"{sample_id}-{n}"
    return candidate


def load_user_samples(folder: str | Path) -> list[Sample]:
    """Samples from the `.txt`, `.md` and `.jsonl` files directly in `folder`, in file-name order.

    Ids are `user:<file stem>` (files) and `user:<file stem>-<line number>` (jsonl lines, unless the
    line has its own "id"), made lowercase and URL-safe; a clash gets a `-2`, `-3`, ... suffix.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        warnings.warn(
            f"sample folder {folder} does not exist or is not a folder", SampleWarning, stacklevel=2
        )
        return []
    try:
        paths = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as err:
        warnings.warn(f"cannot list sample folder {folder} ({err})", SampleWarning, stacklevel=2)
        return []
    samples: list[Sample] = []
    taken: set[str] = set()
    for path in paths:
        suffix = path.suffix.lower()
        # hidden files include macOS "._name.txt" resource forks, which are binary
        if suffix not in USER_SUFFIXES or path.name.startswith(".") or not path.is_file():
            continue
        if suffix == ".jsonl":
            samples.extend(_jsonl_samples(path, taken))
        else:
            sample = _file_sample(path, _unique(f"user:{_slug(path.stem)}", taken))
            if sample is not None:
                taken.add(sample.id)
                samples.append(sample)
    return samples


# ---------------------------------------------------------------- together


def _user_folder(user_folder: str | Path | None) -> Path | None:
    if user_folder is not None and str(user_folder) != "":
        return Path(user_folder)
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env) if env else None


def library(user_folder: str | Path | None = None) -> list[Sample]:
    """Bundled samples followed by the user's (from `user_folder`, else `$LMPEEK_SAMPLES` if set)."""
    folder = _user_folder(user_folder)
    return bundled() + (load_user_samples(folder) if folder is not None else [])


def get(sample_id: str, user_folder: str | Path | None = None) -> Sample:
    """The sample with this id (a bundled or user sample, or "corpus:…", a document of the demo
    corpus); `UnknownSample` (a `KeyError`) if there is none."""
    if sample_id.startswith("corpus:"):
        from lmpeek.samples import corpus

        doc = corpus.get(sample_id)
        if doc is None:
            raise UnknownSample(
                f"no document {sample_id!r} in the demo corpus (search it: /api/samples/search)"
            )
        return Sample(id=doc.id, title=doc.title, kind="corpus", text=doc.text, source=f"corpus {doc.path}")
    if not sample_id.startswith("user:"):
        for sample in _bundled():
            if sample.id == sample_id:
                return sample
    samples = library(user_folder)
    for sample in samples:
        if sample.id == sample_id:
            return sample
    ids = [s.id for s in samples]
    # the nearest ids first, then user ids (if a user id was asked for), then the rest in order
    near = difflib.get_close_matches(sample_id, ids, n=3, cutoff=0.6)
    user_first = sorted(ids, key=lambda i: i.startswith("user:") != sample_id.startswith("user:"))
    ranked = list(dict.fromkeys(near + user_first))
    shown = ", ".join(ranked[:6]) + (f", ... ({len(ids)} in all)" if len(ids) > 6 else "")
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise UnknownSample(f"no sample with id {sample_id!r}; {hint}known ids: {shown}")
