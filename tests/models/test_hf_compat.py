"""models/hf_compat.py against the installed transformers.

`make test` runs this file against the locked transformers and again against the lowest version
pyproject allows (`make compat-lowest`), so a change upstream shows here first, in one place.
"""

from __future__ import annotations

import ast
import inspect
import logging
import pathlib
import re
import warnings

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version

from lmpeek.models import hf_compat
from lmpeek.models.tiny import tiny_hf_model

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "lmpeek"


def test_min_version_matches_pyproject():
    pyproject = (SRC.parents[1] / "pyproject.toml").read_text()
    low = re.search(r'"transformers>=([0-9.]+)', pyproject).group(1)
    assert low == hf_compat.MIN_TRANSFORMERS
    assert Version(transformers.__version__) >= Version(low)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_kv_cache_steps_equal_a_full_forward_without_warnings(arch, caplog):
    model, _ = tiny_hf_model(arch)
    ids = torch.tensor([[3, 17, 9, 30, 5, 12]])
    full = model(input_ids=ids, use_cache=False).logits[0]
    cache = hf_compat.new_kv_cache(model.config)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING, logger="transformers"):
        warnings.simplefilter("error")  # a deprecated keyword warns (FutureWarning or a log line)
        first = model(input_ids=ids[:, :4], **hf_compat.cache_kwargs(model, cache)).logits[0]
        rest = [model(input_ids=ids[:, i : i + 1], **hf_compat.cache_kwargs(model, cache)).logits[0, -1]
                for i in range(4, 6)]  # fmt: skip
    assert not [r for r in caplog.records if "deprecat" in r.getMessage().lower()]
    stepped = torch.cat([first, torch.stack(rest)])
    torch.testing.assert_close(stepped, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3", "gpt_neox"])
def test_batch_continues_from_a_repeated_prefix_cache(arch):
    """What attribution's perturbation batches do (methods.Problem.f_ids): the text's first p tokens into a
    cache, repeated over the batch, then each row's own rest: equal to each row's full forward."""
    model, _ = tiny_hf_model(arch)
    assert hf_compat.prefix_cache_exact(model.config, 6)
    ids = torch.tensor([[3, 17, 9, 30, 5, 12], [3, 17, 9, 1, 5, 12], [3, 17, 9, 30, 1, 1]])
    full = model(input_ids=ids, use_cache=False).logits[:, 3:]
    cache = hf_compat.new_kv_cache(model.config)
    model(input_ids=ids[:1, :3], **hf_compat.cache_kwargs(model, cache))
    cache.batch_repeat_interleave(3)
    rest = model(input_ids=ids[:, 3:], **hf_compat.cache_kwargs(model, cache)).logits
    torch.testing.assert_close(rest, full, atol=1e-5, rtol=1e-5)


def test_prefix_cache_exact_only_where_the_forward_does_not_depend_on_its_length():
    llama, _ = tiny_hf_model("llama")
    gemma, _ = tiny_hf_model("gemma3")  # sliding window of 8 on its local layers
    assert hf_compat.prefix_cache_exact(llama.config, 10_000)
    assert hf_compat.prefix_cache_exact(gemma.config, 8) and not hf_compat.prefix_cache_exact(gemma.config, 9)
    cfg = llama.config.__class__(**llama.config.to_dict())
    cfg.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    assert not hf_compat.prefix_cache_exact(cfg, 10)
    cfg.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    assert hf_compat.prefix_cache_exact(cfg, 10)
    cfg.layer_types = ["full_attention", "linear_attention"]
    assert not hf_compat.prefix_cache_exact(cfg, 10)


def test_cache_keyword_is_the_forward_parameter():
    model, _ = tiny_hf_model("llama")
    kw = hf_compat.cache_kwargs(model, None)
    name = next(k for k in kw if k != "use_cache")
    assert name in inspect.signature(type(model).forward).parameters


def test_attention_registration_and_switch_back():
    model, _ = tiny_hf_model("llama")
    calls = []

    def spy(module, query, key, value, mask, **kw):
        calls.append(query.shape)
        return hf_compat.eager_attention_for(module)(module, query, key, value, mask, **kw)

    hf_compat.register_attention("lmpeek-test-spy", spy)
    hf_compat.register_attention("lmpeek-test-spy", spy)  # idempotent
    before = hf_compat.attention_implementation(model)
    ids = torch.tensor([[1, 2, 3]])
    ref = model(input_ids=ids).logits
    with hf_compat.attention_implementation_as(model, "lmpeek-test-spy"):
        assert hf_compat.attention_implementation(model) == "lmpeek-test-spy"
        got = model(input_ids=ids).logits
    assert hf_compat.attention_implementation(model) == before
    assert len(calls) == model.config.num_hidden_layers
    torch.testing.assert_close(got, ref)


def test_eager_attention_lookup():
    llama, _ = tiny_hf_model("llama")
    gemma, _ = tiny_hf_model("gemma3")
    f_llama = hf_compat.eager_attention_for(llama.model.layers[0].self_attn)
    f_gemma = hf_compat.eager_attention_for(gemma.model.layers[0].self_attn)
    assert callable(f_llama) and callable(f_gemma) and f_llama is not f_gemma
    assert hf_compat.eager_attention_for(torch.nn.Linear(2, 2)) is None


def test_only_layer_narrows_and_restores_config():
    model, _ = tiny_hf_model("gemma3")  # has per-layer layer_types (sliding / full)
    config = model.model.config
    n, types = config.num_hidden_layers, list(config.layer_types)
    with hf_compat.only_layer(config, 1):
        assert config.num_hidden_layers == 1 and config.layer_types == [types[1]]
    assert config.num_hidden_layers == n and config.layer_types == types


def test_strip_gguf_quantization():
    model, _ = tiny_hf_model("llama")
    model.config.quantization_config = {"quant_method": "gguf"}
    model.hf_quantizer = object()
    hf_compat.strip_gguf_quantization(model)
    assert model.hf_quantizer is None and not hasattr(model.config, "quantization_config")


def test_model_type_tables():
    causal, masked = hf_compat.causal_lm_model_types()
    assert {"llama", "gpt2", "gemma3_text", "qwen3"} <= causal
    assert "bert" in masked and "llama" not in masked


def test_progress_bars_restored():
    from transformers.utils import logging as hf_logging

    before = hf_logging.is_progress_bar_enabled()
    with hf_compat.progress_bars(not before):
        assert hf_logging.is_progress_bar_enabled() == (not before)
    assert hf_logging.is_progress_bar_enabled() == before


def test_sampling_warpers_filter():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    kept = hf_compat.sampling_warpers(1.0, 1.0, 2)(torch.zeros(1, 1, dtype=torch.long), scores.clone())
    assert np.isfinite(kept.numpy()).sum() == 2
    hot = hf_compat.sampling_warpers(2.0, 1.0, 0)(torch.zeros(1, 1, dtype=torch.long), scores.clone())
    torch.testing.assert_close(hot, scores / 2)


# What only hf_compat may touch: transformers' submodules, and these private or renamed names.
_INTERNAL_NAMES = {
    "past_key_values", "DynamicCache", "AttentionInterface", "AttentionMaskInterface",
    "_attn_implementation", "set_attn_implementation", "eager_attention_forward", "hf_quantizer",
    "quantization_config", "layer_types", "_global_mapping",
}  # fmt: skip


def _internals(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("transformers."):
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("transformers.")]
        elif isinstance(node, ast.Attribute) and node.attr in _INTERNAL_NAMES:
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Name) and node.id in _INTERNAL_NAMES:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, a.name) for a in node.names if a.name in _INTERNAL_NAMES]
        elif isinstance(node, ast.Call):  # getattr(x, "name") and keyword arguments of a forward call
            args = [a.value for a in node.args if isinstance(a, ast.Constant)]
            found += [(node.lineno, a) for a in args if a in _INTERNAL_NAMES]
            found += [(node.lineno, k.arg) for k in node.keywords if k.arg == "past_key_values"]
    return found


def test_no_transformers_internals_outside_hf_compat():
    offenders = [
        f"{path.relative_to(SRC)}:{line}: {what}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "hf_compat.py"
        for line, what in _internals(ast.parse(path.read_text()))
    ]
    assert not offenders, "use lmpeek.models.hf_compat instead:\n" + "\n".join(offenders)


def test_the_internals_check_finds_a_violation():
    code = "from transformers.cache_utils import X\nfrom transformers import DynamicCache\n"
    code += "m(past_key_values=c)\n"
    found = {w for _, w in _internals(ast.parse(code + "m.config._attn_implementation"))}
    assert found == {"from transformers.cache_utils import ...", "DynamicCache", "past_key_values",
                     "_attn_implementation"}  # fmt: skip
