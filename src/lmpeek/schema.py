"""The Trace and its envelope: the one format of a trace, on disk, over HTTP, in the notebook widget and in
exports. The `Trace` dataclass (at the end: plain arrays, `save`/`load` to a folder) and the envelope
(a binary form: a JSON header and named buffers).

Imports numpy and the standard library only (never torch), so that the store, the views and any
reader of a trace can use it without a model. `Trace.to_bytes()` / `Trace.from_bytes()` call it.

Layout (everything little-endian)::

    bytes 0-3        b"LMPK"
    bytes 4-7        uint32 n: the header's length (a multiple of 8; the JSON is padded with spaces)
    bytes 8..8+n     the header: UTF-8 JSON (see below)
    then             the buffers, each starting at a multiple of 8 from byte 0 (so that a Float32Array
                     or np.frombuffer can view it in place); `offset` in the header counts from byte 0

Header: ``{"format": "lmpeek.trace", "version": "1.1", "writer": "lmpeek 0.1.0", "text", "chat",
"tokens", "token_bytes" (hex per token), "partial" (indices of tokens holding part of a character),
"topk_labels" (each distinct top-k label once), "model" (info and fingerprint), "nonfinite", "norms"
(hook names, in order), "tensors" (kept hook names), "buffers": {name: {"dtype", "shape", "offset",
"nbytes", "as"?}}}`` plus ``"id"`` when the server sends a stored trace. Two buffers with the same
bytes share one offset (a block's resid_post norm is the next block's resid_pre norm). ``"omitted"``
(1.1): parts an envelope made for a page leaves out ("norms", "attn_entropy": an HTML export's views
read neither from it); such an envelope is not a whole Trace and `decode_trace` refuses it.

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
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmpeek import __version__
from lmpeek.capture.tokens import is_partial  # numpy only, like this module
from lmpeek.errors import InvalidInput

FORMAT = "lmpeek.trace"
VERSION = (1, 1)  # 1.1: "omitted" (a page's envelope may leave out what its views never read)
MEDIA_TYPE = "application/vnd.lmpeek.trace"
MAGIC = b"LMPK"
ALIGN = 8
PRECISIONS = ("exact", "compact")

# wire dtype names -> numpy little-endian dtypes (what a reader accepts)
DTYPES = {"float16": "<f2", "float32": "<f4", "float64": "<f8", "int32": "<i4"}
# the Trace's arrays that go as buffers of the same name
_PLAIN = ("token_ids", "offsets", "topk_ids", "topk_probs", "entropy", "loss", "true_prob", "attn_entropy")
_FLOAT16_MAX = float(np.finfo(np.float16).max)
# what an envelope made for a page may leave out (encode_trace's omit): no view of an exported page reads
# the per-layer norms or the attention entropy from the envelope (their panels ask routes, whose answers
# the export records), and at 4,096 tokens they are 3/4 of its bytes
OMITTABLE = ("norms", "attn_entropy")
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


def encode_trace(
    trace: Any, precision: str = "exact", trace_id: str | None = None, omit: tuple[str, ...] = ()
) -> bytes:
    """The envelope of a Trace (any object with the Trace's fields); see the module docstring. `omit`:
    parts of OMITTABLE left out, named in the header's "omitted" (an export's page reads neither)."""
    if precision not in PRECISIONS:
        raise InvalidInput(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if unknown := set(omit) - set(OMITTABLE):
        can = ", ".join(OMITTABLE)
        raise InvalidInput(f"omit: {', '.join(sorted(unknown))} cannot be left out ({can} can)")
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
        "norms": [] if "norms" in omit else list(trace.norms),
        "tensors": list(trace.tensors),
    }
    if omit:
        header["omitted"] = [o for o in OMITTABLE if o in omit]
    arrays: dict[str, np.ndarray] = {name: getattr(trace, name) for name in _PLAIN if name not in omit}
    arrays["topk_labels"] = label_index
    if "norms" not in omit:
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
    if h.get("omitted"):
        raise TraceFormatError(
            f"this envelope leaves out {', '.join(map(str, h['omitted']))}: it was written for a page (an "
            f"HTML export), not as a whole Trace; read one from Trace.to_bytes() or GET /api/traces/{{id}}"
        )
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


# --- the Trace ---------------------------------------------------------------------------------------

FORMAT_VERSION = 1
_ARRAYS = ("token_ids", "offsets", "topk_ids", "topk_probs", "entropy", "loss", "true_prob", "attn_entropy")
HEAVY_DTYPES = ("auto", "float16", "float32")
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65,504: anything larger is inf in float16


class NonFiniteWarning(UserWarning):
    """The model produced inf or NaN during a forward pass (see Trace.nonfinite)."""


class NonFiniteValues(InvalidInput):
    """A trace holding inf or NaN was to be saved without allow_nonfinite=True."""


@dataclass
class Trace:
    """Everything one forward pass over a text showed. Shapes: T tokens, k alternatives, L layers, H heads.

    token_ids [T] int64; offsets [T, 2] char spans into `text`; tokens: display strings.
    token_bytes [T]: the exact bytes of each token; joined they give `text`'s UTF-8 (byte-level
    tokenizers). A token holding part of a character (`partial`) is shown as `<0xC3>` markers in
    `tokens` and `topk_tokens` (never U+FFFD); the character's span goes to the token holding its first
    byte, later pieces get an empty span, so offsets never overlap (see capture/tokens.py).
    topk_ids, topk_probs [T, k]: the prediction made *at* position t (for token t+1).
    entropy [T] (nats); loss [T] = -log p(token t+1), NaN at the last position; true_prob [T] = exp(-loss).
    norms[hook] -> [T] for blocks.{l}.hook_{resid_pre,attn_out,resid_mid,mlp_out,resid_post}.
    attn_entropy [L, H, T]: entropy of each query's attention distribution.
    tensors[hook] -> the hook point's array for every hook named in `keep` (see trace()).
    nonfinite: the hook points where the model produced inf or NaN (their norms are not finite), in
    forward order, plus "logits" when the predictions are; empty for a healthy forward. trace() warns
    (NonFiniteWarning) when it is not empty, and save() refuses such a trace unless told to keep it.
    """

    text: str
    tokens: list[str]
    token_ids: np.ndarray
    offsets: np.ndarray
    topk_ids: np.ndarray
    topk_probs: np.ndarray
    topk_tokens: list[list[str]]
    entropy: np.ndarray
    loss: np.ndarray
    true_prob: np.ndarray
    norms: dict[str, np.ndarray]
    attn_entropy: np.ndarray
    model: dict[str, Any]
    chat: bool = False
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    nonfinite: list[str] = field(default_factory=list)
    token_bytes: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.token_bytes:  # a trace built by hand, or saved before token_bytes existed
            self.token_bytes = [t.encode("utf-8") for t in self.tokens]

    @property
    def partial(self) -> list[bool]:
        """Per token: True when it holds only part of a character (its bytes are not UTF-8 alone)."""
        return [is_partial(b) for b in self.token_bytes]

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(
                f"'{name}' was not kept in this trace; pass keep=['{name}'] (glob patterns work, "
                f"e.g. keep=['blocks.*.attn.hook_pattern']) to lmpeek.trace"
            ) from None

    @property
    def kept(self) -> list[str]:
        return list(self.tensors)

    def norm_matrix(self, component: str) -> np.ndarray:
        """[L, T] norms of one component ('resid_pre', 'attn_out', 'resid_mid', 'mlp_out', 'resid_post')."""
        return np.stack([self.norms[f"blocks.{i}.hook_{component}"] for i in range(self.model["n_layers"])])

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary fields (NaN and ±inf -> None; `nonfinite` says where the model made them)."""

        def clean(a: np.ndarray) -> Any:
            if a.dtype.kind == "f":
                return (
                    [clean(x) for x in a]
                    if a.ndim > 1
                    else [v if math.isfinite(v) else None for v in a.tolist()]
                )
            return a.tolist()

        return {
            "model": self.model,
            "text": self.text,
            "chat": self.chat,
            "tokens": self.tokens,
            "token_ids": self.token_ids.tolist(),
            "offsets": self.offsets.tolist(),
            "token_bytes": [b.hex() for b in self.token_bytes],  # merge byte pieces for display
            "partial": self.partial,
            "topk_ids": self.topk_ids.tolist(),
            "topk_probs": clean(self.topk_probs),
            "topk_tokens": self.topk_tokens,
            "entropy": clean(self.entropy),
            "loss": clean(self.loss),
            "true_prob": clean(self.true_prob),
            "norms": {k: clean(v) for k, v in self.norms.items()},
            "attn_entropy": clean(self.attn_entropy),
            "kept": self.kept,
            "nonfinite": list(self.nonfinite),
        }

    # --- the envelope: one binary format for HTTP, the notebook widget and exports (lmpeek.schema) ----

    def to_bytes(self, precision: str = "exact") -> bytes:
        """The trace as one envelope (see lmpeek.schema): a JSON header and little-endian buffers.
        "exact" (default) keeps every array's dtype, so `Trace.from_bytes` gives this trace back
        unchanged (NaN and inf included); "compact" sends attention entropy as float16 (what the
        server sends the page)."""
        from lmpeek.schema import encode_trace

        return encode_trace(self, precision=precision)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Trace:
        """A Trace from `to_bytes()`'s envelope (or GET /api/traces/{id} with Accept:
        application/vnd.lmpeek.trace); refuses one written in a newer major format version."""
        from lmpeek.schema import decode_trace

        return cls(**decode_trace(data))

    # --- views: the same page as the app, self-contained (lmpeek.views.export) ---------------------------

    def to_html(
        self,
        path: str | Path | None = None,
        include: str | None = None,
        model: Any = None,
        view: str = "explore",
    ) -> str:
        """This trace as one self-contained HTML file (the app's Explore view, offline); written to
        `path` if given. With `model`, the text is run again on it so `include` ("attention=L:H,…",
        "lens", "grid", "grid=START:END", "qk=L:H:Q") can be embedded; without, the file shows what
        the trace holds. `view`: the tab it opens on, "explore" or "attention"."""
        from lmpeek.views.export import trace_html

        page = trace_html(self, model=model, include=include, view=view)
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def _repr_html_(self) -> str:
        """The export inline in a notebook output: as tall as its content where the output runs
        scripts (views.export.iframe_html), 640 px and resizable where not."""
        from lmpeek.views.export import iframe_html, trace_html

        return iframe_html(trace_html(self))

    # --- storage: <dir>/trace.safetensors (arrays) + <dir>/trace.json (strings, model info) ----------

    def save(self, path: str | Path, heavy_dtype: str = "auto", allow_nonfinite: bool = False) -> Path:
        """Write the trace to folder `path`; every summary is stored exactly.

        Kept tensors are stored as `heavy_dtype`: "auto" (float16, which halves the disk, for each
        tensor whose values all fit in it, float32 for one that goes past float16's 65,504, as Gemma 3's
        residual stream does), "float16" (refused for a tensor that would overflow) or "float32" (full
        precision). A trace holding inf or NaN (see `nonfinite`) is refused with NonFiniteValues unless
        `allow_nonfinite=True`, which writes the values as they are."""
        from safetensors.numpy import save_file

        if heavy_dtype not in HEAVY_DTYPES:
            raise InvalidInput(f"heavy_dtype must be one of {', '.join(HEAVY_DTYPES)}, got {heavy_dtype!r}")
        path = Path(path)
        heavy = {k: self._heavy(k, v, heavy_dtype, allow_nonfinite) for k, v in self.tensors.items()}
        if not allow_nonfinite:
            self._refuse_nonfinite(path)
        path.mkdir(parents=True, exist_ok=True)
        arrays = {name: np.ascontiguousarray(getattr(self, name)) for name in _ARRAYS}
        arrays |= {f"norms/{k}": v for k, v in self.norms.items()}
        arrays |= {f"tensors/{k}": v for k, v in heavy.items()}
        save_file(arrays, str(path / "trace.safetensors"))
        meta = {
            "format": FORMAT_VERSION,
            "text": self.text,
            "chat": self.chat,
            "tokens": self.tokens,
            "token_bytes": [b.hex() for b in self.token_bytes],
            "topk_tokens": self.topk_tokens,
            "model": self.model,
            "norms": list(self.norms),
            "tensors": list(self.tensors),
            "nonfinite": list(self.nonfinite),
        }
        (path / "trace.json").write_text(json.dumps(meta, ensure_ascii=False))
        return path

    def _heavy(self, name: str, v: np.ndarray, heavy_dtype: str, allow_nonfinite: bool) -> np.ndarray:
        """A kept tensor as it will be stored (see save); one pass over it finds both its range and
        whether it is finite (max|x| is NaN or inf otherwise)."""
        if v.dtype.kind != "f" or v.size == 0:
            return np.ascontiguousarray(v)
        peak = float(np.abs(v).max())
        if not math.isfinite(peak):
            if not allow_nonfinite:
                raise NonFiniteValues(self._nonfinite_message([f"tensors/{name}"]))
            peak = float(np.abs(v[np.isfinite(v)]).max(initial=0.0))
        if heavy_dtype == "float16" and peak > FLOAT16_MAX:
            raise InvalidInput(
                f"'{name}' holds values up to {peak:.4g}, past float16's {FLOAT16_MAX:,.0f}: save with "
                f"heavy_dtype='auto' (float32 for such tensors) or 'float32'"
            )
        fits = heavy_dtype == "float16" or (heavy_dtype == "auto" and peak <= FLOAT16_MAX)
        with np.errstate(over="ignore"):  # only an inf kept on purpose (allow_nonfinite) gets here
            return np.ascontiguousarray(v.astype(np.float16 if fits else np.float32, copy=False))

    def _nonfinite_arrays(self) -> list[str]:
        """The summaries holding inf or NaN (kept tensors are checked by _heavy; the last position's
        loss is NaN by definition: there is no next token)."""
        arrays = {"topk_probs": self.topk_probs, "entropy": self.entropy, "loss": self.loss[:-1],
                  "true_prob": self.true_prob[:-1], "attn_entropy": self.attn_entropy}  # fmt: skip
        arrays |= {f"norms/{k}": v for k, v in self.norms.items()}
        return [k for k, v in arrays.items() if not np.isfinite(v).all()]

    def _refuse_nonfinite(self, path: Path) -> None:
        bad = self._nonfinite_arrays()
        if bad:
            raise NonFiniteValues(self._nonfinite_message(bad, path))

    def _nonfinite_message(self, arrays: list[str], path: Path | None = None) -> str:
        where = ", ".join(self.nonfinite[:4] or arrays[:4])
        more = len(self.nonfinite or arrays) - 4
        return (
            f"not saving the trace{f' to {path}' if path else ''}: {self.model.get('name', 'the model')} "
            f"produced inf or NaN at {where}{f' and {more} more' if more > 0 else ''} (trace.nonfinite). "
            f"Save with allow_nonfinite=True (lmpeek trace --allow-nonfinite) to keep them as they are"
        )

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        from safetensors.numpy import load_file

        path = Path(path)
        if not (path / "trace.json").is_file() or not (path / "trace.safetensors").is_file():
            raise InvalidInput(
                f"{path} is not a saved lmpeek trace (expected trace.json + trace.safetensors)"
            )
        meta = json.loads((path / "trace.json").read_text())
        if meta.get("format") != FORMAT_VERSION:
            raise InvalidInput(f"{path}: trace format {meta.get('format')} is not {FORMAT_VERSION}")
        arrays = load_file(str(path / "trace.safetensors"))
        return cls(
            text=meta["text"],
            chat=meta["chat"],
            tokens=meta["tokens"],
            topk_tokens=meta["topk_tokens"],
            model=meta["model"],
            norms={k: arrays[f"norms/{k}"] for k in meta["norms"]},
            tensors={k: arrays[f"tensors/{k}"] for k in meta["tensors"]},
            nonfinite=list(meta.get("nonfinite", [])),
            token_bytes=[bytes.fromhex(h) for h in meta.get("token_bytes", [])],
            **{name: arrays[name] for name in _ARRAYS},
        )
