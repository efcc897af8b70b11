"""Same name, same numbers as TransformerLens 4.

TransformerLens 4 (`TransformerBridge` over the Hugging Face model, raw weights, no processing) defines
what the TransformerLens hook names mean. Booted offline on the same folder and fed the same token ids
as lmpeek, every hook name both expose must agree within 1e-4 x max|ref|, and the top-k from the logits
must be equal: on a tiny model of every architecture lmpeek has (fast) and on the default model (slow).

transformer-lens is a test-only dependency (the `parity` extra, installed from requirements.lock).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model

RTOL = 1e-4
TEXT = "The capital of France is Paris. def add(a, b):\n    return a + b  # 1 + 1 = 2"

# Block points lmpeek has and TransformerLens 4 does not, per architecture; anything else lmpeek has
# must exist in TransformerLens under the same name (so a rename on either side fails here).
LMPEEK_ONLY = {
    # TL4's bridges for partial-rotary models (phi3, gpt_neox) expose no hook_rot_q / hook_rot_k
    "phi3": {"attn.hook_rot_q", "attn.hook_rot_k"},
    "gpt_neox_sequential": {"attn.hook_rot_q", "attn.hook_rot_k"},
    # and a parallel block has no stream between attention and MLP (lmpeek defines one)
    "gpt_neox": {"attn.hook_rot_q", "attn.hook_rot_k", "hook_resid_mid"},
}
# Names whose meaning changed in lmpeek to match TransformerLens 4; each must be compared somewhere.
CHANGED = ("ln_final.hook_normalized", "blocks.0.attn.hook_q", "blocks.0.attn.hook_k")
# TL4 keeps q and k after q_norm / k_norm as [H, T, d]; lmpeek keeps every per-head point as [T, H, d].
TL_LAYOUT = {"attn.hook_q_normed": (1, 0, 2), "attn.hook_k_normed": (1, 0, 2)}


@dataclass
class Parity:
    rel: dict[str, float] = field(default_factory=dict)  # hook name -> max|ours - TL| / max|TL|
    lmpeek_only: set[str] = field(default_factory=set)  # block points (relative) TL4 lacks
    ids_equal: bool = False
    topk_equal: bool = False
    topk_prob_dev: float = float("inf")

    @property
    def worst(self) -> tuple[str, float]:
        return max(self.rel.items(), key=lambda kv: kv[1])


@pytest.fixture(scope="module")
def bridge_class():
    """TransformerBridge, imported with the Hugging Face hub offline (nothing here may download)."""
    pytest.importorskip(
        "transformer_lens", reason="transformer-lens 4.x is not installed: pip install -e '.[parity]'"
    )
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        from transformer_lens.model_bridge import TransformerBridge

        yield TransformerBridge


def compare(bridge_class, folder, model, text: str = TEXT) -> Parity:
    """lmpeek's trace of `text` against TransformerLens 4 booted on `folder` with the same token ids."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    bridge = bridge_class.boot_transformers(
        str(folder), tokenizer=tokenizer, device="cpu", dtype=torch.float32
    )
    trace = lmpeek.trace(model, text, keep=["*"])
    out = Parity()
    ids = [int(i) for i in trace.token_ids]
    out.ids_equal = ids == list(tokenizer(text)["input_ids"])
    with torch.inference_mode():
        logits, cache = bridge.run_with_cache(torch.tensor([ids]))
    ours = model.bound.hook_names()
    for name in ours:
        if name not in cache:
            out.lmpeek_only.add(name.split(".", 2)[2] if name.startswith("blocks.") else name)
            continue
        ref = cache[name][0].float()
        point = name.split(".", 2)[-1]
        if point in TL_LAYOUT:
            ref = ref.permute(*TL_LAYOUT[point])
        got = torch.from_numpy(trace[name])
        assert got.shape == ref.shape, (name, tuple(got.shape), tuple(ref.shape))
        out.rel[name] = float((got - ref).abs().max() / ref.abs().max())
    k = trace.topk_ids.shape[1]
    probs, top = logits[0].float().softmax(-1).topk(k)
    out.topk_equal = bool(np.array_equal(top.numpy(), trace.topk_ids))
    out.topk_prob_dev = float(np.abs(probs.numpy() - trace.topk_probs).max())
    return out


def random_gains(hf):
    """tiny_hf_model leaves norm gains at 1 and biases at 0, where a norm's output equals its pre-gain
    `hook_normalized`; perturbing every 1-D parameter makes those (and q vs q_normed) differ."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return hf


def _check(p: Parity, arch: str) -> None:
    assert p.ids_equal
    assert p.lmpeek_only == LMPEEK_ONLY.get(arch, set()), p.lmpeek_only
    for name in CHANGED:
        assert name in p.rel, f"{name} is no longer compared with TransformerLens"
    bad = {n: r for n, r in p.rel.items() if not r <= RTOL}
    assert not bad, bad
    assert p.topk_equal
    # probabilities after 30 float32 layers: 1.7e-5 apart on an AVX2-only CPU (OpenBLAS/MKL kernels round
    # differently from AVX-512's), under 1e-5 on AVX-512; every hook's relative gap is still <= RTOL
    assert p.topk_prob_dev < 5e-5


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_tiny_model_matches_transformer_lens(arch, bridge_class, tmp_path):
    hf, tokenizer = tiny_hf_model(arch)
    random_gains(hf).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the generic adapter's notice (olmo)
        model = lmpeek.load(str(tmp_path), dtype="float32")
    p = compare(bridge_class, tmp_path, model)
    _check(p, arch)
    # every block point lmpeek has is compared at every layer, apart from the lmpeek-only ones
    compared = {n.split(".", 2)[2] for n in p.rel if n.startswith("blocks.1.")}
    assert compared == set(model.bound.block_points()) - LMPEEK_ONLY.get(arch, set())
    if arch in ("qwen3", "gemma3"):  # the raw projections and the normed q/k are different tensors
        assert {"attn.hook_q_normed", "attn.hook_k_normed"} <= compared


@pytest.mark.slow
def test_default_model_matches_transformer_lens(bridge_class, default_model_resolved):
    r = default_model_resolved
    model = lmpeek.wrap(r.model, r.tokenizer, name=r.name)
    p = compare(bridge_class, r.folder, model, "The capital of France is Paris. It is known for")
    _check(p, "llama")
