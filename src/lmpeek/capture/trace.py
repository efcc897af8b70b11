"""Trace: one forward pass -> tokens, predictions, per-layer summaries and any kept tensors."""

from __future__ import annotations

import fnmatch
import json
import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmpeek import validate
from lmpeek.capture.hooks import attach
from lmpeek.capture.predictions import next_token_stats
from lmpeek.capture.summaries import Summaries, merge
from lmpeek.capture.tokens import from_ids, is_partial, token_labels_fn, tokenize
from lmpeek.errors import InvalidInput
from lmpeek.models.loaded import LoadedModel

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

    def to_html(self, path: str | Path | None = None, include: str | None = None, model: Any = None) -> str:
        """This trace as one self-contained HTML file (the app's Explore view, offline); written to
        `path` if given. With `model`, the text is run again on it so `include` ("attention=L:H,…",
        "lens") can be embedded; without, the file shows what the trace holds."""
        from lmpeek.views.export import trace_html

        page = trace_html(self, model=model, include=include)
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def _repr_html_(self) -> str:
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


def resolve_keep(model: LoadedModel, keep: Iterable[str]) -> list[str]:
    """Expand glob patterns over this model's hook names; a pattern matching nothing is an error."""
    names = model.bound.hook_names()
    out: list[str] = []
    if isinstance(keep, str):
        keep = [keep]
    try:
        patterns = list(keep)
    except TypeError:
        raise InvalidInput(f"keep must be a list of hook names or glob patterns, got {keep!r}") from None
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise InvalidInput(f"keep patterns must be strings (hook names or globs), got {pattern!r}")
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise InvalidInput(
                f"keep pattern '{pattern}' matches no hook point of this model; examples: "
                f"'blocks.0.hook_resid_post', 'blocks.*.attn.hook_pattern', 'hook_embed'"
            )
        out += [h for h in hits if h not in out]
    return out


def _keeper(store: dict[str, np.ndarray], name: str):
    def keep(x: torch.Tensor) -> None:
        # drop the batch dim; float32 copy on the CPU, detached from the model's buffers
        store[name] = x[0].detach().to("cpu", torch.float32).numpy().copy()

    return keep


def require_model(model: Any) -> None:
    if not isinstance(model, LoadedModel):
        raise InvalidInput(
            f"model must be a model from lmpeek.load(...) or lmpeek.wrap(hf_model, tokenizer), "
            f"got {type(model).__name__}"
        )


def vocab_size(model: LoadedModel) -> int:
    """How many token ids the model can read (its embedding rows; may differ from len(tokenizer))."""
    return int(model.hf.get_input_embeddings().num_embeddings)


def decode_topk(tokenizer, topk_ids: np.ndarray) -> list[list[str]]:
    """Labels that read as text (' Paris', not 'ĠParis'), byte pieces as `<0xC3>` so that distinct
    byte tokens never share a label (decode() makes all of them U+FFFD)."""
    one = token_labels_fn(tokenizer)
    return [[one(i) for i in row] for row in topk_ids.tolist()]


@torch.inference_mode()
def trace(model: LoadedModel, text: str | Sequence[int], top_k: int = 10, keep: Iterable[str] = ()) -> Trace:
    """Run `model` once on `text` and return a Trace (see Trace for the fields and shapes).

    `text` may also be a sequence of token ids (e.g. prompt + generated tokens), used as given.
    `text` with `<eot>` separators is formatted with the tokenizer's chat template as alternating
    user/assistant turns. `keep`: hook names or glob patterns whose full arrays to keep, e.g.
    `["blocks.*.attn.hook_pattern", "blocks.3.hook_resid_post"]`.
    """
    require_model(model)
    top_k = validate.integer("top_k", top_k, 1, vocab_size(model))
    if isinstance(text, str):
        tok = tokenize(model.tokenizer, text, model.context_length)
    else:
        tok = from_ids(model.tokenizer, text, model.context_length, vocab_size(model))
    keep_names = resolve_keep(model, keep)
    summaries = Summaries(model.bound)
    kept: dict[str, np.ndarray] = {}
    handlers = merge(summaries.handlers(), {n: _keeper(kept, n) for n in keep_names})
    ids = torch.as_tensor(tok.token_ids, device=model.device)[None]
    with attach(model.bound, handlers):
        logits = model.hf(input_ids=ids, use_cache=False).logits[0]  # [T, V]
    stats = next_token_stats(logits, tok.token_ids, top_k)
    del logits
    nonfinite = _check_finite(model, summaries, stats)
    return Trace(
        text=tok.text,
        chat=tok.chat,
        tokens=tok.tokens,
        token_ids=tok.token_ids,
        offsets=tok.offsets,
        token_bytes=tok.token_bytes,
        topk_ids=stats.topk_ids,
        topk_probs=stats.topk_probs,
        topk_tokens=decode_topk(model.tokenizer, stats.topk_ids),
        entropy=stats.entropy,
        loss=stats.loss,
        true_prob=stats.true_prob,
        norms={k: v.cpu().numpy() for k, v in summaries.norms.items()},
        attn_entropy=summaries.stacked_entropy().cpu().numpy(),
        model=model.info(),
        tensors={n: kept[n] for n in keep_names},
        nonfinite=nonfinite,
    )


def _check_finite(model: LoadedModel, summaries: Summaries, stats) -> list[str]:
    """Where the forward produced inf or NaN (from the norms the hooks computed anyway, and the
    predictions), with a NonFiniteWarning naming the first place."""
    found = summaries.nonfinite()
    if not (np.isfinite(stats.entropy).all() and np.isfinite(stats.topk_probs).all()):
        bad = ~(np.isfinite(stats.entropy) & np.isfinite(stats.topk_probs).all(1))
        found.append(("logits", int(bad.argmax())))
    if not found:
        return []
    first, token = found[0]
    dtype = str(model.hf.get_input_embeddings().weight.dtype).removeprefix("torch.")
    others = f"; {len(found) - 1} more after it" if len(found) > 1 else ""
    warnings.warn(
        NonFiniteWarning(
            f"{model.name} produced inf or NaN: first at {first} (token {token}){others}; every place "
            f"is in trace.nonfinite. The model's own {dtype} arithmetic overflowed or its weights hold "
            f"inf/NaN; lmpeek shows these values as missing (null) and saves them only when told to"
        ),
        stacklevel=4,  # _check_finite, trace, torch's inference_mode wrapper, the caller
    )
    return [name for name, _ in found]


def resid_names(model: LoadedModel) -> list[str]:
    """The residual stream as hook names: every block's input, then the last block's output."""
    L = model.n_layers
    return [f"blocks.{i}.hook_resid_pre" for i in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]


def trace_with_resid(
    model: LoadedModel, text: str | Sequence[int], top_k: int = 10
) -> tuple[Trace, np.ndarray]:
    """`trace`, plus the residual stream [L+1, T, D] as float32: what a store keeps on disk so that any
    layer's internals can be recomputed later (see capture.slices.run_block). float32 because float16
    both overflows (Gemma 3's stream reaches 1e5) and leaves recomputed hook points 6e-3 × max|ref|
    off on the default model; bfloat16 7e-2 (benchmarks/resid_format.py)."""
    names = resid_names(model)
    t = trace(model, text, top_k=top_k, keep=names)
    first = t.tensors[names[0]]
    resid = np.empty((len(names), *first.shape), dtype=np.float32)
    for i, n in enumerate(names):  # row by row: each kept array is freed once copied
        resid[i] = t.tensors.pop(n)
    return t, resid
