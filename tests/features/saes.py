"""Tiny random dictionaries written as SAELens folders, and the reference formulas they are checked
against: numpy float64, written from the formulas in shared/anchors/features.md B4 (SAELens' source),
independently of lmpeek.features.saelens."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

D = 64  # the tiny models' d_model (and n_heads * d_head)


def v6_cfg(
    arch: str, d_in: int, d_sae: int, hook: str, *, metadata: dict | None = None, **fields: Any
) -> dict:
    """cfg.json as SAELens 6 writes it (`SAE.save_model`: fields at the top, the model side in metadata)."""
    cfg = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": arch,
        "metadata": {
            "model_name": "tiny",
            "hook_name": hook,
            "hook_head_index": None,
            "sae_lens_version": "6.18.0",
            "sae_lens_training_version": "6.18.0",
            **(metadata or {}),
        },
    }
    cfg.update(fields)
    return cfg


def write_sae(folder: pathlib.Path, cfg: dict, tensors: dict[str, np.ndarray], **extra: dict) -> pathlib.Path:
    """A SAELens folder: cfg.json + sae_weights.safetensors (+ `extra` files: name -> tensors or JSON)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    for name, content in extra.items():
        if name.endswith(".json"):
            (folder / name).write_text(json.dumps(content))
        else:
            save_file(content, str(folder / name))
    return folder


def f32(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def random_weights(
    rng: np.random.Generator, d_in: int, d_sae: int, d_out: int | None = None
) -> dict[str, np.ndarray]:
    """W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_out] (rows of varied norm), b_dec [d_out]: float32."""
    d_out = d_in if d_out is None else d_out
    W_dec = f32(rng, d_sae, d_out, scale=d_out**-0.5) * rng.uniform(0.5, 2.0, (d_sae, 1)).astype(np.float32)
    return {
        "W_enc": f32(rng, d_in, d_sae, scale=d_in**-0.5),
        "b_enc": f32(rng, d_sae, scale=0.3),
        "W_dec": W_dec.astype(np.float32),
        "b_dec": f32(rng, d_out, scale=0.3),
    }


# --- reference formulas (float64) ---------------------------------------------------------------


def ref_norm_in(x: np.ndarray, mode: str) -> tuple[np.ndarray, Any]:
    if mode == "constant_norm_rescale":
        coeff = np.sqrt(x.shape[-1]) / np.linalg.norm(x, axis=-1, keepdims=True)
        return x * coeff, coeff
    if mode == "layer_norm":
        mu = x.mean(-1, keepdims=True)
        std = (x - mu).std(-1, ddof=1, keepdims=True)  # torch.std is unbiased
        return (x - mu) / (std + 1e-5), (mu, std)
    return x, None


def ref_norm_out(y: np.ndarray, mode: str, state: Any) -> np.ndarray:
    if mode == "constant_norm_rescale":
        return y / state
    if mode == "layer_norm":
        mu, std = state
        return y * std + mu
    return y


def ref_pre(
    x: np.ndarray, w: dict, *, norm: str = "none", apply_b_dec: bool = True
) -> tuple[np.ndarray, Any]:
    """x' - b_dec (the encoder's input) and the normalisation state."""
    x, state = ref_norm_in(np.asarray(x, np.float64), norm)
    if apply_b_dec:
        x = x - w["b_dec"].astype(np.float64)
    return x, state


def ref_encode(arch: str, x: np.ndarray, w: dict, *, k: int | None = None, rescale: bool = False,
               norm: str = "none", apply_b_dec: bool = True) -> np.ndarray:  # fmt: skip
    w = {name: np.asarray(v, np.float64) for name, v in w.items()}
    transcoder = "transcoder" in arch
    xin, _ = ref_pre(x, w, norm=norm, apply_b_dec=apply_b_dec and not transcoder)
    if arch == "gated":
        gate = xin @ w["W_enc"] + w["b_gate"] > 0
        mag = np.maximum(xin @ (w["W_enc"] * np.exp(w["r_mag"])) + w["b_mag"], 0)
        return gate * mag
    z = xin @ w["W_enc"] + w["b_enc"]
    if rescale:
        z = z * np.linalg.norm(w["W_dec"], axis=-1)
    if arch == "topk":
        out = np.zeros_like(z)
        for t in range(len(z)):
            top = np.argsort(-z[t])[:k]
            out[t, top] = np.maximum(z[t, top], 0)
        return out
    f = np.maximum(z, 0)
    if arch in ("jumprelu", "jumprelu_transcoder", "jumprelu_skip_transcoder", "batchtopk"):
        f = np.where(z > np.maximum(w["threshold"], 0), f, 0.0)
    return f


def ref_decode(f: np.ndarray, w: dict, x: np.ndarray | None = None, *, rescale: bool = False,
               norm: str = "none", state: Any = None) -> np.ndarray:  # fmt: skip
    w = {name: np.asarray(v, np.float64) for name, v in w.items()}
    if rescale:
        f = f / np.linalg.norm(w["W_dec"], axis=-1)
    y = ref_norm_out(f @ w["W_dec"] + w["b_dec"], norm, state)
    if "W_skip" in w:
        y = y + np.asarray(x, np.float64) @ w["W_skip"].T
    return y


def assert_close(got: np.ndarray, want: np.ndarray, tol: float = 1e-6, what: str = "") -> None:
    """|got - want| <= tol × max(1, max|want|) everywhere (float32 against float64)."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert got.dtype == np.float32, (what, got.dtype)
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol} × {scale:.3g}"
