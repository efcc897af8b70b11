"""A quick look at a GGUF file before converting it: is it whole?

transformers' GGUF reader fails on a truncated or foreign file with whatever breaks first
(`struct.error`, a numpy reshape error, an IndexError) after seconds of work. Walking the header with
`struct` takes milliseconds (the tokenizer's ~50k strings included) and tells exactly what is wrong:
not a GGUF file, header cut short, or tensor data missing (an interrupted download).
Imports only the standard library, and `gguf` for the block sizes of quantised types.
"""

from __future__ import annotations

import mmap
import pathlib
import struct

_MAGIC = b"GGUF"
# value type -> struct format of one scalar (8 = string, 9 = array are handled apart)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_DEFAULT_ALIGNMENT = 32


class GGUFProblem(Exception):
    """What is wrong with the file, in words."""


class _Reader:
    def __init__(self, data: mmap.mmap | bytes):
        self.data = data
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise GGUFProblem(
                f"the header is cut short at byte {len(self.data):,} (truncated file or interrupted download)"
            )
        value = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return value[0] if len(value) == 1 else value

    def string(self) -> bytes:
        n = self.take("Q")
        if self.pos + n > len(self.data):
            raise GGUFProblem(
                f"the header is cut short at byte {len(self.data):,} (truncated file or interrupted download)"
            )
        self.pos += n
        return bytes(self.data[self.pos - n : self.pos])

    def value(self, kind: int):
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.take("I"), self.take("Q")
            if item in _SCALARS:  # skip the elements without reading them one by one
                size = struct.calcsize("<" + _SCALARS[item]) * count
                if self.pos + size > len(self.data):
                    raise GGUFProblem(f"the header is cut short at byte {len(self.data):,} (truncated file)")
                self.pos += size
                return None
            for _ in range(count):
                self.value(item)
            return None
        raise GGUFProblem(f"unknown metadata value type {kind} at byte {self.pos:,} (corrupt header)")


def check_gguf(path: pathlib.Path) -> None:
    """Raise GGUFProblem unless `path` is a GGUF file (v2 or v3) whose header reads through and whose
    tensor data is all there."""
    import gguf

    size = path.stat().st_size
    if size < 24:
        raise GGUFProblem(f"the file is only {size} bytes long; a GGUF header alone takes more")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        r = _Reader(data)
        if bytes(data[:4]) != _MAGIC:
            raise GGUFProblem("it does not start with the GGUF magic bytes, so it is not a GGUF file")
        r.pos = 4
        version = r.take("I")
        if version not in (2, 3):
            raise GGUFProblem(f"GGUF version {version} is not supported (2 and 3 are)")
        n_tensors, n_kv = r.take("Q"), r.take("Q")
        alignment = _DEFAULT_ALIGNMENT
        for _ in range(n_kv):
            key = r.string()
            kind = r.take("I")
            value = r.value(kind)
            if key == b"general.alignment" and isinstance(value, int) and value > 0:
                alignment = value
        end = 0
        for _ in range(n_tensors):
            r.string()  # name
            n_dims = r.take("I")
            dims = [r.take("Q") for _ in range(n_dims)]
            kind, offset = r.take("I"), r.take("Q")
            try:
                block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
            except (ValueError, KeyError):
                raise GGUFProblem(f"unknown tensor type {kind} (corrupt header, or a newer GGUF)") from None
            count = 1
            for d in dims:
                count *= d
            end = max(end, offset + count // block * block_bytes)
        data_start = -(-r.pos // alignment) * alignment
        if data_start + end > size:
            raise GGUFProblem(
                f"its tensors need {data_start + end:,} bytes but the file has {size:,} "
                "(truncated file or interrupted download)"
            )
