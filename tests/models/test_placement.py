"""Placement: dtype, device maps through accelerate (CPU + disk offload here), and the memory
estimate that refuses a model before loading it."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch

import lmpeek
from lmpeek.capture import recompute
from lmpeek.errors import InsufficientMemory, InvalidInput, SourceNotFound
from lmpeek.models import placement
from lmpeek.models.tiny import TINY_ARCHITECTURES, tiny_hf_model
from lmpeek.session import Session

TEXT = "The cat sat on the mat. The dog sat on the log, and the cat saw the dog."
# olmo runs through the generic adapter, which says so
pytestmark = pytest.mark.filterwarnings("ignore:'olmo' has no lmpeek adapter")
SPLIT = ("llama", "gpt2", "gemma3", "gpt_neox", "olmo")  # registered adapters + the generic one


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Every tiny architecture saved as a Hugging Face folder (what a user's model on disk is)."""
    out = {}
    for arch in TINY_ARCHITECTURES:
        folder = tmp_path_factory.mktemp(f"tiny-{arch}")
        model, tokenizer = tiny_hf_model(arch)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        out[arch] = folder
    return out


def _weights_bytes(hf) -> int:
    """Bytes of the parameters (tied ones once) and buffers (e.g. RoPE's inverse frequencies)."""
    tensors = {id(t): t for t in (*hf.parameters(), *hf.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


# --- the estimate -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_estimate_counts_the_weights_the_model_loads_with(folders, arch, dtype):
    model = lmpeek.load(str(folders[arch]), dtype=dtype, progress=False)
    est = model.memory
    assert est is not None and est.dtype == dtype
    # independent: the loaded model's own tensors (buffers such as RoPE's frequencies may stay float32
    # when the weights are bfloat16; the estimate counts them in the weights' dtype)
    params = sum({id(p): p.numel() * p.element_size() for p in model.hf.parameters()}.values())
    buffers = sum(b.numel() * b.element_size() for b in model.hf.buffers())
    assert abs(est.weights - _weights_bytes(model.hf)) <= buffers // 2 and est.weights >= params
    assert est.n_params == sum({id(p): p.numel() for p in model.hf.parameters()}.values())
    assert est.work > 0 and est.fits and est.where == {"cpu": est.weights}


def test_a_70b_config_is_refused_before_anything_is_read(tmp_path):
    from transformers import LlamaConfig

    shapes = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)
    config = LlamaConfig(**shapes, num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192)
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(tmp_path)  # a config and no weights: nothing else could be read
    with pytest.raises(InsufficientMemory) as err:
        lmpeek.load(str(tmp_path), progress=False)
    message = str(err.value)
    # Llama-3-70B's shapes: 70.6 B parameters, 4 bytes each in float32
    assert "262.8 GiB of float32 weights" in message and "cpu has" in message
    assert "--dtype bfloat16" in message and "--device-map auto" in message and "--force" in message
    est = placement.estimate(config, label="x", dtype=torch.bfloat16, device="cpu")
    assert round(est.n_params / 1e9, 1) == 70.6
    assert 0 <= est.weights - 2 * est.n_params < 1024  # + the RoPE buffer
    # forced, it gets past the estimate and fails on what is really missing (the tokenizer)
    with pytest.raises(SourceNotFound, match="tokenizer"):
        lmpeek.load(str(tmp_path), progress=False, force=True)
    # split across CPU and disk it fits: the plan puts what exceeds max_memory on disk
    est = lmpeek.models.sources.estimate_source(
        str(tmp_path), dtype="bfloat16", device_map="auto", max_memory={"cpu": "10GiB"}, progress=False
    )
    assert est.fits and est.where["disk"] > est.where["cpu"] > 0
    assert sum(est.where.values()) == est.weights


def test_max_memory_is_the_budget_and_force_loads_anyway(folders, capsys):
    with pytest.raises(InsufficientMemory, match=r"cpu has 1 KiB available"):
        lmpeek.load(str(folders["llama"]), max_memory={"cpu": 1024}, progress=False)
    model = lmpeek.load(str(folders["llama"]), max_memory={"cpu": 1024}, force=True)
    assert model.memory.forced
    assert "does not fit: loading anyway, as forced" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device_map": "everywhere"}, "Unknown device_map 'everywhere'"),
        ({"device_map": "{not json"}, "device_map is not valid JSON"),
        ({"device_map": {"model.layers.0": "moon"}}, "Unknown device 'moon'"),
        ({"device_map": {"model.layers.0": 3}}, "GPU 3 is not available"),
        ({"device_map": "model.layers.0"}, "Unknown device_map"),
        ({"max_memory": "cpu=lots"}, "a size is a positive number of bytes or e.g. '8GiB'"),
        ({"max_memory": {"moon": "1GiB"}}, "unknown device 'moon'"),
        ({"max_memory": "cpu"}, "expected 'name=value,...'"),
        ({"device": "cpu", "device_map": "auto"}, "either device ('cpu') or device_map"),
        ({"force": "yes"}, "force must be True or False"),
    ],
)
def test_bad_placement_is_one_clear_error(folders, kwargs, message):
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        lmpeek.load(str(folders["llama"]), progress=False, **kwargs)


def test_placement_strings_parse_as_accelerate_takes_them():
    assert placement.parse_device_map("model.layers.0=cpu, model.layers.1=disk") == {
        "model.layers.0": "cpu",
        "model.layers.1": "disk",
    }
    assert placement.parse_device_map(json.dumps({"lm_head": "cpu"})) == {"lm_head": "cpu"}
    assert placement.parse_device_map("balanced") == "balanced"
    assert placement.parse_max_memory("cpu=2GiB") == {"cpu": 2 * 1024**3}
    assert placement.parse_max_memory({"cpu": "500MB"}) == {"cpu": 500 * 10**6}


def test_tiny_models_refuse_a_device_map():
    with pytest.raises(InvalidInput, match="save it with save_pretrained"):
        lmpeek.load("tiny:llama", device_map="auto")


# --- offload: hooks and the recompute path through accelerate's hooks ---------------------------


def _split(folder: pathlib.Path) -> lmpeek.LoadedModel:
    """The model with its odd layers offloaded to disk, everything else on the CPU."""
    whole = lmpeek.load(str(folder), progress=False)
    blocks = whole.bound.adapter.blocks  # e.g. "model.layers", "transformer.h", "gpt_neox.layers"
    device_map = {f"{blocks}.{i}": "disk" if i % 2 else "cpu" for i in range(whole.n_layers)}
    for name, module in whole.hf.named_modules():
        outside = name != blocks and not name.startswith(f"{blocks}.")
        own = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
        if outside and own and name:
            device_map[name] = "cpu"
    model = lmpeek.load(str(folder), device_map=device_map, progress=False)
    assert set(model.hf.hf_device_map.values()) == {"cpu", "disk"}, model.hf.hf_device_map
    return model


@pytest.mark.parametrize("arch", SPLIT)
def test_a_model_split_across_cpu_and_disk_gives_the_same_numbers(folders, arch):
    whole = lmpeek.load(str(folders[arch]), progress=False)
    split = _split(folders[arch])
    assert any(p.device.type == "meta" for p in split.hf.parameters())  # really offloaded
    # the fingerprint reads offloaded weights through accelerate: one model, one identity
    assert split.fingerprint == whole.fingerprint

    # every hook point of one forward
    a = lmpeek.trace(whole, TEXT, keep=["*"])
    b = lmpeek.trace(split, TEXT, keep=["*"])
    assert a.tensors.keys() == b.tensors.keys() and len(a.tensors) > 10
    for name in a.tensors:
        np.testing.assert_allclose(b.tensors[name], a.tensors[name], rtol=1e-5, atol=1e-5, err_msg=name)
    for field in ("loss", "entropy", "true_prob", "attn_entropy"):
        np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-5, atol=1e-6, err_msg=field)

    # the recompute path (what the app and notebook serve): every block hook point of every layer,
    # recomputed from the stored stream, head writes and attention slices with RoPE parts
    with Session(whole) as sa, Session(split) as sb:
        ta, tb = sa.trace(TEXT).id, sb.trace(TEXT).id
        for comp in recompute.components(whole):
            layers = range(whole.n_layers) if comp["per_layer"] else [None]
            for layer in layers:
                hook = comp["hook"].format(l=layer) if layer is not None else comp["hook"]
                head = whole.n_heads - 1 if comp["per_head"] else None
                np.testing.assert_allclose(
                    sb.component(tb, hook, head),
                    sa.component(ta, hook, head),
                    rtol=1e-5,
                    atol=1e-5,
                    err_msg=hook,
                )
        last = whole.n_layers - 1
        np.testing.assert_allclose(sb.attention(tb, last, 1), sa.attention(ta, last, 1), atol=1e-6)
        lens_a, lens_b = sa.logit_lens(ta, 5), sb.logit_lens(tb, 5)
        assert lens_a.ids.tolist() == lens_b.ids.tolist()

    # generation on the KV cache through the offload hooks: same tokens, same probabilities
    ga = list(lmpeek.generate(whole, TEXT, max_new_tokens=6, temperature=0, stop_at_eos=False))
    gb = list(lmpeek.generate(split, TEXT, max_new_tokens=6, temperature=0, stop_at_eos=False))
    assert [s.token_id for s in ga] == [s.token_id for s in gb]
    np.testing.assert_allclose([s.prob for s in gb], [s.prob for s in ga], rtol=1e-5)


def test_all_on_disk_still_runs(folders):
    model = lmpeek.load(str(folders["llama"]), device_map="auto", max_memory={"cpu": 1024}, progress=False)
    assert set(model.hf.hf_device_map.values()) == {"disk"}
    whole = lmpeek.load(str(folders["llama"]), progress=False)
    np.testing.assert_allclose(lmpeek.trace(model, TEXT).loss, lmpeek.trace(whole, TEXT).loss, rtol=1e-5)


def test_bfloat16_weights_give_float32_summaries_of_the_bfloat16_forward(folders):
    model = lmpeek.load(str(folders["llama"]), dtype="bfloat16", progress=False)
    assert next(model.hf.parameters()).dtype == torch.bfloat16
    t = lmpeek.trace(model, TEXT, keep=["blocks.0.hook_resid_post"])
    assert t.loss.dtype == np.float32 and t.entropy.dtype == np.float32
    assert t.tensors["blocks.0.hook_resid_post"].dtype == np.float32
    # independent: the same bfloat16 model run by transformers alone, its logits taken in float32
    ids = torch.as_tensor(np.asarray(t.token_ids))[None]
    with torch.no_grad():
        logits = model.hf(ids).logits[0].float()
    loss = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="none").numpy()
    np.testing.assert_allclose(t.loss[:-1], loss, rtol=2e-2, atol=2e-2)
