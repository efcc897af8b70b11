"""Tiny randomly initialised models, built in-process from a config (no downloads).

Used by the test suite (one per registered architecture), by `lmpeek check tiny:ARCH`, and by the
app's end-to-end tests, which need a model that loads in milliseconds. Their predictions are noise;
their hook points are real.

Two variants of tiny:llama reproduce what real models do to numbers (TINY_VARIANTS): `llama-big`, whose
residual stream goes past float16's 65,504 as Gemma 3's does (it reaches 1e5), and `llama-inf`, whose
layer 0 MLP holds an inf weight, so that its forward produces inf and NaN.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import torch

from lmpeek.errors import SourceNotFound

# A few paragraphs to train the tiny byte-level BPE tokenizer on; any text works.
_CORPUS = """The capital of France is Paris. The capital of Germany is Berlin.
Once upon a time there was a small model that wanted to see inside itself.
def add(a, b):\n    return a + b\nfor i in range(10):\n    print(i)
Attention is all you need. The quick brown fox jumps over the lazy dog.
1 + 1 = 2, 2 + 2 = 4, 3 * 3 = 9. Le chat est sur la table. Der Hund schläft.
"""

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

D, L, H, KV, M, CTX = 64, 2, 4, 2, 128, 4096

_COMMON = dict(hidden_size=D, num_hidden_layers=L, num_attention_heads=H, intermediate_size=M)


def _configs(vocab: int) -> dict[str, Any]:
    import transformers as tf

    llama = dict(_COMMON, vocab_size=vocab, num_key_value_heads=KV, max_position_embeddings=CTX)
    return {
        "llama": lambda: tf.LlamaConfig(**llama),
        "mistral": lambda: tf.MistralConfig(**llama, sliding_window=None),
        "qwen2": lambda: tf.Qwen2Config(**llama),
        "qwen3": lambda: tf.Qwen3Config(**llama, head_dim=16),
        "gemma3": lambda: tf.Gemma3TextConfig(
            **llama, head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"]
        ),
        "phi3": lambda: tf.Phi3Config(
            **llama, partial_rotary_factor=0.5, pad_token_id=0, bos_token_id=1, eos_token_id=2
        ),
        "gpt2": lambda: tf.GPT2Config(
            vocab_size=vocab,
            bos_token_id=0,
            eos_token_id=0,
            n_embd=D,
            n_layer=L,
            n_head=H,
            n_inner=M,
            n_positions=CTX,
        ),
        "gpt_neox": lambda: tf.GPTNeoXConfig(
            **_COMMON,
            vocab_size=vocab,
            bos_token_id=0,
            eos_token_id=0,
            max_position_embeddings=CTX,
            rotary_pct=0.25,
            use_parallel_residual=True,
        ),
        "gpt_neox_sequential": lambda: tf.GPTNeoXConfig(
            **_COMMON,
            vocab_size=vocab,
            bos_token_id=0,
            eos_token_id=0,
            max_position_embeddings=CTX,
            rotary_pct=0.5,
            use_parallel_residual=False,
        ),
        # not in the registry: exercises the generic llama-like adapter
        "olmo": lambda: tf.OlmoConfig(**llama, eos_token_id=0, pad_token_id=0),
    }


TINY_ARCHITECTURES = tuple(_configs(0))

# the residual stream of tiny:llama-big reaches ~8e6 (float16 stops at 65,504; Gemma 3 reaches 1e5)
BIG_SCALE = 2e5


def _beyond_float16(model) -> None:
    # everything that writes into the residual stream, scaled: the embedding and each block's output
    # projections. The norms at each block's inputs undo the scale, so the model still computes.
    inner = model.model
    inner.embed_tokens.weight.mul_(BIG_SCALE)
    for block in inner.layers:
        block.self_attn.o_proj.weight.mul_(BIG_SCALE)
        block.mlp.down_proj.weight.mul_(BIG_SCALE)


def _inf_in_layer_0(model) -> None:
    # layer 0's MLP writes inf into the stream; layer 1 then normalises inf (NaN) and so on to the logits
    model.model.layers[0].mlp.down_proj.weight[0, 0] = float("inf")


# name -> (architecture, what is done to its weights)
TINY_VARIANTS = {"llama-big": ("llama", _beyond_float16), "llama-inf": ("llama", _inf_in_layer_0)}


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on a few lines, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        show_progress=False,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([_CORPUS], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def tiny_hf_model(arch: str, seed: int = 0):
    """(transformers CausalLM, tokenizer) for `arch`, float32, eval mode, deterministic weights."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    configs = _configs(len(tokenizer))
    variant = None
    if arch in TINY_VARIANTS:
        arch, variant = TINY_VARIANTS[arch]
    if arch not in configs:
        raise SourceNotFound(
            f"no tiny model '{arch}'; choose one of: {', '.join([*configs, *TINY_VARIANTS])}"
        )
    # Weights come from torch's global generator (transformers' init uses it): under a lock, so two
    # threads building tiny models at once still get the same weights, and inside fork_rng, so the
    # caller's random state is left as it was.
    with _BUILDING, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(
            configs[arch](), attn_implementation="eager", dtype=torch.float32
        )
        # transformers' init (std 0.02) gives near-uniform attention and logits, which would let
        # comparisons pass trivially; larger weights give peaked patterns and confident predictions.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.25)
            if variant is not None:
                variant(model)
    return model.eval(), tokenizer


_BUILDING = threading.Lock()
