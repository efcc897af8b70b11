"""Causal language models only: why a config or a model is not one, in one sentence.

lmpeek shows what a model predicts for the next token and which earlier tokens each position reads.
A model whose attention also looks at later tokens (an encoder, an encoder-decoder, a Gemma 3 with
bidirectional attention such as EmbeddingGemma) or that has no language-model head would still run
and print numbers, but none of them would mean what lmpeek says they mean; so such models are refused
at load (`sources.resolve`) and at `wrap`, with the reason. Importing this module does not import
torch or transformers.
"""

from __future__ import annotations

from typing import Any

from lmpeek.errors import UnsupportedArchitecture

# Class names of transformers models with a causal language-model head. Every class transformers maps
# for AutoModelForCausalLM ends with one of these (BertGenerationDecoder is the one "Decoder").
_LM_HEAD_SUFFIXES = ("ForCausalLM", "LMHeadModel", "WithLMHead", "ForConditionalGeneration", "Decoder")


def has_lm_head_name(class_name: str) -> bool:
    return class_name.endswith(_LM_HEAD_SUFFIXES)


def _configs(config: Any) -> list[Any]:
    """The config and, for multimodal models, the text config inside it (where the flags live)."""
    out = [config]
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            text = get_text()
        except Exception:  # a config that cannot say: judge the outer one only
            text = None
        if text is not None and text is not config:
            out.append(text)
    return out


def _bidirectional_flag(config: Any) -> str | None:
    for c in _configs(config):
        value = getattr(c, "use_bidirectional_attention", None)
        # "vision": only image tokens see each other (text stays causal); True / "all": every token
        if value and value != "vision":
            return "its config sets use_bidirectional_attention (every token also attends to later tokens)"
        if getattr(c, "is_causal", None) is False:
            return "its config sets is_causal to false (every token also attends to later tokens)"
    return None


def not_causal_reason(
    config: Any,
    *,
    model_class: str | None = None,
    has_output_embeddings: bool | None = None,
    masked_types: frozenset[str] = frozenset(),
    causal_types: frozenset[str] | None = None,
    check_architectures: bool = True,
) -> str | None:
    """Why `config` (and the model's class, for a model already built) is not a causal LM, or None.

    masked_types / causal_types: model types with a masked-LM / causal-LM class, from
    hf_compat.causal_lm_model_types(). With causal_types, a model type without a causal-LM class is
    refused too (sources that transformers loads by type; `wrap` gets an already built model).
    Without model_class, the config's `architectures` must name a class with a causal-LM head
    (unless check_architectures is False: a model whose own code says it is a causal LM).
    """
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        return "it is an encoder-decoder model (its encoder reads the whole text at once)"
    bidirectional = _bidirectional_flag(config)
    if bidirectional:
        return bidirectional
    if model_type in masked_types and not getattr(config, "is_decoder", False):
        # BERT-like encoders have a causal-LM head class, but as trained they attend both ways
        return "it is an encoder (masked language model: it attends both ways)"
    if causal_types is not None and model_type not in causal_types:
        return f"transformers has no causal language-model class for model type '{model_type}'"
    if model_class is not None:
        if not has_lm_head_name(model_class) and has_output_embeddings is False:
            return f"{model_class} has no language-model head (load the …ForCausalLM class instead)"
    elif check_architectures:
        archs = list(getattr(config, "architectures", None) or [])
        if archs and not any(has_lm_head_name(a) for a in archs):
            return (
                f"its config names {', '.join(archs)}: a model without a causal language-model head "
                "(a base model, an embedding model or a classifier)"
            )
    return None


def refusal(label: str, what: str, reason: str) -> UnsupportedArchitecture:
    """One line: what is refused, why, and what lmpeek supports."""
    from lmpeek.models.adapters import supported_architectures

    return UnsupportedArchitecture(
        f"Cannot use {label}: {what} is not a causal language model: {reason}. lmpeek supports causal "
        f"(decoder-only) language models; supported architectures: {', '.join(supported_architectures())}."
    )


def require_causal_model(model: Any, label: str | None = None) -> None:
    """Refuse an in-memory transformers model (`wrap`) that is not a causal language model."""
    from lmpeek.models import hf_compat

    config = getattr(model, "config", None)
    if config is None:
        return  # not a transformers model: the adapter lookup says what is missing
    _, masked_types = hf_compat.causal_lm_model_types()
    get_out = getattr(model, "get_output_embeddings", None)
    has_out = get_out() is not None if callable(get_out) else None
    name = type(model).__name__
    reason = not_causal_reason(
        config, model_class=name, has_output_embeddings=has_out, masked_types=masked_types
    )
    if reason is not None:
        raise refusal(label or f"this {name}", name, reason)
