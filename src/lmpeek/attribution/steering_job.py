"""Steering as a long job (the Why tab's "Steering" section; POST /api/why/steer).

    run = start_steering(session, "I think that", {"kind": "neuron", "layer": 1, "index": 7},
                         strength=2.0, sweep=True)
    session.run_job(lambda: start_steering(...))   # to its end: a SteeringRun

One job on the model's queue: checks everything and resolves the direction (4xx before any stream),
then `steer_generate` (lmpeek.attribution.steering) with its progress, in turns (Session.start_job);
results are cached by every parameter. Directions (`direction["kind"]`):

    feature          {source, index}: the decoder row W_dec[index] of a features source the app serves
                     (a "neurons:L" source: neuron `index`'s output vector); its default hook is where
                     the source writes (an SAE: the point it reads; a transcoder: its output point)
    neuron           {layer, index}: MLP neuron `index`'s output vector; default hook: that layer's
                     residual stream after the block (where the neuron's write lands)
    mean_difference  {positive, negative}: mean(h over positive prompts) − mean(h over negative), h at
                     each prompt's last token, at each steered hook (so each layer gets its own)
    vector           {values}: d_model numbers
    node             {text?, hook, position}: the activation vector of `text` (default: the prompt) at
                     `hook` (blocks.{l}.hook_resid_pre / hook_resid_post / hook_attn_out / hook_mlp_out)
                     and token `position` (negative: from the end): what a flow-graph node at (l, token)
                     writes (MLP node: hook_mlp_out, attention node: hook_attn_out, residual node:
                     hook_resid_post); its default hook is that hook itself

Hooks: `blocks.{L}.{point}` for each L in `layers` (default: the direction's own layer, else the middle
layer); point: hook_resid_pre / hook_resid_post / hook_attn_out / hook_mlp_out (default: the
direction's own point, else hook_resid_pre). Positions: "all" (prompt and generated), "prompt" (the
prompt's tokens only), "from" (absolute index `start` onwards, generated tokens too). Strength is a
fraction of each hook's mean norm over the prompt (c = strength · norm); `sweep` runs SWEEP's five
strengths, with the sign of `strength`, against the one plain generation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from lmpeek import validate
from lmpeek.errors import InvalidInput

POINTS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out")
POSITIONS = ("all", "prompt", "from")
MAX_NEW_TOKENS = 128  # the app's cap: each token is a step of two generations (more when sweeping)
MAX_PROMPTS = 64  # per side of a mean difference
MAX_LAYERS = 8


@dataclass(frozen=True)
class SteeringRun:
    """A steering job's answer: one SteerResult per strength (one unless sweeping) and what ran."""

    results: list[Any]  # steering.SteerResult
    prompt_tokens: list[str]
    hooks: list[str]
    positions: list[int] | None  # absolute positions steered (None: all)
    direction: dict[str, Any]  # the request's direction, with `label` and the vector's `norm` per hook
    mode: str
    sweep: bool
    cached: bool = False


def _split(hook: str) -> tuple[int | None, str]:
    from lmpeek.attribution.intervene import _split as split

    return split(hook)


def node_vector(model: Any, text: Any, hook: str, position: Any) -> tuple[np.ndarray, int]:
    """(the activation of `text` at `hook` and token `position` (negative: from the end), the
    position made absolute), checked: a residual-sized point of this model, a token of the text."""
    from lmpeek.attribution.intervene import capture_points, token_ids, writable

    layer, point = _split(str(hook))
    if layer is None or point not in POINTS:
        raise InvalidInput(f"a node's hook must be blocks.L.{{{', '.join(POINTS)}}}, got {hook!r}")
    writable(model.bound, str(hook))  # the layer exists (and the point can be read through its hook)
    ids = token_ids(model, text)
    T = int(ids.size)
    try:
        at = validate.integer("position", position, -T, T - 1) % T
    except InvalidInput as err:
        raise InvalidInput(f"{err} (the text has {T} tokens; negative counts from the end)") from None
    x = capture_points(model, ids, [str(hook)])[str(hook)]
    return x[at].double().cpu().numpy(), at


def direction_vectors(model: Any, direction: dict[str, Any], sources: Callable[[str], Any] | None,
                       prompt: Any = None):  # fmt: skip
    """(vector or None (computed per hook in the job), its own hook or None, a label), checked.
    `prompt`: a node direction's text when it names none."""
    from lmpeek.attribution.steering import feature_direction, neuron_direction

    kind = direction.get("kind")
    if kind == "node":
        text = direction.get("text") or prompt
        if text is None:
            raise InvalidInput("a node direction needs a text")
        if isinstance(text, str):
            validate.text(text, "a node's text")
        hook = str(direction.get("hook", ""))
        v, at = node_vector(model, text, hook, direction.get("position"))
        return v, hook, f"node {hook} @ #{at}"
    if kind == "feature":
        if sources is None:
            raise InvalidInput("no feature sources here: steer with a neuron, a vector or a mean difference")
        name, index = str(direction.get("source", "")), direction.get("index")
        index = validate.integer("index", index, 0)
        src = sources(name)
        if getattr(src, "kind", None) == "neurons":  # neurons:L: a neuron's output vector
            layer, _ = _split(src.hooks[0])
            if not 0 <= index < int(src.n_features):
                raise InvalidInput(f"feature {index} is out of range ({src.n_features} features)")
            hook = f"blocks.{layer}.hook_resid_post"
            return neuron_direction(model, int(layer), index), hook, f"{name} #{index}"
        v = feature_direction(src, index)
        return v, getattr(src, "hook_out", None) or src.hooks[0], f"{name} #{index}"
    if kind == "neuron":
        layer = validate.integer("layer", direction.get("layer"), 0)
        index = validate.integer("index", direction.get("index"), 0)
        v = neuron_direction(model, layer, index)
        return v, f"blocks.{layer}.hook_resid_post", f"neuron L{layer} #{index}"
    if kind == "mean_difference":
        pos, neg = direction.get("positive"), direction.get("negative")
        for side, texts in (("positive", pos), ("negative", neg)):
            if not isinstance(texts, (list, tuple)) or not texts:
                raise InvalidInput(
                    f"a mean difference takes two non-empty lists of prompts ({side} is empty)"
                )
            if len(texts) > MAX_PROMPTS:
                raise InvalidInput(f"at most {MAX_PROMPTS} {side} prompts, got {len(texts)}")
            for t in texts:
                validate.text(t, f"a {side} prompt")
        return None, None, f"mean difference ({len(pos)} vs {len(neg)} prompts)"
    if kind == "vector":
        values = direction.get("values")
        if not isinstance(values, (list, tuple)):
            raise InvalidInput("a vector direction takes `values`: a list of numbers")
        return np.asarray(values, np.float64), None, f"vector ({len(values)} numbers)"
    raise InvalidInput(
        f"direction kind must be feature, neuron, mean_difference, vector or node, got {kind!r}"
    )


def _hooks(model: Any, own: str | None, layers: Any, point: str | None) -> list[str]:
    n = model.bound.n_layers
    own_layer, own_point = _split(own) if own is not None else (None, None)
    if point is None:
        point = own_point if own_point in POINTS else "hook_resid_pre"
    if point not in POINTS:
        raise InvalidInput(f"point must be one of {', '.join(POINTS)}, got {point!r}")
    if layers is None or (isinstance(layers, (list, tuple)) and not layers):
        layers = [own_layer if own_layer is not None else n // 2]
    if isinstance(layers, int):
        layers = [layers]
    if len(layers) > MAX_LAYERS:
        raise InvalidInput(f"at most {MAX_LAYERS} layers, got {len(layers)}")
    out = []
    for layer in dict.fromkeys(layers):
        layer = validate.integer("layer", layer, 0, n - 1)
        out.append(f"blocks.{layer}.{point}")
    return out


def start_steering(
    session: Any, prompt: str, direction: dict[str, Any], layers: Any = None, point: str | None = None,
    positions: str = "all", start: int = 0, mode: str = "add", strength: float = 1.0, seed: int = 0,
    max_new_tokens: int = 32, temperature: float = 1.0, sweep: bool = False,
    sources: Callable[[str], Any] | None = None,
) -> Any:  # fmt: skip
    """Steering (module docstring) as a LongRun of `session`: bad input raises here; call it on the
    model's thread (it resolves the direction and times a forward). `sources(name)`: the features
    source by the app's id (raises for an unknown one)."""
    import torch

    from lmpeek.attribution.intervene import STEER_MODES, Steer, token_ids, unit
    from lmpeek.attribution.steering import SWEEP, mean_difference, steer_generate
    from lmpeek.session import ticker

    model = session.model
    validate.text(prompt, "prompt")
    if mode not in STEER_MODES:
        raise InvalidInput(f"mode must be one of {', '.join(STEER_MODES)}, got {mode!r}")
    if positions not in POSITIONS:
        raise InvalidInput(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    start = validate.integer("start", start, 0)
    strength = validate.number("strength", strength, -1000.0, 1000.0)
    max_new_tokens = validate.integer("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
    temperature = validate.number("temperature", temperature, 0.0, 100.0)
    seed = validate.integer("seed", seed, 0, 2**31 - 1)
    vector, own, label = direction_vectors(model, dict(direction), sources, prompt)
    hooks = _hooks(model, own, layers, point)
    if vector is not None:
        unit(vector, model.d_model)  # a wrong size or a zero vector: refused before the stream
    ids = token_ids(model, prompt)
    n0 = int(ids.size)
    ctx = model.context_length
    if ctx is not None and n0 + max_new_tokens > ctx:
        raise InvalidInput(
            f"prompt ({n0} tokens) + max_new_tokens ({max_new_tokens}) exceeds the context {ctx}"
        )
    where = {"all": None, "prompt": tuple(range(n0)), "from": tuple(range(start, n0 + max_new_tokens))}
    steered_at = where[positions]
    sign = -1.0 if strength < 0 else 1.0
    strengths = [sign * s for s in SWEEP] if sweep else None
    key_dir = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in direction.items()))
    key = (model.fingerprint["id"], "steer", prompt, key_dir, tuple(hooks), steered_at, mode, strength, seed,
           max_new_tokens, temperature, bool(sweep))  # fmt: skip
    hit = session.cached_run(key)
    if hit is not None:
        return hit
    n_runs = len(SWEEP) if sweep else 1
    n_md = len(direction["positive"]) + len(direction["negative"]) if vector is None else 0
    prep = len(hooks) * (1 + n_md)  # each hook's norm on the prompt, the mean difference's prompts
    forwards = prep + max_new_tokens * (1 + n_runs) + 2 * n_runs
    one = session.forward_seconds(torch.as_tensor(ids, device=model.device)[None])
    # a cached generation step costs well under a full forward; the full-length ones dominate
    seconds = one * (prep + 2 * n_runs + 0.5 * max_new_tokens * (1 + n_runs))

    def compute(pause: Callable[[Any], None]) -> SteeringRun:
        from lmpeek.capture.tokens import token_labels_fn

        tick = ticker(pause)
        steers, norms = [], {}
        for k, hook in enumerate(hooks):
            v = vector
            if v is None:
                v = mean_difference(model, direction["positive"], direction["negative"], hook)
            unit(v, model.d_model, "the mean difference")  # two identical sets give a zero vector
            norms[hook] = float(np.linalg.norm(v))
            steers.append(Steer(hook, v, strength, mode, steered_at))
            tick(k + 1, forwards)

        def progress(done: int, total: int) -> None:
            tick(prep + done, prep + total)

        out = steer_generate(model, prompt, steers, seed=seed, max_new_tokens=max_new_tokens,
                             temperature=temperature, strengths=strengths, progress=progress)  # fmt: skip
        label_of = token_labels_fn(model.tokenizer)
        return SteeringRun(
            results=out if isinstance(out, list) else [out],
            prompt_tokens=[label_of(int(i)) for i in ids],
            hooks=hooks,
            positions=None if steered_at is None else list(steered_at),
            direction={
                **{k: v for k, v in direction.items() if k != "values"},
                "label": label,
                "vector_norms": [norms[h] for h in hooks],
            },  # fmt: skip
            mode=mode,
            sweep=bool(sweep),
        )

    return session.start_job(key, forwards, seconds, compute, kept=lambda r: replace(r, cached=True),
                             name="lmpeek-steering")  # fmt: skip


def steering(session: Any, prompt: str, direction: dict[str, Any], **kwargs: Any) -> SteeringRun:
    """`start_steering` run to its end on the session's queue (notebook, tests)."""
    return session.run_job(lambda: start_steering(session, prompt, direction, **kwargs), "steer")
