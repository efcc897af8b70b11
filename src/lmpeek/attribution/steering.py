"""Steering: steered and plain generations side by side, with the same seed, and where they part.

    steer_generate(model, prompt, Steer(hook, direction, strength, mode), seed=0, max_new_tokens=20)

generates twice with lmpeek's sampler and the same seed (plain, then inside `intervene(steer=...)`),
then teacher-forces the steered text through the plain and the steered model (one forward each) for,
at each generated token t:
    delta_logp[t] = log p_steered(t) - log p_plain(t)
    kl[t]         = KL(p_steered || p_plain) of the next-token distributions that chose t
and `fluency`, the perplexity of the steered tokens under the plain model (degeneration shows here).
Strength is a fraction of the mean residual norm at the hook over the prompt (intervene.mean_norm),
so strength 1 adds a vector as long as a typical residual; `strengths=` (or "sweep": SWEEP) runs one
steered generation per strength against the one plain generation. Strength 0 reproduces the plain
generation exactly (tests/attribution/test_steering.py).

Directions (unit length is taken by the edit, so any scale works):
    feature_direction(source, i)        an SAE's decoder row W_dec[i] (what feature i writes)
    neuron_direction(model, layer, i)   MLP neuron i's output vector: down_proj(e_i) - down_proj(0)
    mean_difference(model, pos, neg, hook, position="last")
                                        mean(h over pos prompts) - mean(h over neg prompts) at hook,
                                        at each prompt's last token (nnsight's recipe) or its mean
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from lmpeek import validate
from lmpeek.attribution.intervene import Steer, capture_points, intervene, resolve_steer, token_ids
from lmpeek.errors import InvalidInput

SWEEP = (0.25, 0.5, 1.0, 2.0, 4.0)  # fractions of the residual norm for strengths="sweep"


def feature_direction(source: Any, index: int) -> np.ndarray:
    """SAE feature `index`'s decoder row (a lmpeek.features SAE source)."""
    w = getattr(source, "w", None)
    if not isinstance(w, dict) or "W_dec" not in w:
        raise InvalidInput(f"{getattr(source, 'name', source)!r} has no decoder rows (W_dec) to steer with")
    if not 0 <= int(index) < w["W_dec"].shape[0]:
        raise InvalidInput(f"feature {index} is out of range ({w['W_dec'].shape[0]} features)")
    return w["W_dec"][int(index)].detach().float().cpu().numpy().copy()


def neuron_direction(model: Any, layer: int, index: int) -> np.ndarray:
    """What MLP neuron `index` of `layer` writes per unit of activation: the down projection of the
    one-hot e_i minus that of 0 (its bias), whatever the layout (Linear, GPT-2's Conv1D)."""
    b = model.bound
    if not 0 <= layer < b.n_layers or not 0 <= index < b.d_mlp:
        raise InvalidInput(
            f"neuron ({layer}, {index}) is out of range ({b.n_layers} layers, {b.d_mlp} neurons)"
        )
    down = b.block_module(layer, b.adapter.mlp_post.path)
    p = next(down.parameters())
    x = torch.zeros(2, b.d_mlp, dtype=p.dtype, device=p.device)
    x[0, index] = 1.0
    with torch.no_grad():
        y = down(x).float()
    return (y[0] - y[1]).cpu().numpy()


def mean_difference(model: Any, positive: Sequence[Any], negative: Sequence[Any], hook: str,
                    position: str = "last") -> np.ndarray:  # fmt: skip
    """mean over `positive` of h at `hook` minus the same over `negative` (h: each prompt's last token,
    or with position="mean" the mean over its tokens)."""
    if position not in ("last", "mean"):
        raise InvalidInput(f"position must be 'last' or 'mean', got {position!r}")

    def mean(texts: Sequence[Any]) -> torch.Tensor:
        if isinstance(texts, str) or not len(texts):
            raise InvalidInput("mean_difference takes two non-empty lists of prompts")
        rows = []
        for t in texts:
            x = capture_points(model, t, [hook])[hook].float()
            rows.append(x[-1] if position == "last" else x.mean(0))
        return torch.stack(rows).mean(0)

    return (mean(positive) - mean(negative)).cpu().numpy()


@dataclass(frozen=True)
class SteerResult:
    """One steered generation beside the plain one (same prompt, seed and sampler)."""

    strength: float
    steered_ids: np.ndarray  # generated tokens only
    plain_ids: np.ndarray
    steered_text: str
    plain_text: str
    steered_tokens: list[str]
    plain_tokens: list[str]
    delta_logp: np.ndarray  # [n steered tokens] log p_steered - log p_plain of each steered token
    kl: np.ndarray  # [n] KL(p_steered || p_plain) where each steered token was chosen
    fluency: float  # perplexity of the steered tokens under the plain model
    seed: int
    norms: list[float]  # each steer's norm (the scale its strength multiplies)


def _generate(model: Any, prompt: Any, max_new_tokens: int, temperature: float, seed: int,
              steers: Sequence[Steer] = (), step: Callable[[], None] = lambda: None,
              ) -> list[int]:  # fmt: skip
    """lmpeek's sampler, one token at a time; with `steers`, each step runs inside intervene.
    The hooks are on only while a step computes, and `step()` (progress) runs outside them: a long
    job pauses there, and the model's other jobs, run in that pause, must see the plain model."""
    from lmpeek.capture.generate import generate

    steps = iter(generate(model, prompt, max_new_tokens, temperature=temperature, seed=seed))
    out = []
    while True:
        if steers:  # positions are absolute (read from the KV cache), so re-entering is exact
            with intervene(model, steer=steers):
                s = next(steps, None)
        else:
            s = next(steps, None)
        if s is None:
            return out
        out.append(s.token_id)
        step()


def _logprobs(model: Any, ids: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        logits = model.hf(input_ids=torch.as_tensor(ids, device=model.device)[None], use_cache=False).logits
    return logits[0].double().log_softmax(-1).cpu()


def steer_generate(
    model: Any, prompt: Any, steer: Any, seed: int = 0, max_new_tokens: int = 20, temperature: float = 1.0,
    strengths: Any = None, progress: Callable[[int, int], None] | None = None,
) -> SteerResult | list[SteerResult]:  # fmt: skip
    """Steered and plain generations with the same seed, per-token Δ log-p and KL (module docstring).
    `steer`: a Steer or a list of them; `strengths`: None (each steer's own), a list, or "sweep"
    (SWEEP) for one SteerResult per strength, each steer's strength set to it. `progress(done, total)`
    is called after each generated token and each teacher-forced forward (total: max_new_tokens per
    generation plus 2 forwards per strength; an early end of text skips ahead), never while the
    steering hooks are on."""
    from lmpeek.capture.tokens import token_labels_fn
    from lmpeek.capture.trace import require_model

    require_model(model)
    max_new_tokens = validate.integer("max_new_tokens", max_new_tokens, 1, 100_000)
    steers = [steer] if isinstance(steer, Steer) else list(steer)
    if not steers or not all(isinstance(s, Steer) for s in steers):
        raise InvalidInput("steer takes a Steer (or a list of them)")
    prompt_ids = token_ids(model, prompt)
    steers = [resolve_steer(model, s, prompt_ids) for s in steers]  # norms measured once, on the prompt
    sweep = None
    if strengths is not None:
        sweep = list(SWEEP) if isinstance(strengths, str) and strengths == "sweep" else list(strengths)
    n_runs = len(sweep) if sweep is not None else 1
    total = max_new_tokens * (1 + n_runs) + 2 * n_runs
    done = [0]

    def tick(to: int | None = None) -> None:
        done[0] = done[0] + 1 if to is None else to
        if progress is not None:
            progress(done[0], total)

    plain = _generate(model, prompt, max_new_tokens, temperature, seed, step=tick)
    tick(max_new_tokens)  # the plain text may have ended early (end of text)
    label = token_labels_fn(model.tokenizer)
    results = []
    for k, strength in enumerate(sweep if sweep is not None else [None]):
        these = steers if strength is None else [replace(s, strength=float(strength)) for s in steers]
        steered = _generate(model, prompt, max_new_tokens, temperature, seed, these, tick)
        tick((k + 1) * (max_new_tokens + 2) + max_new_tokens - 2)
        ids = np.concatenate([prompt_ids, np.asarray(steered, np.int64)])
        lp_plain = _logprobs(model, ids)
        tick()
        with intervene(model, steer=these):
            lp_steer = _logprobs(model, ids)
        tick()
        n0 = prompt_ids.size
        rows = torch.arange(n0 - 1, ids.size - 1)
        chosen = torch.as_tensor(ids[n0:])
        delta = (lp_steer[rows, chosen] - lp_plain[rows, chosen]).numpy()
        kl = (lp_steer[rows].exp() * (lp_steer[rows] - lp_plain[rows])).sum(-1).clamp_min(0).numpy()
        results.append(
            SteerResult(
                strength=float(these[0].strength),
                steered_ids=np.asarray(steered, np.int64),
                plain_ids=np.asarray(plain, np.int64),
                steered_text=model.tokenizer.decode(steered),
                plain_text=model.tokenizer.decode(plain),
                steered_tokens=[label(i) for i in steered],
                plain_tokens=[label(i) for i in plain],
                delta_logp=delta,
                kl=kl,
                fluency=float(torch.exp(-lp_plain[rows, chosen].mean())),
                seed=int(seed),
                norms=[float(s.norm) for s in these],
            )
        )
    return results if sweep is not None else results[0]
