"""SAEs and transcoders from a local SAELens folder, read directly (no sae_lens import).

A folder holds `cfg.json` and `sae_weights.safetensors`, optionally `sparsity.safetensors` (tensor
"sparsity": log10 of each feature's firing rate) and `activation_scaler.json` ({"scaling_factor": s}).
Both cfg layouts are read: SAELens 6's (fields at the top, the model side under "metadata") and the
older flat one (renamed as SAELens' own `handle_pre_6_0_config` does: hook_point -> hook_name,
hook_point_head_index -> hook_head_index, activation_fn_str -> activation_fn; activation_fn "topk" with
activation_fn_kwargs.k means architecture "topk"; normalize_activations true/false means
"expected_average_only_in"/"none"; reshape "hook_z" when the hook name says so).

Encode, as SAELens computes it (formulas: shared/anchors/features.md B4), on float32 inputs:

    x  = input [T, d_in]      (hook_z: [T, H, d] -> [T, H*d]; hook_head_index h: [T, H, d] -> [T, d])
    x  = x - mean_d(x)        only for SAEs made on TransformerLens with center_writing_weights, read
                              at a residual point of a LayerNorm model (TL centres every write; the
                              Hugging Face weights lmpeek runs do not)
    x' = norm_in(x)           none | constant_norm_rescale: x sqrt(d_in)/|x| | layer_norm: (x - mean) /
                              (std + 1e-5), std unbiased as torch's | expected_average_only_in: folded
                              into the weights at load when the scaling factor is known
    z  = (x' - b_dec [if apply_b_dec_to_input; never for transcoders]) @ W_enc + b_enc
    standard, transcoder, skip_transcoder        f = relu(z)
    jumprelu, jumprelu_(skip_)transcoder          f = relu(z) * [z > relu(threshold)]
                                                  (legacy log_threshold: threshold = exp(log_threshold))
    topk                                          z *= |W_dec row| if rescale_acts_by_decoder_norm;
                                                  f = the k largest of z per token, relu'd, others 0
    batchtopk (a training checkpoint; SAELens saves   z *= |W_dec row| if rescale;
      BatchTopK for inference as jumprelu with a      f = relu(z) * [z > topk_threshold]
      constant threshold, read as jumprelu)
    gated (x'' = x' - b_dec)                      f = [x'' W_enc + b_gate > 0]
                                                      * relu(x'' (W_enc * exp(r_mag)) + b_mag)

Decode: f / |W_dec row| first where encode rescaled, f * finetuning scaling factor (older SAEs),
then f @ W_dec + b_dec, then norm_out (SAEs only) and, for skip transcoders, + x @ W_skip^T.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmpeek.errors import InvalidInput, SourceNotFound
from lmpeek.features import points
from lmpeek.features.sources import FeatureSourceWarning, take

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
SCALER_FILE = "activation_scaler.json"

TRANSCODERS = ("transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder")
ARCHITECTURES = ("standard", "jumprelu", "topk", "batchtopk", "gated", *TRANSCODERS)
NORMALIZE = ("none", "constant_norm_rescale", "layer_norm", "expected_average_only_in")
_THRESHOLDED = ("jumprelu", "batchtopk", "jumprelu_transcoder", "jumprelu_skip_transcoder")
_LN_EPS = 1e-5  # SAELens' layer_norm mode


@dataclass(frozen=True)
class SaeConfig:
    """A SAELens cfg.json in one shape, whichever layout the file had."""

    architecture: str
    d_in: int
    d_sae: int
    d_out: int
    hook_name: str  # as the file names it (TransformerLens style)
    hook_name_out: str | None
    hook_head_index: int | None
    k: int | None
    rescale_acts_by_decoder_norm: bool
    apply_b_dec_to_input: bool
    normalize_activations: str
    reshape_activations: str
    center_writing_weights: bool
    model_name: str | None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)


def _major(version: Any) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def read_config(raw: Mapping[str, Any], where: str = "cfg.json") -> SaeConfig:
    """`raw` (a parsed cfg.json, either layout) as a SaeConfig, or InvalidInput naming the bad field."""
    if not isinstance(raw, Mapping):
        raise InvalidInput(f"{where} must hold a JSON object")
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), Mapping) else {}
    version = raw.get("sae_lens_version") or meta.get("sae_lens_version")
    old = not version or (_major(version) or 0) < 6
    # one flat dict: v6 keeps the model side under "metadata", older files keep everything at the top
    merged: dict[str, Any] = {k: v for k, v in raw.items() if k != "metadata"}
    merged.update(meta)
    renames = {
        "hook_point": "hook_name",
        "hook_point_head_index": "hook_head_index",
        "activation_fn_str": "activation_fn",
    }
    for old_key, new_key in renames.items():
        if old_key in merged:
            value = merged.pop(old_key)
            merged.setdefault(new_key, value)  # the current name wins when a file has both

    def need_int(key: str, value: Any = None) -> int:
        value = merged.get(key) if value is None else value
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInput(f"{where}: {key} must be a positive integer, got {value!r}")
        return value

    arch = merged.get("architecture") or "standard"
    act = merged.get("activation_fn")
    kwargs = merged.get("activation_fn_kwargs") or {}
    k = merged.get("k")
    if act == "topk" and isinstance(kwargs, Mapping) and kwargs.get("k") is not None:
        arch, k = "topk", kwargs["k"]
    elif old and act not in (None, "relu", "topk"):
        raise InvalidInput(
            f"{where}: activation_fn {act!r} is not supported (lmpeek reads relu and topk SAEs)"
        )
    if arch not in ARCHITECTURES:
        raise InvalidInput(
            f"{where}: architecture {arch!r} is not supported; lmpeek reads {', '.join(ARCHITECTURES)}"
        )
    norm = merged.get("normalize_activations")
    if isinstance(norm, bool):
        norm = "expected_average_only_in" if norm else "none"
    norm = norm or "none"
    if norm not in NORMALIZE:
        raise InvalidInput(f"{where}: normalize_activations {norm!r} is not one of {', '.join(NORMALIZE)}")
    hook = merged.get("hook_name")
    if not isinstance(hook, str) or not hook:
        raise InvalidInput(f"{where} names no hook point (metadata.hook_name)")
    reshape = merged.get("reshape_activations")
    if reshape is None:
        reshape = "hook_z" if old and "hook_z" in hook else "none"
    if reshape not in ("none", "hook_z"):
        raise InvalidInput(f"{where}: reshape_activations {reshape!r} is not 'none' or 'hook_z'")
    head = merged.get("hook_head_index")
    if head is not None and (not isinstance(head, int) or isinstance(head, bool) or head < 0):
        raise InvalidInput(f"{where}: hook_head_index must be a head number, got {head!r}")
    d_in = need_int("d_in")
    if arch == "topk":
        k = need_int("k", k)
    apply_b_dec = merged.get("apply_b_dec_to_input", True)
    if arch in TRANSCODERS:
        apply_b_dec = False  # SAELens refuses it for transcoders: b_dec lives in the output space
    pretrained = merged.get("model_from_pretrained_kwargs") or {}
    # only TopK and BatchTopK configs have the field (True by default in BatchTopK's training config)
    rescale = arch in ("topk", "batchtopk") and bool(
        merged.get("rescale_acts_by_decoder_norm", arch == "batchtopk")
    )
    return SaeConfig(
        architecture=arch,
        d_in=d_in,
        d_sae=need_int("d_sae"),
        d_out=need_int("d_out") if arch in TRANSCODERS else d_in,
        hook_name=hook,
        hook_name_out=merged.get("hook_name_out") or None,
        hook_head_index=head,
        k=k if arch == "topk" else None,
        rescale_acts_by_decoder_norm=rescale,
        apply_b_dec_to_input=bool(apply_b_dec),
        normalize_activations=norm,
        reshape_activations=reshape,
        center_writing_weights=bool(
            isinstance(pretrained, Mapping) and pretrained.get("center_writing_weights")
        ),
        model_name=merged.get("model_name"),
        metadata=dict(meta) if meta else merged,
    )


def _transcoder_out(cfg: SaeConfig) -> str | None:
    """Where a transcoder writes: its hook_name_out, else the MLP output of the layer it reads."""
    if cfg.hook_name_out:
        return cfg.hook_name_out
    layer, point = points.split(cfg.hook_name)
    mlp_inputs = ("hook_mlp_in", "ln2.hook_normalized", "ln2.hook_out", "hook_resid_mid")
    return f"blocks.{layer}.hook_mlp_out" if layer is not None and point in mlp_inputs else None


class SaeSource:
    """A SAELens SAE or transcoder as a feature source (see the module docstring for the formulas)."""

    kind = "saelens"

    def __init__(
        self,
        cfg: SaeConfig,
        weights: dict[str, torch.Tensor],
        *,
        name: str,
        hook: str,
        hook_out: str | None = None,
        center_in: bool = False,
        center_out: bool = False,
        log_sparsity: np.ndarray | None = None,
        folder: str | None = None,
    ):
        self.cfg = cfg
        self.name = name
        self.hooks: tuple[str, ...] = (hook,)
        self.hook_out = hook_out if cfg.architecture in TRANSCODERS else hook
        self.n_features = cfg.d_sae
        self.center_in, self.center_out = center_in, center_out
        self.log_sparsity = log_sparsity
        self.folder = folder
        self.w = weights
        self._dec_norm = weights["W_dec"].norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else None

    def __repr__(self) -> str:
        arch, hook = self.cfg.architecture, self.hooks[0]
        return f"SaeSource({self.name!r}, {arch}, {hook} -> {self.n_features} features)"

    @property
    def transcoder(self) -> bool:
        return self.cfg.architecture in TRANSCODERS

    @property
    def check_hooks(self) -> tuple[str, ...]:
        """The hook points `reconstruct` needs (a transcoder's output point too)."""
        out = self.hook_out
        return self.hooks + ((out,) if out and out not in self.hooks else ())

    def to(self, device: Any) -> SaeSource:
        """Move the weights (e.g. next to the model, to encode inside its hooks); returns self."""
        self.w = {k: v.to(device) for k, v in self.w.items()}
        self._dec_norm = None if self._dec_norm is None else self._dec_norm.to(device)
        return self

    # --- the pieces of encode / decode ----------------------------------------------------------

    def _tensor(self, x: Any) -> torch.Tensor:
        device = self.w["W_enc"].device
        if isinstance(x, torch.Tensor):
            return x.detach().to(device, torch.float32)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)

    def _flat(self, x: torch.Tensor, width: int, hook: str, center: bool) -> torch.Tensor:
        """[T, ...] -> [T, width]: head selection or hook_z flattening, then TransformerLens centring."""
        if x.ndim == 3:
            if self.cfg.hook_head_index is not None and hook == self.hooks[0]:
                if not 0 <= self.cfg.hook_head_index < x.shape[1]:
                    raise InvalidInput(
                        f"{self.name} reads head {self.cfg.hook_head_index}; {hook} has {x.shape[1]} heads"
                    )
                x = x[:, self.cfg.hook_head_index]
            else:
                x = x.flatten(1)  # hook_z: [T, H, d] -> [T, H*d] (SAELens' reshape_activations)
        if x.ndim != 2 or x.shape[1] != width:
            raise InvalidInput(f"{self.name} reads [T, {width}] at {hook}, got shape {list(x.shape)}")
        if center:
            x = x - x.mean(-1, keepdim=True)
        return x

    def _input(self, acts: Mapping[str, Any]) -> torch.Tensor:
        x = self._tensor(take(acts, self.hooks[0], self.name))
        if x.ndim == 3 and self.cfg.hook_head_index is None and self.cfg.reshape_activations != "hook_z":
            raise InvalidInput(
                f"{self.name} reads one vector per token, but {self.hooks[0]} has heads: {list(x.shape)}"
            )
        return self._flat(x, self.cfg.d_in, self.hooks[0], self.center_in)

    def _norm_in(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = math.sqrt(self.cfg.d_in) / x.norm(dim=-1, keepdim=True)
            return x * coeff, (coeff,)
        if mode == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            x = x - mu
            std = x.std(-1, keepdim=True)  # unbiased, as SAELens' torch call
            return x / (std + _LN_EPS), (mu, std)
        return x, ()  # none; expected_average_only_in is folded into the weights at load

    def _norm_out(self, y: torch.Tensor, state: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.transcoder or not state:
            return y
        if self.cfg.normalize_activations == "constant_norm_rescale":
            return y / state[0]
        mu, std = state
        return y * std + mu

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        w, arch = self.w, self.cfg.architecture
        xin, state = self._norm_in(x)
        if self.cfg.apply_b_dec_to_input:
            xin = xin - w["b_dec"]
        if arch == "gated":
            gate = (xin @ w["W_enc"] + w["b_gate"]) > 0
            mag = torch.relu(xin @ (w["W_enc"] * w["r_mag"].exp()) + w["b_mag"])
            return mag * gate, state
        z = xin @ w["W_enc"] + w["b_enc"]
        if self._dec_norm is not None:
            z = z * self._dec_norm
        if arch == "topk":
            k = min(int(self.cfg.k or 0), z.shape[-1])
            top = torch.topk(z, k, dim=-1, sorted=False)
            return torch.zeros_like(z).scatter_(-1, top.indices, top.values.relu()), state
        f = torch.relu(z)
        if arch in _THRESHOLDED:
            f = f * (z > w["threshold"].relu())
        return f, state

    def _decode(
        self, f: torch.Tensor, x: torch.Tensor | None, state: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        w = self.w
        if self._dec_norm is not None:
            f = f / self._dec_norm
        if "finetuning_scaling_factor" in w:
            f = f * w["finetuning_scaling_factor"]
        y = self._norm_out(f @ w["W_dec"] + w["b_dec"], state)
        if "W_skip" in w and x is not None:
            y = y + x @ w["W_skip"].T
        return y

    # --- the FeatureSource API ------------------------------------------------------------------

    @torch.inference_mode()
    def encode_torch(self, acts: Mapping[str, Any]) -> torch.Tensor:
        """encode, staying in torch on the weights' device (for use inside hooks)."""
        return self._features(self._input(acts))[0]

    def encode(self, acts: Mapping[str, Any]) -> np.ndarray:
        """{hook: [T, d_in] (or [T, H, d])} -> [T, d_sae] float32."""
        return self.encode_torch(acts).cpu().numpy()

    @torch.inference_mode()
    def decode(self, f: Any, acts: Mapping[str, Any] | None = None) -> np.ndarray:
        """Features [T, d_sae] -> the reconstruction [T, d_out] (flat, hook_z as [T, H*d]). Needs the
        activations the features came from where decoding depends on them: run-time normalisation
        (constant_norm_rescale, layer_norm) and a transcoder's skip connection."""
        needs = (
            self.cfg.normalize_activations in ("constant_norm_rescale", "layer_norm") and not self.transcoder
        )
        needs = needs or "W_skip" in self.w
        if needs and acts is None:
            raise InvalidInput(
                f"{self.name}: decoding needs the activations encoded, decode(f, acts), for its "
                f"normalisation or skip term"
            )
        x = self._input(acts) if acts is not None else None
        state = self._norm_in(x)[1] if x is not None else ()
        f = self._tensor(f)
        if f.ndim != 2 or f.shape[1] != self.n_features:
            raise InvalidInput(
                f"{self.name} decodes [T, {self.n_features}] features, got shape {list(f.shape)}"
            )
        return self._decode(f, x, state).cpu().numpy()

    @torch.inference_mode()
    def reconstruct(self, acts: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(target, reconstruction, features): what the SAE should reproduce (its input, or for a
        transcoder its output point), what it does, and the features in between."""
        x = self._input(acts)
        f, state = self._features(x)
        y = self._decode(f, x, state)
        if self.transcoder:
            if self.hook_out is None:
                raise InvalidInput(
                    f"{self.name} is a transcoder with no output hook (metadata.hook_name_out)"
                )
            target = self._flat(
                self._tensor(take(acts, self.hook_out, self.name)),
                self.cfg.d_out,
                self.hook_out,
                self.center_out,
            )
        else:
            target = x
        return target.cpu().numpy(), y.cpu().numpy(), f.cpu().numpy()


# --- reading a folder ---------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidInput(f"{path} is not readable JSON: {err}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise InvalidInput(f"{path} is not a readable safetensors file: {err}") from None
    # float32 whatever the file holds (bfloat16 / float16 SAEs): features are compared to thresholds
    return {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}


def _expected(cfg: SaeConfig) -> dict[str, tuple[int, ...]]:
    """The tensors each architecture needs and their shapes."""
    d_in, d_sae, d_out = cfg.d_in, cfg.d_sae, cfg.d_out
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if cfg.architecture == "gated":
        shapes.update(b_gate=(d_sae,), r_mag=(d_sae,), b_mag=(d_sae,))
    else:
        shapes["b_enc"] = (d_sae,)
    if cfg.architecture in _THRESHOLDED:
        shapes["threshold"] = (d_sae,)
    if cfg.architecture in ("skip_transcoder", "jumprelu_skip_transcoder"):
        shapes["W_skip"] = (d_out, d_in)
    return shapes


def _prepare(cfg: SaeConfig, w: dict[str, torch.Tensor], where: Path) -> dict[str, torch.Tensor]:
    """Legacy tensor names to current ones, then every tensor checked against cfg's sizes."""
    if "log_threshold" in w and "threshold" not in w:
        w["threshold"] = w.pop("log_threshold").exp()  # older JumpReLU checkpoints (SAELens does the same)
    if "topk_threshold" in w and "threshold" not in w:
        w["threshold"] = w.pop("topk_threshold").reshape(-1).expand(cfg.d_sae).clone()  # BatchTopK's scalar
    if "scaling_factor" in w:  # older SAEs: a per-feature decoder scale, all ones unless fine-tuned
        scale = w.pop("scaling_factor")
        if not torch.allclose(scale, torch.ones_like(scale)):
            w["finetuning_scaling_factor"] = scale.reshape(-1)
    for key, want in _expected(cfg).items():
        if key not in w:
            raise InvalidInput(
                f"{where}: a {cfg.architecture} SAE needs tensor {key!r}; the file has {', '.join(sorted(w))}"
            )
        if tuple(w[key].shape) != want:
            raise InvalidInput(
                f"{where}: {key} has shape {list(w[key].shape)}, but cfg.json (d_in={cfg.d_in}, "
                f"d_sae={cfg.d_sae}{f', d_out={cfg.d_out}' if cfg.architecture in TRANSCODERS else ''}) "
                f"says {list(want)}"
            )
    if "finetuning_scaling_factor" in w and w["finetuning_scaling_factor"].shape != (cfg.d_sae,):
        raise InvalidInput(f"{where}: scaling_factor must have d_sae={cfg.d_sae} entries")
    return w


def _fold_scaling(cfg: SaeConfig, w: dict[str, torch.Tensor], scaling_factor: Any, folder: Path) -> None:
    """expected_average_only_in: inputs were multiplied by a constant s in training. With s known, fold
    it in as SAELens does (W_enc *= s, W_dec /= s, b_dec /= s); without it, warn (SAELens is silent)."""
    if scaling_factor is None and (folder / SCALER_FILE).is_file():
        scaling_factor = _read_json(folder / SCALER_FILE).get("scaling_factor")
    if scaling_factor is None:
        warnings.warn(
            FeatureSourceWarning(
                f"{folder.name}: normalize_activations is 'expected_average_only_in' but no scaling factor "
                f"is known ({SCALER_FILE} is missing); features are computed from unscaled activations. "
                f"Pass scaling_factor=... to lmpeek.features.load"
            ),
            stacklevel=4,
        )
        return
    if (
        isinstance(scaling_factor, bool)
        or not isinstance(scaling_factor, (int, float))
        or not scaling_factor > 0
    ):
        raise InvalidInput(f"scaling_factor must be a positive number, got {scaling_factor!r}")
    s = float(scaling_factor)
    w["W_enc"] = w["W_enc"] * s
    if cfg.architecture not in TRANSCODERS:  # a transcoder's decoder writes another point, unscaled
        w["W_dec"] = w["W_dec"] / s
        w["b_dec"] = w["b_dec"] / s


def _check_width(cfg: SaeConfig, bound: Any, hook: str, hook_out: str | None, where: str) -> None:
    """d_in (and a transcoder's d_out) against what the model's hook points hold."""
    per_token = points.shape(bound, hook)
    if len(per_token) == 2 and cfg.hook_head_index is not None:
        width = per_token[1]
        if cfg.hook_head_index >= per_token[0]:
            raise InvalidInput(
                f"{where} reads head {cfg.hook_head_index}, but {hook} has {per_token[0]} heads"
            )
    elif len(per_token) == 2 and cfg.reshape_activations != "hook_z":
        raise InvalidInput(
            f"{where} reads {hook}, which has heads {list(per_token)}, without reshape_activations "
            f"'hook_z' or a head index"
        )
    else:
        width = math.prod(per_token)
    if width != cfg.d_in:
        raise InvalidInput(
            f"{where} has d_in={cfg.d_in}, but this model's {hook} holds {width} numbers per token: "
            f"the SAE is for another model or another hook point"
        )
    if cfg.architecture in TRANSCODERS and hook_out is not None:
        out = math.prod(points.shape(bound, hook_out))
        if out != cfg.d_out:
            raise InvalidInput(
                f"{where} has d_out={cfg.d_out}, but this model's {hook_out} holds {out} numbers per token"
            )


def _centres(bound: Any) -> bool:
    """Whether TransformerLens would centre this model's writing weights: only for LayerNorm models."""
    from lmpeek.models.adapters import norm_centers

    ln = bound.adapter.ln1 or bound.adapter.ln2
    return ln is not None and norm_centers(bound.block_module(0, ln))


def load(
    spec: Any, model: Any = None, *, scaling_factor: float | None = None, name: str | None = None
) -> SaeSource:
    """The SAE in folder `spec`. With `model`, its hook names are resolved and its sizes checked
    against the model's; without one, names are mapped as for a sequential (non-parallel) block."""
    folder = Path(spec).expanduser()
    if folder.name == WEIGHTS_FILE and folder.is_file():  # the weights file named: its folder
        folder = folder.parent
    if not (folder / CFG_FILE).is_file():
        raise SourceNotFound(
            f"no {CFG_FILE} in {str(spec)!r}: lmpeek reads SAELens folders ({CFG_FILE} + {WEIGHTS_FILE})"
        )
    if not (folder / WEIGHTS_FILE).is_file():
        raise SourceNotFound(
            f"no {WEIGHTS_FILE} in {str(spec)!r} (a SAELens folder holds {CFG_FILE} and {WEIGHTS_FILE})"
        )
    cfg = read_config(_read_json(folder / CFG_FILE), str(folder / CFG_FILE))
    w = _prepare(cfg, _read_safetensors(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE)
    if cfg.normalize_activations == "expected_average_only_in":
        _fold_scaling(cfg, w, scaling_factor, folder)
    elif scaling_factor is not None:
        raise InvalidInput(
            f"scaling_factor is only for SAEs with normalize_activations 'expected_average_only_in'; "
            f"{folder.name} has {cfg.normalize_activations!r}"
        )
    bound = model.bound if model is not None else None
    hook = points.from_transformer_lens(cfg.hook_name, bound)
    out_tl = _transcoder_out(cfg) if cfg.architecture in TRANSCODERS else None
    hook_out = points.from_transformer_lens(out_tl, bound) if out_tl else None
    label = name or folder.resolve().name
    if bound is not None:
        _check_width(cfg, bound, hook, hook_out, label)
    centre = cfg.center_writing_weights and (bound is None or _centres(bound))
    sparsity = None
    if (folder / SPARSITY_FILE).is_file():
        found = _read_safetensors(folder / SPARSITY_FILE).get("sparsity")
        sparsity = None if found is None else found.reshape(-1).numpy()
    return SaeSource(
        cfg,
        w,
        name=label,
        hook=hook,
        hook_out=hook_out,
        center_in=centre and points.is_residual(hook),
        center_out=centre and hook_out is not None and points.is_residual(hook_out),
        log_sparsity=sparsity,
        folder=str(folder),
    )
