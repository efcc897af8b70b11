"""Features: neurons, SAEs, transcoders and user functions, one seam (see sources.py).

    import lmpeek
    from lmpeek import features
    model = lmpeek.load("default")
    src = features.load("neurons:3", model)            # or a SAELens folder, or fn(text, indices)
    acts = features.activations(model, src, "The capital of France is")   # [T, F] float32

Features are computed from the float32 hook values of one forward (never from a stored float16
copy: JumpReLU thresholds and TopK choices flip on rounding). Loading an SAE with a model checks it
on a few hundred tokens of the bundled samples (`check_reconstruction`) and warns when it does not
reconstruct what it reads: a wrong model, hook point or activation processing shows up as a warning,
not as plausible-looking nonsense. Importing this package does not import torch; loading does.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmpeek.errors import InvalidInput
from lmpeek.features.builder import build
from lmpeek.features.db import FeatureDB
from lmpeek.features.formats import TDFeatures, from_td, neuronpedia_json, to_td_dict, write_td_sqlite
from lmpeek.features.sources import KINDS, FeatureSource, FeatureSourceWarning, Kind, kind_for, register

__all__ = ["KINDS", "FeatureDB", "FeatureSource", "FeatureSourceWarning", "Kind", "Reconstruction",
           "TDFeatures", "activations", "build", "check_reconstruction", "export_html", "from_td", "kind_for",
           "load", "neuronpedia_json", "register", "to_td_dict", "write_td_sqlite"]  # fmt: skip

# the hook-parity guard: above this fraction of variance unexplained an SAE is not reading what it was
# trained on (trained SAEs on their own hook point are typically well under 0.3)
FVU_WARN = 0.5
CHECK_TOKENS = 256
_CHECK_TOKENS_PER_TEXT = 64  # several bundled samples (prose, code, chat, ...) rather than one long one


def _require_model(model: Any) -> None:
    from lmpeek.capture.trace import require_model

    for m in model if isinstance(model, tuple) else (model,):  # a (base, chat) pair: crosscoders
        require_model(m)


def load(spec: Any, model: Any = None, *, check: bool = True, **options: Any) -> FeatureSource:
    """A feature source from `spec`: "neurons:L", a SAELens folder, or a function fn(text, indices)
    (with n_features=N). With `model`, hook names and sizes are checked against it and an SAE's
    reconstruction is measured (`check=False` skips that forward). Options go to the kind's loader:
    `scaling_factor` (SAEs with expected_average_only_in), `name`, `n_features` (functions)."""
    if isinstance(spec, FeatureSource):
        if options:
            raise InvalidInput(
                f"{spec.name} is already loaded; options ({', '.join(sorted(options))}) apply to specs only"
            )
        return spec
    if model is not None:
        _require_model(model)
    kind = kind_for(spec)
    if isinstance(model, tuple) and not kind.pair:
        raise InvalidInput(f"{kind.name} sources read one model: give one model, not a pair")
    source = kind.load(spec, model, **options)
    if model is not None and check and hasattr(source, "reconstruct"):
        if bool(getattr(source, "models", None)) != isinstance(model, tuple):
            return source  # a crosscoder loaded with one model (names checked): nothing to run it on
        if isinstance(model, tuple) and not _same_tokens(model):
            return source  # a pair that cannot read one text: activations() says why when asked
        check_reconstruction(model, source)
    return source


def _same_tokens(pair: tuple[Any, Any]) -> bool:
    from lmpeek.features.crosscoder import shared_ids

    try:
        shared_ids(pair, "The quick brown fox jumps over the lazy dog.")
    except InvalidInput:
        return False
    return True


def _indices(source: FeatureSource, features: Iterable[int] | None) -> list[int] | None:
    if features is None:
        return None
    from lmpeek import validate

    return [validate.integer("feature index", i, 0, source.n_features - 1) for i in features]


def activations(
    model: Any, source: Any, text: str | Sequence[int], features: Iterable[int] | None = None
) -> np.ndarray:
    """Feature activations [T, F] (float32) of `text` (or token ids), from one forward of `model`
    capturing only the hook points the source reads; `features`: only these columns, in this order.
    `source` may be a loaded source or a spec for `load`. A crosscoder reads two models: `model` is
    then the pair (base_model, chat_model), each run once on the same token ids."""
    _require_model(model)
    source = load(source, model, check=False)
    if isinstance(model, tuple) or getattr(source, "models", None):  # two models: crosscoder.py
        from lmpeek.features.crosscoder import pair_activations

        return pair_activations(model, source, text, features)
    idx = _indices(source, features)
    if not source.hooks:  # a function of the text (function.FunctionSource)
        from lmpeek.capture.tokens import tokenize

        if not isinstance(text, str):
            raise InvalidInput(f"{source.name} scores text: give a str, not token ids")
        n_tokens = len(tokenize(model.tokenizer, text, model.context_length).token_ids)
        return source.encode_text(text, idx, n_tokens=n_tokens)
    from lmpeek.capture.batched import activations as capture

    acts = capture(model, [text], list(source.hooks))[0]  # float32 copies of the forward's own values
    out = source.encode(acts)
    return out if idx is None else out[:, idx]


@dataclass(frozen=True)
class Reconstruction:
    """How well a source reproduces what it reads, on `n_tokens` tokens."""

    source: str
    hook: str  # the point compared against (a transcoder's output point)
    fvu: float  # fraction of variance unexplained: sum |x - x̂|² / sum |x - mean(x)|²
    l0: float  # mean number of active features per token
    n_tokens: int

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.fvu) and self.fvu <= FVU_WARN)


def _check_ids(model: Any, texts: Iterable[str] | None, max_tokens: int) -> list[np.ndarray]:
    """Token ids of `texts` (default: the bundled samples), each cut at _CHECK_TOKENS_PER_TEXT, until
    `max_tokens` tokens past each text's first are collected."""
    from lmpeek.capture.tokens import tokenize

    if texts is None:
        from lmpeek.samples.library import bundled

        texts = [s.text for s in bundled()]
    elif isinstance(texts, str):
        texts = [texts]
    out, total = [], 0
    for text in texts:
        ids = tokenize(model.tokenizer, text, model.context_length).token_ids[:_CHECK_TOKENS_PER_TEXT]
        ids = ids[: max_tokens - total + 1]
        if len(ids) < 2:
            continue
        out.append(ids)
        total += len(ids) - 1
        if total >= max_tokens:
            break
    if not out:
        raise InvalidInput("check_reconstruction needs text with at least two tokens")
    return out


def check_reconstruction(
    model: Any, source: Any, texts: Iterable[str] | None = None, max_tokens: int = CHECK_TOKENS
) -> Reconstruction:
    """The hook-parity guard: FVU and mean L0 of `source` on up to `max_tokens` tokens of `texts` (the
    bundled samples by default), with a FeatureSourceWarning when the FVU is above FVU_WARN.

    Each text's first position is left out: with or without BOS it is the attention sink, whose
    norm is far above every other token's and which SAEs are commonly trained without."""
    from lmpeek import validate
    from lmpeek.capture.batched import activations as capture

    _require_model(model)
    source = load(source, model, check=False)
    if not hasattr(source, "reconstruct"):
        raise InvalidInput(
            f"{source.name} ({source.kind}) reconstructs nothing: only SAEs and transcoders have an FVU"
        )
    max_tokens = validate.integer("max_tokens", max_tokens, 1, 1_000_000)
    pair = isinstance(model, tuple) or bool(getattr(source, "models", None))
    if pair:  # a crosscoder: both models on the chat model's token ids (crosscoder.shared_ids)
        from lmpeek.features.crosscoder import _pair, pair_hooks

        model = _pair(model, source.name)
        ids = _check_ids(model[1], texts, max_tokens)
        all_acts = [pair_hooks(model, source, i.tolist()) for i in ids]
    else:
        ids = _check_ids(model, texts, max_tokens)
        hooks = list(getattr(source, "check_hooks", source.hooks))
        all_acts = capture(model, [i.tolist() for i in ids], hooks)
    l0 = n = 0
    targets, recons = [], []
    for acts in all_acts:
        target, recon, f = source.reconstruct(acts)
        targets.append(target[1:].astype(np.float64))
        recons.append(recon[1:].astype(np.float64))
        l0 += int((f[1:] != 0).sum())
        n += len(f) - 1
    x, x_hat = np.concatenate(targets), np.concatenate(recons)
    err = float(((x - x_hat) ** 2).sum())
    var = float(((x - x.mean(0)) ** 2).sum())
    fvu = err / var if var > 0 else (0.0 if err == 0 else float("inf"))
    hook = getattr(source, "hook_out", None) or (f"{source.hook} of both models" if pair else hooks[0])
    result = Reconstruction(source.name, hook, fvu, l0 / n, n)
    if not result.ok:
        model_name = " and ".join(m.name for m in model) if pair else getattr(model, "name", "this model")
        warnings.warn(
            FeatureSourceWarning(
                f"{source.name} does not reconstruct {result.hook} of {model_name}: FVU {fvu:.3g} "
                f"(fraction of variance unexplained; above {FVU_WARN}, it is not reading what it was "
                f"trained on), L0 {result.l0:.1f} of {source.n_features}, on {n} tokens. Check the model, "
                f"the hook point and how the SAE's activations were processed: its features are likely "
                f"meaningless here"
            ),
            stacklevel=2,
        )
    return result


def export_html(db: Any, features: int | Iterable[int], source: str | None = None) -> str:
    """Feature pages as one self-contained HTML file that opens offline on the first feature's page
    (lmpeek.views.features_export: `db` a database path or FeatureDB, `source` its id or name)."""
    from lmpeek.views.features_export import export_html as export

    return export(db, features, source)
