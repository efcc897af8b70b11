"""The sample library: bundled texts and user sample folders."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from lmpeek import samples
from lmpeek.errors import LmpeekError
from lmpeek.samples import Sample, SampleWarning, UnknownSample

REQUIRED_KINDS = {
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
}
ID_RE = re.compile(r"^[a-z0-9:_-]+$")


@pytest.fixture(autouse=True)
def no_env_folder(monkeypatch):
    """Tests must not see the developer's own sample folder."""
    monkeypatch.delenv("LMPEEK_SAMPLES", raising=False)


def by_kind(kind: str) -> list[Sample]:
    return [s for s in samples.bundled() if s.kind == kind]


# ---------------------------------------------------------------- bundled


def test_bundled_kinds_cover_the_required_ones():
    kinds = {s.kind for s in samples.bundled()}
    assert len(kinds) >= 8
    assert REQUIRED_KINDS <= kinds
    assert kinds <= set(samples.KINDS)
    assert len(samples.bundled()) >= 10


def test_bundled_samples_are_well_formed():
    bundled = samples.bundled()
    ids = [s.id for s in bundled]
    titles = [s.title for s in bundled]
    assert len(set(ids)) == len(ids)
    assert len(set(titles)) == len(titles)
    for s in bundled:
        assert ID_RE.match(s.id), s.id
        assert ":" not in s.id  # "user:" ids are kept for user samples
        assert s.text.strip() and s.title.strip()
        assert s.source == "bundled"
        assert s.text == s.text.rstrip("\n")
        assert samples.get(s.id) == s


def test_bundled_lengths():
    for s in samples.bundled():
        words = len(s.text.split())
        low = 60 if s.kind.startswith("code-") else 150
        assert low <= words <= 500, (s.id, words)


def test_index_matches_files_and_package_data():
    """The texts are read as package data (so they ship in the wheel), and every file is indexed."""
    folder = resources.files("lmpeek.samples").joinpath("texts")
    index = json.loads(folder.joinpath("index.json").read_text(encoding="utf-8"))
    for entry in index:
        assert set(entry) == {"id", "title", "kind", "file", "description"}
        assert entry["description"].strip()
        assert folder.joinpath(entry["file"]).read_text(encoding="utf-8").strip()
    listed = {entry["file"] for entry in index}
    on_disk = {p.name for p in folder.iterdir() if p.name != "index.json"}
    assert listed == on_disk
    assert set(samples.descriptions()) == {s.id for s in samples.bundled()}


def test_bundled_returns_a_fresh_list():
    first = samples.bundled()
    first.clear()
    assert samples.bundled()


def test_chat_sample_uses_eot_turns():
    (chat,) = by_kind("chat")
    turns = chat.text.split("<eot>")
    assert len(turns) >= 4
    assert all(t.strip() for t in turns)


def longest_repeated_run(words: list[str]) -> int:
    """Length of the longest run of words that occurs twice (non-overlapping) in `words`."""
    best = 0
    n = len(words)
    for shift in range(1, n):
        run = 0
        for i in range(n - shift):
            run = run + 1 if words[i] == words[i + shift] else 0
            best = max(best, min(run, shift))
    return best


def test_longest_repeated_run_helper():
    assert longest_repeated_run("a b c x a b c".split()) == 3
    assert longest_repeated_run("a a a a".split()) == 2
    assert longest_repeated_run("a b c d".split()) == 0


def test_repetition_sample_repeats_a_long_run():
    (rep,) = by_kind("repetition")
    words = rep.text.split()
    assert longest_repeated_run(words) >= 20
    # random-looking: the repeated run is not itself made of repeats
    half = words[: len(words) // 2]
    assert len(set(half)) == len(half)


def test_non_english_samples_are_not_english():
    english = {"the", "and", "of", "to", "is", "in", "that", "it", "was", "for"}
    non_english = by_kind("non-english")
    assert non_english
    scripts = set()
    for s in non_english:
        letters = [c for c in s.text if c.isalpha()]
        non_ascii = [c for c in letters if not c.isascii()]
        assert len(non_ascii) >= 20, s.id
        words = re.findall(r"\w+", s.text.lower())
        assert sum(w in english for w in words) / len(words) < 0.02, s.id
        if len(non_ascii) > len(letters) / 2:
            scripts.add("non-latin")
    assert "non-latin" in scripts  # at least one sample in a non-Latin script


def test_code_samples_look_like_code():
    (py,) = by_kind("code-python")
    assert "def " in py.text and "import" in py.text
    compile(py.text, py.id, "exec")
    (rs,) = by_kind("code-rust")
    assert "fn main" in rs.text and "let " in rs.text


def test_math_and_table_samples():
    (math,) = by_kind("math")
    assert "\\frac" in math.text and "$$" in math.text and re.search(r"\d+", math.text)
    (table,) = by_kind("table")
    rows = [line for line in table.text.splitlines() if line.startswith("|")]
    assert len(rows) >= 5
    assert len({row.count("|") for row in rows}) == 1  # every row has the same number of columns


def test_get_unknown_id_raises_keyerror_naming_it():
    with pytest.raises(KeyError, match="no-such-sample") as info:
        samples.get("no-such-sample")
    assert isinstance(info.value, UnknownSample) and isinstance(info.value, LmpeekError)
    message = str(info.value)
    assert "prose-lighthouse" in message  # lists some known ids
    assert not message.startswith(("'", '"'))  # not KeyError's repr


def test_library_without_user_folder_is_the_bundled_library():
    assert samples.library() == samples.bundled()


# ---------------------------------------------------------------- user folder


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_user_txt_md_and_jsonl(tmp_path):
    write(tmp_path, "b_notes.txt", "Plain text notes.\nSecond line.\n")
    write(tmp_path, "a-story.md", "Some intro.\n\n## The Real Title ##\n\nBody text.\n# Later heading\n")
    write(tmp_path, "c.md", "No heading here.\n")
    lines = [
        json.dumps({"text": "first line sample"}),
        json.dumps({"text": "titled", "title": "My title", "kind": "chat"}),
        "",
        json.dumps("a bare string sample"),
        json.dumps({"text": "own id", "id": "Favourite One"}),
    ]
    write(tmp_path, "d.jsonl", "\n".join(lines) + "\n")

    got = samples.load_user_samples(tmp_path)
    assert [s.id for s in got] == [
        "user:a-story",
        "user:b_notes",
        "user:c",
        "user:d-1",
        "user:d-2",
        "user:d-4",
        "user:favourite-one",
    ]
    story, notes, c, d1, d2, d4, own = got
    assert story.title == "The Real Title" and story.kind == "user"
    assert "Body text." in story.text
    assert notes.title == "B notes"
    assert notes.text == "Plain text notes.\nSecond line."
    assert notes.source == str(tmp_path / "b_notes.txt")
    assert c.title == "C"
    assert d1.text == "first line sample" and d1.kind == "user" and d1.title
    assert (d2.title, d2.kind) == ("My title", "chat")
    assert d4.text == "a bare string sample"
    assert own.text == "own id"
    assert all(ID_RE.match(s.id) for s in got)


def test_user_ids_are_stable_and_unique(tmp_path):
    write(tmp_path, "notes.txt", "from txt")
    write(tmp_path, "notes.md", "from md")
    write(tmp_path, "Notes!.txt", "shouting")
    write(tmp_path, "x.jsonl", json.dumps({"text": "clash", "id": "notes"}) + "\n")
    first = samples.load_user_samples(tmp_path)
    ids = [s.id for s in first]
    assert len(set(ids)) == len(ids)
    # sorted by file name: "Notes!.txt" < "notes.md" < "notes.txt" < "x.jsonl"
    assert [s.text for s in first] == ["shouting", "from md", "from txt", "clash"]
    assert ids == ["user:notes", "user:notes-2", "user:notes-3", "user:notes-4"]
    assert samples.load_user_samples(tmp_path) == first


def test_only_direct_files_with_known_suffixes(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    write(sub, "deep.txt", "not loaded")
    write(tmp_path, "image.png", b"\x89PNG\r\n")
    write(tmp_path, "data.json", "{}")
    write(tmp_path, "._resource.txt", b"\x00\x05\x16\x07")
    write(tmp_path, "UPPER.TXT", "upper-case suffix")
    got = samples.load_user_samples(str(tmp_path))
    assert [s.id for s in got] == ["user:upper"]


def test_bad_files_are_skipped_with_warnings(tmp_path):
    write(tmp_path, "a-good.txt", "fine")
    write(tmp_path, "b-empty.txt", "  \n\n")
    write(tmp_path, "c-empty.md", "")
    bad_lines = [
        '{"text": "ok"}',
        "{not json",
        "42",
        '{"title": "no text"}',
        '{"text": "   "}',
        '{"text": 7}',
    ]
    write(tmp_path, "d-bad.jsonl", "\n".join(bad_lines) + "\n")

    with pytest.warns(SampleWarning) as record:
        got = samples.load_user_samples(tmp_path)
    assert [s.id for s in got] == ["user:a-good", "user:d-bad-1"]
    messages = [str(w.message) for w in record]
    assert any("b-empty.txt" in m and "empty" in m for m in messages)
    assert any("c-empty.md" in m and "empty" in m for m in messages)
    for line in (2, 3, 4, 5, 6):
        assert any(f"d-bad.jsonl:{line}" in m for m in messages), line
    assert any("d-bad.jsonl:2" in m and "invalid JSON" in m for m in messages)
    assert len(messages) == 7


def test_oversized_file_is_skipped(tmp_path):
    write(tmp_path, "huge.txt", b"a" * (samples.MAX_USER_FILE_BYTES + 1))
    write(tmp_path, "huge.jsonl", b'"x"\n' * (samples.MAX_USER_FILE_BYTES // 4 + 1))
    write(tmp_path, "limit.txt", b"a" * samples.MAX_USER_FILE_BYTES)
    with pytest.warns(SampleWarning) as record:
        got = samples.load_user_samples(tmp_path)
    assert [s.id for s in got] == ["user:limit"]
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert any("huge.txt" in m and "MB" in m for m in messages)
    assert any("huge.jsonl" in m and "MB" in m for m in messages)


def test_invalid_utf8_is_replaced_not_fatal(tmp_path):
    write(tmp_path, "latin1.txt", "caf\u00e9 cr\u00e8me".encode("latin-1"))
    write(tmp_path, "lines.jsonl", b'{"text": "ok"}\n"caf\xe9"\n')
    with pytest.warns(SampleWarning) as record:
        got = samples.load_user_samples(tmp_path)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "latin1.txt" in messages[0] and "UTF-8" in messages[0]
    assert "lines.jsonl" in messages[1] and "UTF-8" in messages[1]
    assert [s.id for s in got] == ["user:latin1", "user:lines-1", "user:lines-2"]
    assert got[0].text == "caf\ufffd cr\ufffdme"
    assert got[2].text == "caf\ufffd"


def test_bom_and_crlf_are_normalised(tmp_path):
    write(tmp_path, "win.txt", b"\xef\xbb\xbfline one\r\nline two\r\n")
    (sample,) = samples.load_user_samples(tmp_path)
    assert sample.text == "line one\nline two"


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    write(tmp_path, "locked.txt", "secret")
    write(tmp_path, "open.txt", "public")
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.warns(SampleWarning, match=r"locked\.txt.*Permission denied"):
        got = samples.load_user_samples(tmp_path)
    assert [s.id for s in got] == ["user:open"]


def test_missing_folder_warns_and_gives_nothing(tmp_path):
    with pytest.warns(SampleWarning, match="does not exist"):
        assert samples.load_user_samples(tmp_path / "nope") == []
    with pytest.warns(SampleWarning, match="does not exist"):
        assert samples.library(tmp_path / "nope") == samples.bundled()


def test_library_appends_user_samples(tmp_path):
    write(tmp_path, "mine.txt", "my own text")
    lib = samples.library(tmp_path)
    assert lib[: len(samples.bundled())] == samples.bundled()
    assert lib[-1] == Sample(
        id="user:mine", title="Mine", kind="user", text="my own text", source=str(tmp_path / "mine.txt")
    )
    assert samples.get("user:mine", tmp_path).text == "my own text"
    assert samples.get("prose-lighthouse", tmp_path).source == "bundled"


def test_env_var_is_honoured(tmp_path, monkeypatch):
    write(tmp_path, "from-env.md", "# Env sample\n\ntext")
    monkeypatch.setenv("LMPEEK_SAMPLES", str(tmp_path))
    assert samples.library()[-1].id == "user:from-env"
    assert samples.get("user:from-env").title == "Env sample"
    # an explicit folder wins over the variable
    other = tmp_path / "other"
    other.mkdir()
    write(other, "explicit.txt", "explicit")
    assert [s.id for s in samples.library(other) if s.kind == "user"] == ["user:explicit"]
    monkeypatch.setenv("LMPEEK_SAMPLES", "")
    assert samples.library() == samples.bundled()


def test_get_missing_user_id_names_it(tmp_path):
    write(tmp_path, "mine.txt", "my own text")
    with pytest.raises(KeyError, match="user:not-there") as info:
        samples.get("user:not-there", tmp_path)
    assert "user:mine" in str(info.value)  # user ids are listed first for a user: id
    with pytest.raises(KeyError, match="did you mean 'prose-lighthouse'"):
        samples.get("prose-lighthous")


def test_jsonl_details(tmp_path):
    lines = [
        json.dumps({"text": "odd kind", "kind": "poetry"}),
        json.dumps({"text": "line\u2028separator inside"}, ensure_ascii=False),
        '{"text": "windows line ending"}\r',
    ]
    write(tmp_path, "e.jsonl", "\n".join(lines))
    write(tmp_path, "f.jsonl", "\n\n")
    with pytest.warns(SampleWarning) as record:
        got = samples.load_user_samples(tmp_path)
    assert [(s.id, s.kind) for s in got] == [("user:e-1", "user"), ("user:e-2", "user"), ("user:e-3", "user")]
    assert got[1].text == "line\u2028separator inside"
    assert got[2].text == "windows line ending"
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "e.jsonl:1" in messages[0] and "poetry" in messages[0] and "skipping" not in messages[0]
    assert "f.jsonl" in messages[1] and "empty" in messages[1]
