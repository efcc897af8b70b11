"""The trace envelope: one binary format for a Trace over HTTP, in the notebook widget and in exports.

Imports numpy and the standard library only (never torch), so that the store, the views and any
reader of a trace can use it without a model. `Trace.to_bytes()` / `Trace.from_bytes()` call it.

Layout (everything little-endian)::

    bytes 0-3        b"LMPK"
    bytes 4-7        uint32 n: the header's length (a multiple of 8; the JSON is padded with spaces)
    bytes 8..8+n     the header: UTF-8 JSON (see below)
    then             the buffers, each starting at a multiple of 8 from byte 0 (so that a Float32Array
                     or np.frombuffer can view it in place); `offset` in the header counts from byte 0

Header: ``{"format": "lmpeek.trace", "version": "1.0", "writer": "lmpeek 0.1.0", "text", "chat",
"tokens", "token_bytes" (hex per token), "partial" (indices of tokens holding part of a character),
"topk_labels" (each distinct top-k label once), "model" (info and fingerprint), "nonfinite", "norms"
(hook names, in order), "tensors" (kept hook names), "buffers": {name: {"dtype", "shape", "offset",
"nbytes", "as"?}}}`` plus ``"id"`` when the server sends a stored trace. Two buffers with the same
bytes share one offset (a block's resid_post norm is the next block's resid_pre norm).

Buffers: ``token_ids`` [T], ``offsets`` [T, 2], ``topk_ids`` [T, k] (int32; ``"as": "int64"`` says
the Trace held int64, restored on reading), ``topk_labels`` [T, k] int32 (index into the header's
``topk_labels``), ``topk_probs`` [T, k], ``entropy``, ``loss``, ``true_prob`` [T], ``attn_entropy``
[L, H, T], ``norms/<hook>`` [T], ``tensors/<hook>``; dtypes float16, float32 or int32 (float64 only
for a float64 array written exactly). NaN and ±inf travel as they are (the reader decides how to
show them; `nonfinite` says where the model made them).

Precision, chosen by the writer (the reader takes any listed dtype):

- ``"exact"`` (``Trace.to_bytes()``): every array in the dtype the Trace holds; reading gives back
  the same values bit for bit, NaN payloads included.
- ``"compact"`` (what the server sends the page): ``attn_entropy`` as float16, everything else as
  in "exact". Attention entropy lies in [0, ln T] (≤ 8.4 nats at 4,096 tokens), where float16 is
  within 0.004 nats (relative 2**-11), finer than any colour step, and it is the largest summary
  (L·H·T values: 1.1 M on the default model at 4,096 tokens). Probabilities stay float32: float16
  has no normal numbers below 6.1e-5 and rounds a next-token probability of 1e-8 to 0, and the page
  shows such small ones (p(next), the top-k). Norms stay float32: Gemma 3's residual stream goes
  past float16's 65,504. Kept tensors go float16 where all their values fit, as `Trace.save`'s
  heavy_dtype="auto" does.

Sizes (benchmarks/envelope_size.py, default model, 4,096 tokens): the JSON summary 33.3 MB; the
envelope 4.9 MB compact (3.9 MB gzipped, which the server does when the client takes gzip), 7.1 MB
exact. Two thirds of the compact bytes are attention entropy (2.2 MB as float16) and the norms
(2.0 MB as float32 after the shared buffers), so staying under 4 MB unzipped would take float16
norms, which change the fourth digit the page shows.

Versions: ``"major.minor"``. A reader refuses a newer major version (NewerTraceFormat, naming the
lmpeek that wrote it) and reads a newer minor one, ignoring buffers and header fields it does not
know. Adding a field or buffer is a minor bump; changing what an existing one means is a major one.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmpeek import __version__
from lmpeek.errors import InvalidInput

FORMAT = "lmpeek.trace"
VERSION = (1, 0)
MEDIA_TYPE = "application/vnd.lmpeek.trace"
MAGIC = b"LMPK"
ALIGN = 8
PRECISIONS = ("exact", "compact")

# wire dtype names -> numpy little-endian dtypes (what a reader accepts)
DTYPES = {"float16": "<f2", "float32": "<f4", "float64": "<f8", "int32": "<i4"}
# the Trace's arrays that go as buffers of the same name
_PLAIN = ("token_ids", "offsets", "topk_ids", "topk_probs", "entropy", "loss", "true_prob", "attn_entropy")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
# what an `"as"` may name: the array's dtype in the Trace, restored on reading
_RESTORABLE = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
               "float16", "float32", "float64"}  # fmt: skip


class TraceFormatError(InvalidInput):
    """Bytes that are not a readable lmpeek trace envelope (truncated, damaged, or not one at all)."""


class NewerTraceFormat(TraceFormatError):
    """An envelope written in a newer major version of the format than this lmpeek reads."""


@dataclass(frozen=True)
class Envelope:
    """A decoded envelope: its header (JSON) and its buffers as numpy arrays (read-only views)."""

    header: dict[str, Any]
    arrays: dict[str, np.ndarray]

    @property
    def version(self) -> tuple[int, int]:
        return _parse_version(self.header.get("version"))


# --- writing -----------------------------------------------------------------------------------------


def encode(
    header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, str] = {}
) -> bytes:
    """One envelope from header fields and named arrays; `dtypes[name]` overrides an array's wire
    dtype (else its own: float16/32/64 as they are, integers as int32, refused when they do not fit)."""
    specs: dict[str, dict[str, Any]] = {}
    blobs: list[bytes] = []
    seen: dict[tuple[str, bytes], int] = {}
    offset = 0  # relative to the buffer section; made absolute once the header's size is known
    for name, a in arrays.items():
        data, spec = _wire(name, np.asarray(a), dtypes.get(name))
        key = (spec["dtype"], hashlib.blake2b(data, digest_size=16).digest())
        if key in seen and data:
            spec["offset"] = seen[key]
        else:
            seen[key] = spec["offset"] = offset
            pad = -len(data) % ALIGN
            blobs.append(data + b"\0" * pad)
            offset += len(data) + pad
        specs[name] = spec
    head = {"format": FORMAT, "version": f"{VERSION[0]}.{VERSION[1]}", "writer": f"lmpeek {__version__}"}
    head |= {k: v for k, v in header.items() if k not in head}
    # the header's size depends on the absolute offsets written in it: grow until it settles
    start = 0
    while True:
        for spec in specs.values():
            spec["abs"] = start + spec["offset"]
        text = _dump({**head, "buffers": {n: _public(s) for n, s in specs.items()}})
        size = len(text) + -len(text) % ALIGN
        if 8 + size == start:
            break
        start = 8 + size
    text += b" " * (size - len(text))
    return b"".join([MAGIC, struct.pack("<I", size), text, *blobs])


def _public(spec: dict[str, Any]) -> dict[str, Any]:
    out = {"dtype": spec["dtype"], "shape": spec["shape"], "offset": spec["abs"], "nbytes": spec["nbytes"]}
    if "as" in spec:
        out["as"] = spec["as"]
    return out


def _dump(obj: Any) -> bytes:
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in some string: \u-escapes carry it exactly
        return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _wire(name: str, a: np.ndarray, want: str | None) -> tuple[bytes, dict[str, Any]]:
    kind = a.dtype.kind
    if want is None:
        if kind == "f" and a.dtype.itemsize in (2, 4, 8):
            want = {2: "float16", 4: "float32", 8: "float64"}[a.dtype.itemsize]
        elif kind in "iub":
            want = "int32"
        else:
            raise InvalidInput(
                f"envelope buffer '{name}': cannot write dtype {a.dtype} (float or integer only)"
            )
    if want not in DTYPES:
        raise InvalidInput(
            f"envelope buffer '{name}': dtype must be one of {', '.join(DTYPES)}, got {want!r}"
        )
    if want == "int32" and a.size and kind in "iu":
        lo, hi = int(a.min()), int(a.max())
        if lo < -(2**31) or hi >= 2**31:
            raise InvalidInput(f"envelope buffer '{name}' holds {lo}..{hi}, outside int32")
    with np.errstate(over="ignore"):  # float16 is only asked for where values fit (see compact_dtypes)
        wire = np.ascontiguousarray(a, dtype=DTYPES[want])
    spec: dict[str, Any] = {"dtype": want, "shape": list(a.shape), "nbytes": wire.nbytes}
    if wire.dtype != a.dtype.newbyteorder("<"):
        spec["as"] = a.dtype.name  # what the reader restores (e.g. int64 token ids)
    return wire.tobytes(), spec


def encode_trace(trace: Any, precision: str = "exact", trace_id: str | None = None) -> bytes:
    """The envelope of a Trace (any object with the Trace's fields); see the module docstring."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    labels: dict[str, int] = {}
    index = [[labels.setdefault(s, len(labels)) for s in row] for row in trace.topk_tokens]
    topk = np.asarray(trace.topk_ids)
    label_index = np.asarray(index, dtype=np.int32).reshape(topk.shape)
    header: dict[str, Any] = {} if trace_id is None else {"id": trace_id}
    header |= {
        "text": trace.text,
        "chat": bool(trace.chat),
        "tokens": list(trace.tokens),
        "token_bytes": [b.hex() for b in trace.token_bytes],
        "partial": [i for i, p in enumerate(trace.partial) if p],
        "topk_labels": list(labels),
        "model": trace.model,
        "nonfinite": list(trace.nonfinite),
        "norms": list(trace.norms),
        "tensors": list(trace.tensors),
    }
    arrays: dict[str, np.ndarray] = {name: getattr(trace, name) for name in _PLAIN}
    arrays["topk_labels"] = label_index
    arrays |= {f"norms/{k}": v for k, v in trace.norms.items()}
    arrays |= {f"tensors/{k}": v for k, v in trace.tensors.items()}
    return encode(header, arrays, compact_dtypes(arrays) if precision == "compact" else {})


def compact_dtypes(arrays: Mapping[str, np.ndarray]) -> dict[str, str]:
    """The wire dtypes of "compact" precision (see the module docstring for why)."""
    out = {"attn_entropy": "float16"}
    for name, a in arrays.items():
        if name.startswith("tensors/") and a.dtype.kind == "f" and a.size:
            finite = a[np.isfinite(a)]
            if float(np.abs(finite).max(initial=0.0)) <= _FLOAT16_MAX:
                out[name] = "float16"
    return out


# --- reading -----------------------------------------------------------------------------------------


def decode(data: bytes | bytearray | memoryview) -> Envelope:
    """Header and buffers of an envelope; refuses a newer major version and anything malformed."""
    buf = memoryview(data).cast("B")
    if len(buf) < 8 or bytes(buf[:4]) != MAGIC:
        raise TraceFormatError(
            "not an lmpeek trace envelope (it does not start with b'LMPK'); expected the bytes of "
            "Trace.to_bytes() or of GET /api/traces/{id} with Accept: " + MEDIA_TYPE
        )
    (size,) = struct.unpack("<I", buf[4:8])
    if 8 + size > len(buf):
        raise TraceFormatError(f"trace envelope truncated: its header needs {8 + size} bytes, got {len(buf)}")
    try:
        header = json.loads(bytes(buf[8 : 8 + size]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TraceFormatError(f"trace envelope header is not valid JSON: {err}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TraceFormatError(
            f"not an lmpeek trace envelope (format {header.get('format')!r}, expected {FORMAT!r})"
        )
    major, minor = _parse_version(header.get("version"))
    if major > VERSION[0]:
        writer = str(header.get("writer", "a newer lmpeek"))
        wrote = writer.removeprefix("lmpeek ")
        raise NewerTraceFormat(
            f"this trace is in envelope format {major}.{minor}, written by {writer}; this lmpeek "
            f"({__version__}) reads format {VERSION[0]}.x only. Read it with lmpeek {wrote} or newer "
            f"(pip install -U 'lmpeek>={wrote}')"
        )
    arrays: dict[str, np.ndarray] = {}
    for name, spec in (header.get("buffers") or {}).items():
        arrays[name] = _view(buf, name, spec)
    return Envelope(header=header, arrays=arrays)


def _parse_version(v: Any) -> tuple[int, int]:
    try:
        major, minor = str(v).split(".")
        return int(major), int(minor)
    except ValueError:
        raise TraceFormatError(f"trace envelope version {v!r} is not 'major.minor'") from None


def _view(buf: memoryview, name: str, spec: Any) -> np.ndarray:
    try:
        dtype, shape, offset, nbytes = (
            spec["dtype"],
            [int(d) for d in spec["shape"]],
            int(spec["offset"]),
            int(spec["nbytes"]),
        )
    except (TypeError, KeyError, ValueError):
        raise TraceFormatError(f"trace envelope buffer '{name}': bad description {spec!r}") from None
    if dtype not in DTYPES:
        raise TraceFormatError(
            f"trace envelope buffer '{name}': unknown dtype {dtype!r} ({', '.join(DTYPES)})"
        )
    dt = np.dtype(DTYPES[dtype])
    count = int(np.prod(shape, dtype=np.int64))
    if min(shape, default=0) < 0 or count * dt.itemsize != nbytes or offset < 0 or offset + nbytes > len(buf):
        raise TraceFormatError(
            f"trace envelope buffer '{name}' ({dtype} {shape}, {nbytes} bytes at {offset}) does not fit the "
            f"{len(buf)} bytes received: the envelope is truncated or damaged"
        )
    a = np.frombuffer(buf, dtype=dt, count=count, offset=offset).reshape(shape)
    restore = spec.get("as")
    if restore is None:
        return a
    if restore not in _RESTORABLE:
        raise TraceFormatError(f"trace envelope buffer '{name}': cannot restore dtype {restore!r}")
    return a.astype(restore)


def decode_trace(data: bytes | bytearray | memoryview) -> dict[str, Any]:
    """The Trace fields an envelope holds (keyword arguments of Trace); arrays are fresh copies."""
    env = decode(data)
    h, arrays = env.header, env.arrays
    missing = [n for n in (*_PLAIN, "topk_labels") if n not in arrays]
    missing += [f"norms/{k}" for k in h.get("norms", []) if f"norms/{k}" not in arrays]
    missing += [f"tensors/{k}" for k in h.get("tensors", []) if f"tensors/{k}" not in arrays]
    if missing:
        raise TraceFormatError(f"trace envelope lacks buffers {', '.join(missing[:5])}: it is damaged")
    labels = h["topk_labels"]
    try:
        topk_tokens = [[labels[i] for i in row] for row in arrays["topk_labels"].tolist()]
    except IndexError:
        raise TraceFormatError("trace envelope: a top-k label index points past topk_labels") from None
    return {
        "text": h["text"],
        "chat": h["chat"],
        "tokens": h["tokens"],
        "token_bytes": [bytes.fromhex(x) for x in h["token_bytes"]],
        "topk_tokens": topk_tokens,
        "model": h["model"],
        "nonfinite": list(h.get("nonfinite", [])),
        "norms": {k: np.array(arrays[f"norms/{k}"]) for k in h.get("norms", [])},
        "tensors": {k: np.array(arrays[f"tensors/{k}"]) for k in h.get("tensors", [])},
        **{name: np.array(arrays[name]) for name in _PLAIN},
    }
