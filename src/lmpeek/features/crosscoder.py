"""Crosscoders over two models at one hook point (base + chat), in both published layouts.

A model-diff crosscoder reads the same point (e.g. `blocks.13.hook_resid_post`) of a base model and of
its fine-tuned chat model and encodes the pair into one set of features. Its `hooks` name both reads,
"base:HOOK" and "chat:HOOK", so `encode({"base:HOOK": [T, d], "chat:HOOK": [T, d]}) -> [T, F]` fits the
one seam; `lmpeek.features.activations((base_model, chat_model), source, text)` runs each model once on
the same token ids (`pair_activations`). Model 0 of the files is the base model, model 1 the chat model.

What a spec may be: a folder, or one weights file in it. In a folder the weights are the first of
model.safetensors, cc_weights.safetensors, model_final.pt, cc_weights.pt, else the newest `{v}.pt`
next to a `{v}_cfg.json` (a replication checkpoint folder); safetensors are preferred and .pt files are
read with torch.load(weights_only=True). The layout is told by the tensor names:

  dictionary_learning (science-of-finetuning; `CrossCoder` / `BatchTopKCrossCoder`): encoder.weight
    [2, d, F], encoder.bias [F], decoder.weight [2, F, d], decoder.bias [2, d]; optional buffers
    activation_mean / activation_std [2, d] (NaN: no normalisation), activation_global_scale [2],
    target_rms, threshold (a scalar: BatchTopK), code_normalization_id; `_orig_mod.` prefixes (saved
    under torch.compile) are dropped. config.json (hub `save_pretrained`, or a training config) may
    give code_normalization, code_normalization_alpha_sae / _cc, keep_relative_variance and
    trainer.layer (the layer whose output it reads). Options: layer=L (-> blocks.L.hook_resid_post,
    where the collection scripts read: the layer's output) or hook=NAME, code_normalization=...
    (only where the file stores none; default CROSSCODER, as dictionary_learning assumes),
    keep_relative_variance=... (dictionary_learning's CrossCoder always uses True).
  Kissane (crosscoder-model-diff-replication): W_enc [2, d, F], W_dec [F, 2, d], b_enc [F], b_dec
    [2, d]; cfg.json ({v}_cfg.json) with d_in, dict_size, hook_point (TransformerLens name). Each
    model's activations were multiplied by sqrt(d) / mean‖x‖ in training, a factor that is not stored:
    pass scaling_factors=(s_base, s_chat) (without it features are computed unscaled, with a warning).

Encode (formulas: shared/anchors/features.md B5), on float32 inputs x_l [T, d], l = base, chat:

    x'_l = (x_l - μ_l) · s_l,  s_l = target_rms / sqrt(Σ_d σ²_l + 1e-8)   keep_relative_variance (or the
                                                                         stored activation_global_scale)
    x'_l = (x_l - μ_l) / (σ_l + 1e-8)                                    otherwise; x'_l = x_l with no
                                                                         (or NaN) mean/std buffers
    x'_l = x_l · scaling_factor_l                                        Kissane
    f    = relu(Σ_l x'_l W_enc[l] + b_enc)
    c_j  = Σ_l ‖W_dec[l, j]‖ (CROSSCODER) | ‖W_dec[:, j]‖ over (l, d) (SAE) | α_sae·SAE + α_cc·CROSSCODER
           (MIXED) | 1 (NONE); Kissane: 1 (its encode shows raw activations)
    f    = f · 1[f · c > threshold]                                      BatchTopK (the learned threshold)
    out  = f · c                                                         (get_activations: what
                                                                         dashboards show)

DECOUPLED code normalisation (per-model thresholds and codes) and crosscoders over other than two
activation sources (multi-layer crosscoders of one model) are refused. As in training, the first
position (BOS, the attention sink) is far out of distribution; its features are computed all the same.

The model-diff measure is `relative_decoder_norm` (‖W_dec[j, chat]‖ / (‖W_dec[j, base]‖ +
‖W_dec[j, chat]‖)) and `decoder_norm_classes` sorts features into base-only / shared / chat-only.
The crosscoder page (the app's Features tab) shows `page_summary` (weights only: the norms, their
histogram, the classes) and, on a text, `contributions`: each model's share of a feature's
pre-activation per token, beside the joint activation.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lmpeek.errors import InvalidInput, SourceNotFound
from lmpeek.features import points
from lmpeek.features.sources import FeatureSourceWarning, take

MODELS = ("base", "chat")  # model 0 and model 1 of both layouts
WEIGHT_FILES = ("model.safetensors", "cc_weights.safetensors", "model_final.pt", "cc_weights.pt")
CONFIG_FILES = ("config.json", "cfg.json")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
_VERSIONED = re.compile(r"^(\d+)\.pt$")

# dictionary_learning's CodeNormalization enum values (auto(): 1, 2, ...)
CODE_NORMALIZATIONS = {1: "CROSSCODER", 2: "SAE", 3: "MIXED", 4: "NONE", 5: "DECOUPLED"}
_EPS = 1e-8  # NormalizableMixin's

# decoder_norm_classes: relative decoder norm r below BASE_ONLY is base-only, above CHAT_ONLY chat-only,
# within SHARED shared; the rest is "other" (Kissane et al. and Minder et al. read the ~0, ~0.5, ~1
# clusters of the histogram this way)
BASE_ONLY = 0.1
CHAT_ONLY = 0.9
SHARED = (0.4, 0.6)


def key(role: str, hook: str) -> str:
    """The encode-mapping key of `role`'s values at `hook`: "base:blocks.3.hook_resid_post"."""
    return f"{role}:{hook}"


class CrosscoderSource:
    """A two-model crosscoder as a feature source (see the module docstring for the formulas).

    Tensors are float32 torch, in dictionary_learning's orientation whichever layout the file had:
    W_enc [2, d, F], b_enc [F], W_dec [2, F, d], b_dec [2, d]; inputs go through x' = (x - shift) * mult
    (shift, mult [2, d]) before the encoder."""

    kind = "crosscoder"
    models = MODELS

    def __init__(
        self,
        w: dict[str, Any],
        *,
        name: str,
        hook: str,
        layout: str,
        code_normalization: str,
        shift: Any,
        mult: Any,
        code: Any | None,
        threshold: float | None,
        folder: str | None = None,
    ):
        self.w = w
        self.name = name
        self.hook = hook
        self.hooks: tuple[str, ...] = tuple(key(role, hook) for role in self.models)
        self.layout = layout
        self.code_normalization = code_normalization
        self.shift, self.mult = shift, mult
        self.code = code  # c [F], or None (Kissane: raw activations)
        self.threshold = threshold
        self.folder = folder
        self.d_model = int(w["W_enc"].shape[1])
        self.n_features = int(w["W_enc"].shape[2])

    def __repr__(self) -> str:
        hook, n = self.hook, self.n_features
        return f"CrosscoderSource({self.name!r}, {self.layout}, base+chat {hook} -> {n} features)"

    @property
    def decoder_norms(self) -> np.ndarray:
        """‖W_dec[l, j]‖ per model and feature: [2, F] float32 (row 0 base, row 1 chat)."""
        return self.w["W_dec"].norm(dim=-1).cpu().numpy()

    def to(self, device: Any) -> CrosscoderSource:
        """Move the tensors (e.g. next to the models); returns self."""
        self.w = {k: v.to(device) for k, v in self.w.items()}
        self.shift, self.mult = self.shift.to(device), self.mult.to(device)
        self.code = None if self.code is None else self.code.to(device)
        return self

    def _input(self, acts: Mapping[str, Any]) -> Any:
        import torch

        device = self.w["W_enc"].device
        xs = []
        for name in self.hooks:
            x = take(acts, name, self.name)
            if isinstance(x, torch.Tensor):
                x = x.detach().to(device, torch.float32)
            else:
                x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
            if x.ndim != 2 or x.shape[1] != self.d_model:
                raise InvalidInput(
                    f"{self.name} reads [T, {self.d_model}] at {name}, got shape {list(x.shape)}"
                )
            xs.append(x)
        if xs[0].shape[0] != xs[1].shape[0]:
            raise InvalidInput(
                f"{self.name}: the two models' activations must cover the same tokens, got "
                f"{xs[0].shape[0]} and {xs[1].shape[0]} positions"
            )
        return torch.stack(xs, 1)  # [T, 2, d]

    def encode_torch(self, acts: Mapping[str, Any]) -> Any:
        """encode, staying in torch on the weights' device."""
        import torch

        with torch.inference_mode():
            x = (self._input(acts) - self.shift) * self.mult
            f = torch.relu(torch.einsum("tld,ldf->tf", x, self.w["W_enc"]) + self.w["b_enc"])
            if self.code is None:
                return f
            if self.threshold is not None:
                f = f * (f * self.code > self.threshold)
            return f * self.code

    def encode(self, acts: Mapping[str, Any]) -> np.ndarray:
        """{"base:HOOK": [T, d], "chat:HOOK": [T, d]} -> [T, F] float32."""
        return self.encode_torch(acts).cpu().numpy()

    def reconstruct(self, acts: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(target, reconstruction, features) for the hook-parity guard: both models' values side by
        side [T, 2d], their reconstruction x̂_l = (f @ W_dec[l] + b_dec[l]) / mult_l + shift_l (decoded
        in the normalised space the crosscoder was trained in, then mapped back), and the features
        [T, F]. f is the thresholded code before the code normalisation c, which only scales what
        dashboards show."""
        import torch

        with torch.inference_mode():
            x = self._input(acts)  # [T, 2, d]
            f = torch.relu(
                torch.einsum("tld,ldf->tf", (x - self.shift) * self.mult, self.w["W_enc"]) + self.w["b_enc"]
            )
            if self.code is not None and self.threshold is not None:
                f = f * (f * self.code > self.threshold)
            x_hat = (
                torch.einsum("tf,lfd->tld", f, self.w["W_dec"]) + self.w["b_dec"]
            ) / self.mult + self.shift
            shown = f if self.code is None else f * self.code
            T = x.shape[0]
            return (x.reshape(T, -1).cpu().numpy(), x_hat.reshape(T, -1).cpu().numpy(), shown.cpu().numpy())


# --- the model-diff measure ---------------------------------------------------------------------


def relative_decoder_norm(source: Any) -> np.ndarray:
    """‖W_dec[j, chat]‖ / (‖W_dec[j, base]‖ + ‖W_dec[j, chat]‖) per feature, [F] float32: ~0 base-only,
    ~0.5 shared, ~1 chat-only; NaN where both norms are 0 (a dead feature). `source`: a crosscoder
    source or its [2, F] decoder norms."""
    norms = getattr(source, "decoder_norms", source)
    norms = np.asarray(norms, dtype=np.float64)
    if norms.ndim != 2 or norms.shape[0] != 2:
        raise InvalidInput(f"relative_decoder_norm needs [2, F] decoder norms, got shape {list(norms.shape)}")
    if not np.all(np.isfinite(norms)) or (norms < 0).any():
        raise InvalidInput("decoder norms must be finite and non-negative")
    total = norms[0] + norms[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(total > 0, norms[1] / total, np.nan)
    return rel.astype(np.float32)


def decoder_norm_classes(
    rel: Any,
    *,
    base_only: float = BASE_ONLY,
    chat_only: float = CHAT_ONLY,
    shared: tuple[float, float] = SHARED,
) -> np.ndarray:
    """Each feature's class from its relative decoder norm r (`relative_decoder_norm`): "base-only"
    (r < base_only), "chat-only" (r > chat_only), "shared" (shared[0] <= r <= shared[1]), "other"
    (in between), "dead" (NaN). Returns a [F] array of str."""
    r = np.asarray(rel, dtype=np.float64)
    if r.ndim != 1:
        raise InvalidInput(f"decoder_norm_classes needs [F] relative norms, got shape {list(r.shape)}")
    lo, hi = float(shared[0]), float(shared[1])
    if not 0 <= base_only <= lo <= hi <= chat_only <= 1:
        raise InvalidInput(
            f"thresholds must satisfy 0 <= base_only <= shared low <= shared high <= chat_only <= 1, got "
            f"{base_only}, {shared}, {chat_only}"
        )
    out = np.full(r.shape, "other", dtype="<U9")
    out[r < base_only] = "base-only"
    out[r > chat_only] = "chat-only"
    out[(r >= lo) & (r <= hi)] = "shared"
    out[np.isnan(r)] = "dead"
    return out


# --- two models, one text -------------------------------------------------------------------------


def _pair(models: Any, source_name: str) -> tuple[Any, Any]:
    from lmpeek.capture.trace import require_model

    if not isinstance(models, tuple) or len(models) != 2:
        raise InvalidInput(
            f"{source_name} reads two models: give the pair (base_model, chat_model), "
            f"got {type(models).__name__}"
        )
    for m in models:
        require_model(m)
    return models


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    i = int(diff[0]) if diff.size else n
    ids = f"id {a[i]} vs {b[i]}" if i < n else "one ends first"
    return f"{len(a)} vs {len(b)} tokens, first difference at token {i}: {ids}"


def shared_ids(models: tuple[Any, Any], text: str | Sequence[int]) -> np.ndarray:
    """The token ids both models read for `text`: the chat model's tokenization (its chat template for
    `<eot>` turns), which the base model's tokenizer must reproduce (token ids given: both tokenizers
    must hold them, as the same pieces). A mismatch is a one-line InvalidInput."""
    from lmpeek.capture.tokens import format_text, from_ids, tokenize
    from lmpeek.capture.trace import vocab_size

    base, chat = models
    if isinstance(text, str):
        ids = tokenize(chat.tokenizer, text, chat.context_length).token_ids
        formatted, templated = format_text(chat.tokenizer, text)
        # a chat-formatted text is read as the chat model's template wrote it: no special tokens added
        other = tokenize(base.tokenizer, formatted, base.context_length, add_special_tokens=not templated)
        if not np.array_equal(ids, other.token_ids):
            raise InvalidInput(
                f"the base and chat models tokenize this text differently "
                f"({_first_difference(other.token_ids, ids)}): a crosscoder reads both models on the same "
                f"token ids, so they need the same tokenizer"
            )
        return ids
    ids = from_ids(chat.tokenizer, text, chat.context_length, vocab_size(chat)).token_ids
    from_ids(base.tokenizer, ids, base.context_length, vocab_size(base))
    pieces = [m.tokenizer.convert_ids_to_tokens(ids.tolist()) for m in models]
    if pieces[0] != pieces[1]:
        i = next(i for i, (a, b) in enumerate(zip(*pieces, strict=True)) if a != b)
        raise InvalidInput(
            f"the base and chat tokenizers read token id {int(ids[i])} as different pieces "
            f"({pieces[0][i]!r} vs {pieces[1][i]!r}): a crosscoder needs both models to share a tokenizer"
        )
    return ids


def pair_hooks(models: tuple[Any, Any], source: CrosscoderSource, text: str | Sequence[int]) -> dict:
    """Both models' float32 values at the source's hook for the same token ids, one forward each:
    {"base:HOOK": [T, d], "chat:HOOK": [T, d]} (what `source.encode` reads; the crosscoder page shows
    them side by side)."""
    from lmpeek.capture.batched import activations as capture

    models = _pair(models, source.name)
    ids = shared_ids(models, text).tolist()
    return {
        key(role, source.hook): capture(model, [ids], [source.hook])[0][source.hook]
        for role, model in zip(source.models, models, strict=True)
    }


def pair_activations(models: Any, source: Any, text: str | Sequence[int], features: Any = None) -> np.ndarray:
    """Crosscoder features [T, F] (float32) of `text` read by both models of `models` = (base, chat);
    `features`: only these columns, in this order. `source` may be a spec for `features.load`."""
    from lmpeek.features import _indices, load

    name = getattr(source, "name", str(source))
    models = _pair(models, name)
    source = load(source, models, check=False)
    if tuple(getattr(source, "models", ())) != MODELS:
        raise InvalidInput(f"{source.name} ({source.kind}) reads one model: give one model, not a pair")
    idx = _indices(source, features)
    out = source.encode(pair_hooks(models, source, text))
    return out if idx is None else out[:, idx]


# --- reading a folder ---------------------------------------------------------------------------


def _versioned(folder: Path) -> Path | None:
    """The newest `{v}.pt` that has a `{v}_cfg.json` beside it (a replication checkpoint folder)."""
    found = []
    for p in folder.glob("*.pt"):
        m = _VERSIONED.match(p.name)
        if m and (folder / f"{m.group(1)}_cfg.json").is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def weights_file(spec: Any) -> Path | None:
    """The weights file a crosscoder spec names (see the module docstring), or None."""
    if not isinstance(spec, (str, Path)) and not hasattr(spec, "__fspath__"):
        return None
    path = Path(spec).expanduser()
    if path.is_file():
        if path.name == "sae_weights.safetensors":  # SAELens's weights file: an SAE, not a crosscoder
            return None
        return path if path.suffix in WEIGHT_SUFFIXES else None
    if not path.is_dir():
        return None
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    return _versioned(path)


def _config_file(weights: Path) -> Path | None:
    m = _VERSIONED.match(weights.name)
    names = ([f"{m.group(1)}_cfg.json"] if m else []) + list(CONFIG_FILES)
    return next((weights.parent / n for n in names if (weights.parent / n).is_file()), None)


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidInput(f"{path} is not readable JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise InvalidInput(f"{path} must hold a JSON object")
    return cfg


def _read_weights(path: Path) -> dict[str, Any]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated files, pickles that are not plain state dicts, foreign formats
        reason = " ".join(str(err).split())[:200]
        raise InvalidInput(f"{path} is not a readable crosscoder weights file: {reason}") from None
    if isinstance(tensors, Mapping) and isinstance(tensors.get("state_dict"), Mapping):
        tensors = tensors["state_dict"]
    if not isinstance(tensors, Mapping) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise InvalidInput(f"{path} does not hold a state dict of tensors")
    # torch.compile saves parameters under "_orig_mod."; float32 whatever the file holds (thresholds)
    return {k.split("_orig_mod.")[-1]: v.to(torch.float32).contiguous() for k, v in tensors.items()}


def _need(w: dict, names: Sequence[str], where: Path, layout: str) -> None:
    missing = [n for n in names if n not in w]
    if missing:
        raise InvalidInput(
            f"{where}: a {layout} crosscoder needs tensor(s) {', '.join(missing)}; the file has "
            f"{', '.join(sorted(w)) or 'none'}"
        )


def _shape(w: dict, name: str, want: tuple[int, ...], where: Path, what: str) -> None:
    if tuple(w[name].shape) != want:
        raise InvalidInput(f"{where}: {name} has shape {list(w[name].shape)}, but {what} says {list(want)}")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _dictionary_learning(
    w: dict, cfg: dict, where: Path, *, code_normalization: str | None, keep_relative_variance: bool | None
) -> dict[str, Any]:
    import torch

    _need(
        w, ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"), where, "dictionary_learning"
    )
    enc = w["encoder.weight"]
    if enc.ndim != 3:
        raise InvalidInput(f"{where}: encoder.weight must be [models, d, F], got {list(enc.shape)}")
    n, d, F = enc.shape
    if n != 2:
        raise InvalidInput(
            f"{where} encodes {n} activation sources; lmpeek reads model-diff crosscoders over 2 models "
            f"(base, chat)"
        )
    what = f"encoder.weight {list(enc.shape)}"
    _shape(w, "encoder.bias", (F,), where, what)
    _shape(w, "decoder.weight", (2, F, d), where, what)
    _shape(w, "decoder.bias", (2, d), where, what)

    # code normalisation: the stored id, else config.json / the option, else CROSSCODER (as
    # dictionary_learning assumes)
    stored = None
    if "code_normalization_id" in w:
        stored = CODE_NORMALIZATIONS.get(int(w["code_normalization_id"].reshape(-1)[0].item()))
        if stored is None:
            raise InvalidInput(
                f"{where}: unknown code_normalization_id {w['code_normalization_id'].tolist()}"
            )
    elif isinstance(cfg.get("code_normalization"), str):
        stored = cfg["code_normalization"].upper()
    if code_normalization is not None:
        code_normalization = str(code_normalization).upper()
        if stored is not None and stored != code_normalization:
            raise InvalidInput(
                f"{where} stores code normalization {stored}; code_normalization={code_normalization} "
                f"contradicts it"
            )
    mode = stored or code_normalization or "CROSSCODER"
    if mode not in CODE_NORMALIZATIONS.values():
        raise InvalidInput(
            f"code normalization {mode!r} is not one of {', '.join(CODE_NORMALIZATIONS.values())}"
        )
    if mode == "DECOUPLED":
        raise InvalidInput(f"{where}: DECOUPLED code normalization (per-model codes) is not supported")
    dec = w["decoder.weight"]
    per_model = dec.norm(dim=2)  # [2, F]
    full = dec.norm(dim=(0, 2))  # [F]: the norm of the concatenated rows
    if mode == "CROSSCODER":
        code = per_model.sum(0)
    elif mode == "SAE":
        code = full
    elif mode == "MIXED":
        a_sae, a_cc = (
            cfg.get("code_normalization_alpha_sae", 1.0),
            cfg.get("code_normalization_alpha_cc", 0.1),
        )
        if not (_finite(a_sae) and _finite(a_cc)):
            raise InvalidInput(f"{where}: code_normalization_alpha_sae / _cc must be numbers")
        code = full * float(a_sae) + per_model.sum(0) * float(a_cc)
    else:
        code = torch.ones(F)

    threshold = None
    if "threshold" in w:
        if w["threshold"].numel() != 1:
            raise InvalidInput(
                f"{where}: threshold must be one number (BatchTopK), got {list(w['threshold'].shape)}"
            )
        threshold = float(w["threshold"].reshape(-1)[0].item())

    # input normalisation (NormalizableMixin): none unless both buffers are there and not NaN
    shift, mult = torch.zeros(2, d), torch.ones(2, d)
    if "activation_mean" in w and "activation_std" in w:
        for name in ("activation_mean", "activation_std"):
            _shape(w, name, (2, d), where, what)
        mean, std = w["activation_mean"], w["activation_std"]
        if not (torch.isnan(mean).any() or torch.isnan(std).any()):
            keep = (
                cfg.get("keep_relative_variance", True)
                if keep_relative_variance is None
                else keep_relative_variance
            )
            shift = mean
            if keep:
                if "activation_global_scale" in w:
                    _shape(w, "activation_global_scale", (2,), where, what)
                    scale = w["activation_global_scale"]
                else:
                    rms = float(w["target_rms"].reshape(-1)[0].item()) if "target_rms" in w else 1.0
                    scale = rms / torch.sqrt((std.double() ** 2).sum(-1) + _EPS).float()
                mult = scale[:, None].expand(2, d).clone()
            else:
                mult = 1.0 / (std + _EPS)
    return {
        "w": {"W_enc": enc, "b_enc": w["encoder.bias"], "W_dec": dec, "b_dec": w["decoder.bias"]},
        "shift": shift,
        "mult": mult,
        "code": code,
        "threshold": threshold,
        "code_normalization": mode,
    }


def _kissane(w: dict, cfg: dict, where: Path, *, scaling_factors: Any, label: str) -> dict[str, Any]:
    import torch

    _need(w, ("W_enc", "W_dec", "b_enc", "b_dec"), where, "Kissane-layout")
    enc = w["W_enc"]
    if enc.ndim != 3 or enc.shape[0] != 2:
        raise InvalidInput(f"{where}: W_enc must be [2, d, F] (two models), got {list(enc.shape)}")
    _, d, F = enc.shape
    what = f"W_enc {list(enc.shape)}"
    for name, size in (("d_in", d), ("dict_size", F)):
        if name in cfg and cfg[name] != size:
            raise InvalidInput(
                f"{where}: W_enc has shape {list(enc.shape)}, but the cfg says {name}={cfg[name]}"
            )
    _shape(w, "W_dec", (F, 2, d), where, what)
    _shape(w, "b_enc", (F,), where, what)
    _shape(w, "b_dec", (2, d), where, what)
    if scaling_factors is None:
        warnings.warn(
            FeatureSourceWarning(
                f"{label}: a Kissane-layout crosscoder was trained on activations scaled per model by "
                f"sqrt(d_model) / mean norm, a factor its files do not store; features are computed from "
                f"unscaled activations. Pass scaling_factors=(base, chat) to lmpeek.features.load"
            ),
            stacklevel=5,
        )
        scaling_factors = (1.0, 1.0)
    if (
        not isinstance(scaling_factors, (tuple, list))
        or len(scaling_factors) != 2
        or not all(_finite(s) and s > 0 for s in scaling_factors)
    ):
        raise InvalidInput(
            f"scaling_factors must be two positive numbers (base, chat), got {scaling_factors!r}"
        )
    mult = torch.tensor([float(s) for s in scaling_factors])[:, None].expand(2, d).clone()
    return {
        "w": {
            "W_enc": enc,
            "b_enc": w["b_enc"],
            "W_dec": w["W_dec"].permute(1, 0, 2).contiguous(),
            "b_dec": w["b_dec"],
        },
        "shift": torch.zeros(2, d),
        "mult": mult,
        "code": None,
        "threshold": None,
        "code_normalization": "NONE",
    }


def _hook(cfg: dict, layout: str, hook: str | None, layer: int | None, where: Path) -> str:
    if hook is not None and layer is not None:
        raise InvalidInput("give hook= or layer=, not both")
    if layer is not None:
        if not isinstance(layer, int) or isinstance(layer, bool) or layer < 0:
            raise InvalidInput(f"layer must be a layer number, got {layer!r}")
        return f"blocks.{layer}.hook_resid_post"
    if hook is not None:
        return hook
    if layout == "kissane" and isinstance(cfg.get("hook_point"), str):
        return cfg["hook_point"]
    trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), Mapping) else cfg
    found = trainer.get("layer")
    if isinstance(found, int) and not isinstance(found, bool) and found >= 0:
        return f"blocks.{found}.hook_resid_post"  # the collection scripts read the layer's output
    raise InvalidInput(
        f"{where} does not say which hook point it reads: pass layer=L (blocks.L.hook_resid_post) or "
        f"hook=NAME"
    )


def _check_width(models: Sequence[Any], hook: str, d: int, label: str) -> str:
    name = hook
    for model in models:
        bound = model.bound
        name = points.from_transformer_lens(hook, bound)
        width = points.shape(bound, name)
        if width != (d,):
            model_name = getattr(model, "name", "a model")
            raise InvalidInput(
                f"{label} reads {d} numbers per token, but {model_name}'s {name} holds {list(width)}: "
                f"the crosscoder is for another model or another hook point"
            )
    return name


def load(
    spec: Any,
    model: Any = None,
    *,
    hook: str | None = None,
    layer: int | None = None,
    scaling_factors: Sequence[float] | None = None,
    code_normalization: str | None = None,
    keep_relative_variance: bool | None = None,
    name: str | None = None,
) -> CrosscoderSource:
    """The crosscoder in folder (or weights file) `spec`. `model`: the pair (base, chat) or one of
    them, to resolve the hook name and check d_model against; options as in the module docstring."""
    weights = weights_file(spec)
    if weights is None:
        raise SourceNotFound(
            f"no crosscoder weights in {str(spec)!r}: lmpeek reads a folder with one of "
            f"{', '.join(WEIGHT_FILES)} (or {{v}}.pt + {{v}}_cfg.json), or such a file"
        )
    cfg = _read_config(_config_file(weights))
    w = _read_weights(weights)
    label = name or (weights.parent.resolve().name or weights.stem)
    if "encoder.weight" in w:
        layout = "dictionary_learning"
        if scaling_factors is not None:
            raise InvalidInput(
                f"{label} stores its own normalisation (dictionary_learning layout): scaling_factors is for "
                f"Kissane-layout crosscoders"
            )
        parts = _dictionary_learning(
            w,
            cfg,
            weights,
            code_normalization=code_normalization,
            keep_relative_variance=keep_relative_variance,
        )
    elif "W_enc" in w:
        layout = "kissane"
        if code_normalization is not None or keep_relative_variance is not None:
            raise InvalidInput(
                f"{label} is a Kissane-layout crosscoder: code_normalization and keep_relative_variance are "
                f"for the dictionary_learning layout"
            )
        parts = _kissane(w, cfg, weights, scaling_factors=scaling_factors, label=label)
    else:
        raise InvalidInput(
            f"{weights} is not a crosscoder lmpeek reads: it has {', '.join(sorted(w)[:8]) or 'no tensors'} "
            f"(expected encoder.weight/decoder.weight or W_enc/W_dec)"
        )
    d = int(parts["w"]["W_enc"].shape[1])
    tl_hook = _hook(cfg, layout, hook, layer, weights)
    if model is None:
        models: tuple[Any, ...] = ()
    elif isinstance(model, tuple):
        models = _pair(model, label)
    else:
        models = (model,)
    hook_name = _check_width(models, tl_hook, d, label) if models else points.from_transformer_lens(tl_hook)
    return CrosscoderSource(
        parts["w"],
        name=label,
        hook=hook_name,
        layout=layout,
        code_normalization=parts["code_normalization"],
        shift=parts["shift"],
        mult=parts["mult"],
        code=parts["code"],
        threshold=parts["threshold"],
        folder=str(weights.parent),
    )


# --- the crosscoder page (server/routes_crosscoder.py; web CrosscoderPanel) ------------------------

HIST_BINS = 20  # the relative decoder norm's histogram: bins of 0.05 over [0, 1]
CLASSES = ("base-only", "shared", "chat-only", "other", "dead")  # class_of indexes this


def norm_histogram(rel: Any, bins: int = HIST_BINS) -> dict[str, list]:
    """The histogram of relative decoder norms over [0, 1] in `bins` equal bins (the last one closed,
    so r = 1 counts); dead features (NaN) are left out. {"edges": [bins + 1], "counts": [bins]}."""
    r = np.asarray(rel, dtype=np.float64)
    counts, edges = np.histogram(r[np.isfinite(r)], bins=int(bins), range=(0.0, 1.0))
    return {"edges": edges.tolist(), "counts": counts.astype(int).tolist()}


def class_table(
    rel: Any, *, base_only: float = BASE_ONLY, chat_only: float = CHAT_ONLY, shared: tuple = SHARED
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The classes of `decoder_norm_classes` with the thresholds used: ([{name, count, lo, hi}] in
    CLASSES order, where lo/hi bound r (None for dead; "other" is the two gaps between the ranges), and
    each feature's class as an index into it, [F] int8)."""
    labels = decoder_norm_classes(rel, base_only=base_only, chat_only=chat_only, shared=shared)
    index = {name: i for i, name in enumerate(CLASSES)}
    class_of = np.fromiter((index[c] for c in labels), dtype=np.int8, count=len(labels))
    bounds = {"base-only": (0.0, base_only), "shared": tuple(shared), "chat-only": (chat_only, 1.0),
              "other": (base_only, chat_only), "dead": (None, None)}  # fmt: skip
    table = [
        {"name": name, "count": int((class_of == i).sum()), "lo": bounds[name][0], "hi": bounds[name][1]}
        for i, name in enumerate(CLASSES)
    ]
    return table, class_of


def page_summary(source: CrosscoderSource) -> dict[str, Any]:
    """What the crosscoder page shows of the weights alone (no model needed): per feature the relative
    decoder norm (NaN: dead) and both decoder norms, the norm's histogram over [0, 1], the classes with
    their thresholds and counts, and each feature's class."""
    norms = source.decoder_norms
    rel = relative_decoder_norm(norms)
    table, class_of = class_table(rel)
    return {
        "source": source.name,
        "hook": source.hook,
        "layout": source.layout,
        "code_normalization": source.code_normalization,
        "n_features": source.n_features,
        "d_model": source.d_model,
        "relative_norm": rel,
        "decoder_norms": {"base": norms[0], "chat": norms[1]},
        "histogram": norm_histogram(rel),
        "classes": table,
        "class_of": class_of.tolist(),
    }


def contributions(source: CrosscoderSource, acts: Mapping[str, Any], features: Sequence[int]) -> dict:
    """Which model drives each of `features` on each token. With x'_l the normalised input of model l
    (see the module docstring), feature j's pre-activation is base + chat + b_enc[j], where
    base = x'_base · W_enc[base, :, j] and chat = x'_chat · W_enc[chat, :, j]; its activation (what the
    dashboards show: `encode`) is relu of that, thresholded and scaled by c_j. Returns, for K features
    and T tokens: activation, base, chat [K, T]; bias, code [K] (code 1 without code normalisation);
    threshold (None unless BatchTopK); and each model's ‖x_l‖ (its raw hook value) per token [T].
    Contributions are float64 from the float32 weights and values."""
    import torch

    idx = [int(j) for j in features]
    x = source._input(acts)  # [T, 2, d] float32, both models' raw values
    with torch.inference_mode():
        xn = ((x - source.shift) * source.mult).double()
        w = source.w["W_enc"][:, :, idx].double()  # [2, d, K]
        parts = torch.einsum("tld,ldk->lkt", xn, w).cpu().numpy()  # [2, K, T]
    activation = source.encode(acts)[:, idx].T  # [K, T]: the one encode every view shows
    code = np.ones(len(idx)) if source.code is None else source.code[idx].double().cpu().numpy()
    norms = torch.linalg.vector_norm(x.double(), dim=-1).cpu().numpy()  # [T, 2]
    return {
        "activation": activation,
        "base": parts[0],
        "chat": parts[1],
        "bias": source.w["b_enc"][idx].double().cpu().numpy(),
        "code": code,
        "threshold": source.threshold,
        "norms": {"base": norms[:, 0], "chat": norms[:, 1]},
    }
