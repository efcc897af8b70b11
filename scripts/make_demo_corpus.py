"""Make lmpeek's bundled demo corpus: the Python 3.11 documentation (tutorial, library and
language references, HOWTOs, FAQ), as plain-text sections.

    apt-get download python3.11-doc          # Debian bookworm: python3.11-doc_3.11.2-6+deb12u9_all.deb
    .venv/bin/python scripts/make_demo_corpus.py python3.11-doc_*.deb

writes src/lmpeek/data/corpus/python-docs-3.11.jsonl.gz (one JSON object per line: "text", "title",
"path") and prints the number of documents, characters and SmolLM2 tokens. The output is a pure
function of the .deb (sorted files, no timestamps in the gzip header), so anyone can check it.

Why this text: it is openly licensed (the PSF License Agreement; code examples dual-licensed under the
Zero-Clause BSD licence: `license.rst` of the same documentation), it comes from a package registry
this project's machines can reach (Debian), and it mixes English prose with code, which a feature
dashboard on a small model shows well. Licence and provenance are recorded in NOTICE.

The reStructuredText sources (`html/_sources/**/*.rst.txt`) become readable text: roles keep their
text (:func:`len` -> len(), :ref:`title <target>` -> title), index/label/version-note markup goes,
code blocks stay. Each file is split at its section headings into documents of about 2,000-12,000
characters, so the sample library can list them by title and a feature's examples say where they are.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/lmpeek/data/corpus/python-docs-3.11.jsonl.gz"
SOURCES = "usr/share/doc/python3.11/html/_sources/"
# parts of the docs that are licence texts, change logs or tables of contents rather than prose
SKIP = ("license.rst", "copyright.rst", "contents.rst", "bugs.rst", "about.rst")
# the user-facing documentation; release notes, the C API and packaging guides are left out, which
# keeps the file at about 2 MB while well over the 1 M tokens a feature dashboard needs
KEEP = ("tutorial/", "library/", "reference/", "howto/", "faq/", "using/", "glossary.rst")
MIN_CHARS, MAX_CHARS = 2_000, 12_000

_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
_DROP_DIRECTIVES = re.compile(
    r"^\s*\.\. (index|highlight|sectionauthor|moduleauthor|module|currentmodule|testsetup|testcleanup|"
    r"toctree|only|include|audit-event|availability|impl-detail|seealso|_[^:]*|\|[^|]*\|)"
)
_VERSION = {"versionadded": "New in version ", "versionchanged": "Changed in version ",
            "deprecated": "Deprecated since version "}  # fmt: skip
# an rst comment: ".." then anything that is not a directive ("name::")
_COMMENT = re.compile(r"^\s*\.\.(\s*$|\s+(?![\w:-]+::))")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.])\1{2,}\s*$")


def _clean_role(match: re.Match[str]) -> str:
    text = match.group(1).strip()
    return (
        text.rsplit(".", 1)[-1] if match.group(0).startswith((":func:`~", ":meth:`~", ":class:`~")) else text
    )


def _plain(rst: str) -> list[tuple[str, list[str]]]:
    """The file as (section title, lines) pairs, markup removed."""
    lines = _ROLE.sub(_clean_role, rst).splitlines()  # the whole text: a role may span lines
    sections: list[tuple[str, list[str]]] = [("", [])]
    skip_indent = -1  # inside a dropped directive: its lines are blank or indented past this
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if skip_indent >= 0:
            if line.strip() and indent <= skip_indent:
                skip_indent = -1
            else:
                i += 1
                continue
        if _DROP_DIRECTIVES.match(line) or _COMMENT.match(line):
            skip_indent = indent  # the directive and its indented body
            i += 1
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and not line.startswith((" ", "..")) and _UNDERLINE.match(nxt):
            title = re.sub(r"\*\*(\w[^*]*?)\*\*", r"\1", line.strip()).replace("\\ ", "").replace("``", "")
            sections.append((title, [title, ""]))
            i += 2
            continue
        if _UNDERLINE.match(line):  # an overline
            i += 1
            continue
        line = re.sub(
            r"^(\s*)\.\. (versionadded|versionchanged|deprecated):: *",
            lambda m: m.group(1) + _VERSION[m.group(2)],
            line,
        )
        line = re.sub(
            r"^(\s*)\.\. (note|warning|tip|important)::",
            lambda m: m.group(1) + m.group(2).capitalize() + ":",
            line,
        )
        line = re.sub(r"^\s*\.\. (code-block|sourcecode|doctest|productionlist)::.*$", "", line)
        line = re.sub(r"^(\s*)\.\. (function|method|class|attribute|data|exception|decorator|describe|opcode|"
                      r"c:\w+|cmdoption|option|envvar|pdbcommand|2to3fixer|abstractmethod|classmethod|"
                      r"staticmethod|coroutinefunction|coroutinemethod)::\s*", r"\1", line)  # fmt: skip
        # inline literals and bold lose their markup; ** as code (**kwargs) stays
        line = line.replace("``", "").replace("\\ ", "")
        line = re.sub(r"\*\*(\w[^*]*?)\*\*", r"\1", line)
        sections[-1][1].append(line)
        i += 1
    return [(t, body) for t, body in sections if any(x.strip() for x in body)]


def _documents(rel: str, rst: str) -> list[dict[str, str]]:
    """One file's sections merged into documents of MIN_CHARS..MAX_CHARS (a longer section alone)."""
    out: list[dict[str, str]] = []
    title, buf = "", []
    for sec_title, body in _plain(rst):
        text = re.sub(r"\n{3,}", "\n\n", "\n".join(body)).strip()
        if buf and sum(map(len, buf)) + len(text) > MAX_CHARS:
            out.append({"title": title, "text": "\n\n".join(buf)})
            title, buf = "", []
        title = title or sec_title
        buf.append(text)
        if sum(map(len, buf)) >= MIN_CHARS:
            out.append({"title": title, "text": "\n\n".join(buf)})
            title, buf = "", []
    if buf:
        if out and sum(map(len, buf)) < MIN_CHARS // 2:
            out[-1]["text"] += "\n\n" + "\n\n".join(buf)
        else:
            out.append({"title": title, "text": "\n\n".join(buf)})
    for n, doc in enumerate(out):
        doc["path"] = f"{rel}#{n}"
        doc["title"] = doc["title"] or rel
    return out


def _rst_files(deb: Path) -> dict[str, str]:
    """rel path -> text of every .rst.txt source in the .deb (read with dpkg-deb, no root needed)."""
    data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            name = member.name.lstrip("./")
            if member.isfile() and name.startswith(SOURCES) and name.endswith(".rst.txt"):
                rel = name[len(SOURCES) : -len(".txt")]
                files[rel] = tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
    return dict(sorted(files.items()))


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    docs = []
    for rel, rst in _rst_files(Path(sys.argv[1])).items():
        if rel in SKIP or not rel.startswith(KEEP):
            continue
        docs += _documents(rel, rst)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    raw = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode()
    with OUT.open("wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw)
    chars = sum(len(d["text"]) for d in docs)
    from transformers import AutoTokenizer

    from lmpeek.models.sources import resolve

    tok = AutoTokenizer.from_pretrained(resolve("default").folder)
    tokens = sum(len(tok(d["text"], add_special_tokens=False, verbose=False)["input_ids"]) for d in docs)
    print(
        f"{OUT}: {len(docs)} documents, {chars:,} characters, {tokens:,} tokens, {OUT.stat().st_size:,} bytes"
    )


if __name__ == "__main__":
    main()
