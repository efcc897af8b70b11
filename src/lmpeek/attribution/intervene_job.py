"""The Why tab's "Ablate / patch" job: one text run plain and with edits (lmpeek.intervene), compared.

`start_intervention(session, text, edits, ...)` takes the app's edits (dicts, as POST
/api/why/intervene and web/src/lib/actions.svelte.ts write them):

    ablate          {hook, mode: zero|mean|resample, index?, positions?, source?, direction?}
                    direction (a residual-sized hook: hook_resid_pre / _post, hook_attn_out,
                    hook_mlp_out, hook_embed): only the component along it is ablated
                    (intervene.direction): {kind: neuron, layer, index} a neuron's output vector,
                    {kind: feature, source_name, index} a features source's decoder row,
                    {kind: node, text?, hook, position} the text's (default: this text's) activation
    patch           {hook, source, positions?, head?}
    ablate_feature  {source_name, index, positions?}   (a features source the app serves)

checks them all (bad input raises InvalidInput before anything streams), runs the reference forwards
(means, second prompts) and returns a LongRun whose result compares, on the text's own tokens:

    last position:  plain and edited top-k (with each token's probability in the other run) and
                    Δ log p of the plain top-1 token (edited − plain)
    every position: delta_logp[i] = log p_edited(x_i | x_<i) − log p_plain(x_i | x_<i) (None at 0),
                    kl[i] = KL(plain ‖ edited) of the next-token distributions after token i
    regenerations:  greedy continuations of `max_new_tokens` tokens, plain and edited (cut at EOS),
                    and their word-level diff (prompt_ablation.word_diff)

Resample and patch values exist only at the second prompt's positions, so they edit the text's own
positions only (never generated ones); without `positions` both prompts must have as many tokens.
Zero and mean ablations stay on while the model writes. Nothing pauses inside `edited(...)`: a
pause lets other jobs use the model, which must never see these hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmpeek.errors import InvalidInput

MAX_EDITS = 32
MAX_NEW_TOKENS = 64
ACTIONS = ("ablate", "patch", "ablate_feature")


@dataclass(frozen=True)
class InterventionResult:
    tokens: list[str]  # the text's tokens as displayed
    labels: list[str]  # each applied edit, in words
    plain_top: list[dict[str, Any]]  # [{id, token, prob, other}] other: the edited run's prob
    edited_top: list[dict[str, Any]]  # other: the plain run's prob
    top1: dict[str, Any]  # {id, token, plain_logp, edited_logp, delta}
    delta_logp: list[float | None]
    kl: list[float]
    plain_text: str
    edited_text: str
    diff: list[tuple[str, str]]
    forwards: int
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["diff"] = [{"op": op, "text": t} for op, t in self.diff]
        return out


def label_of(edit: dict[str, Any]) -> str:
    """What an edit does, in words (its own label first, as the app's actions name it)."""
    action, hook = edit.get("action"), edit.get("hook") or ""
    pos = edit.get("positions")
    where = "" if not pos else f" @ {','.join(str(p) for p in pos[:6])}{'…' if len(pos) > 6 else ''}"
    if action == "ablate_feature":
        what = f"ablate feature {edit.get('source_name')}#{edit.get('index')}"
    elif action == "patch":
        part = f" head {edit['head']}" if edit.get("head") is not None else ""
        what = f"patch {hook}{part} from B"
    else:
        part = f" [{edit['index']}]" if edit.get("index") is not None else ""
        d = edit.get("direction")
        if isinstance(d, dict):
            part += f" along {_direction_label(d)}"
        what = f"{edit.get('mode') or 'zero'}-ablate {hook}{part}"
    own = edit.get("label")
    return f"{own}: {what}{where}" if own else f"{what}{where}"


def _direction_label(d: dict[str, Any]) -> str:
    kind = d.get("kind")
    if kind == "neuron":
        return f"neuron {d.get('layer')}.{d.get('index')}"
    if kind == "feature":
        return f"feature {d.get('source_name')}#{d.get('index')}"
    return f"node {d.get('hook')} @ #{d.get('position')}" + (" of another text" if d.get("text") else "")


def _frozen(value: Any) -> Any:
    """A hashable copy (for the cache key): dicts as sorted item tuples, lists as tuples."""
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


# the points a direction ablation can edit: [T, d_model] vectors
RESIDUAL_SIZED = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


def direction_vector(model: Any, d: Any, text_ids: np.ndarray,
                     feature_source: Callable[[str], Any] | None) -> np.ndarray:  # fmt: skip
    """A direction edit's vector (see the module docstring), checked."""
    from lmpeek import validate
    from lmpeek.attribution.steering_job import direction_vectors, node_vector

    if not isinstance(d, dict):
        raise InvalidInput("direction must be {kind: neuron | feature | node, ...}")
    kind = d.get("kind")
    if kind == "node":
        text = d.get("text")
        if text is not None:
            validate.text(text, "a node's text")
        v, _ = node_vector(
            model, text if text is not None else text_ids, str(d.get("hook", "")), d.get("position")
        )
        return v
    if kind == "neuron":
        v, _, _ = direction_vectors(
            model, {"kind": "neuron", "layer": d.get("layer"), "index": d.get("index")}, None
        )
        return v
    if kind == "feature":
        if feature_source is None:
            raise InvalidInput("no features sources are served")
        name = d.get("source_name")
        if not name:
            raise InvalidInput("a feature direction needs source_name (a features source)")
        feature = {"kind": "feature", "source": str(name), "index": d.get("index")}
        v, _, _ = direction_vectors(model, feature, feature_source)
        return v
    raise InvalidInput(f"direction kind must be neuron, feature or node, got {kind!r}")


def _norm_edit(edit: dict[str, Any]) -> dict[str, Any]:
    """The edit's fields that change the answer (for the cache key and the labels)."""
    keys = ("action", "hook", "mode", "index", "head", "positions", "source", "source_name", "label",
            "direction")  # fmt: skip
    out = {k: edit.get(k) for k in keys if edit.get(k) is not None}
    if out.get("positions") is not None:
        out["positions"] = tuple(int(p) for p in out["positions"])
    return out


def specs(model: Any, text_ids: np.ndarray, edits: Sequence[dict[str, Any]],
          feature_source: Callable[[str], Any] | None = None) -> tuple[list[Any], list[Any]]:  # fmt: skip
    """(ablate, patch) specs for lmpeek.intervene from the app's edits, every one checked: hook,
    index, source present and long enough, positions inside the text, feature source known."""
    from lmpeek.attribution.intervene import (
        ABLATE_MODES,
        Ablation,
        FeatureAblation,
        Patch,
        _split,
        direction,
        token_ids,
        unit,
        writable,
    )

    T = int(text_ids.size)
    ablate: list[Any] = []
    patch: list[Any] = []
    for n, e in enumerate(edits):
        what = f"edit {n + 1} ({label_of(e)})"
        action = e.get("action")
        if action not in ACTIONS:
            raise InvalidInput(f"{what}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
        positions = e.get("positions")
        if positions is not None:
            positions = tuple(int(p) for p in positions)
            bad = [p for p in positions if not 0 <= p < T]
            if bad or not positions:
                raise InvalidInput(
                    f"{what}: positions must be token indices of the text (0..{T - 1}), got {bad or []}"
                )
        if action == "ablate_feature":
            if feature_source is None:
                raise InvalidInput(f"{what}: no features sources are served")
            name = e.get("source_name")
            if not name:
                raise InvalidInput(f"{what}: ablate_feature needs source_name (a features source)")
            src = feature_source(str(name))  # UnknownSource (404) / NoModel (409) when it cannot
            index = e.get("index")
            if index is None or not 0 <= int(index) < int(src.n_features):
                raise InvalidInput(f"{what}: feature {index} is out of range ({src.n_features} features)")
            ablate.append(FeatureAblation(src, int(index), positions))
            continue
        hook = e.get("hook")
        if not hook:
            raise InvalidInput(f"{what}: {action} needs a hook")
        try:
            point = writable(model.bound, str(hook))
        except InvalidInput as err:
            raise InvalidInput(f"{what}: {err}") from None
        index = e.get("head") if action == "patch" else e.get("index")
        if index is not None:
            size = point.heads or (
                model.bound.d_mlp
                if str(hook).endswith(("mlp.hook_post", "mlp.hook_pre"))
                else model.bound.d_model
            )
            if not 0 <= int(index) < size:
                kind = "head" if point.heads else "index"
                raise InvalidInput(f"{what}: {kind} {index} is out of range for {hook} (0..{size - 1})")
        mode = "resample" if action == "patch" else (e.get("mode") or "zero")
        if mode not in ABLATE_MODES:
            raise InvalidInput(f"{what}: mode must be one of {', '.join(ABLATE_MODES)}, got {mode!r}")
        source = e.get("source")
        if source is not None and not str(source).strip():
            source = None
        if mode == "resample":
            if source is None:
                raise InvalidInput(
                    f"{what}: {'a patch' if action == 'patch' else 'resampling'} needs prompt B (source)"
                )
            b = token_ids(model, str(source))
            if positions is None and b.size != T:
                raise InvalidInput(
                    f"{what}: prompt B has {b.size} tokens and the text {T}: patching every position needs "
                    f"prompts of equal length (or give positions)"
                )
            if positions is not None and max(positions) >= b.size:
                raise InvalidInput(
                    f"{what}: prompt B has {b.size} tokens; position {max(positions)} is beyond it"
                )
            positions = positions or tuple(range(T))  # the text's own positions, never generated ones
        if action == "patch":
            patch.append(Patch(str(hook), str(source), positions, None if index is None else int(index)))
        elif e.get("direction") is not None:
            residual = hook == "hook_embed" or _split(str(hook))[1] in RESIDUAL_SIZED
            if index is not None or not residual:
                raise InvalidInput(
                    f"{what}: a direction is ablated at a residual-sized point (blocks.L.hook_resid_pre, "
                    f"hook_resid_post, hook_attn_out, hook_mlp_out or hook_embed) with no index"
                )
            try:
                v = direction_vector(model, e["direction"], text_ids, feature_source)
                unit(v, model.d_model)
            except InvalidInput as err:
                raise InvalidInput(f"{what}: {err}") from None
            ablate.append(direction(str(hook), v, mode, positions, source))
        else:
            ablate.append(Ablation(str(hook), mode, None if index is None else int(index), positions, source))
    return ablate, patch


def _log_probs(logits: Any) -> Any:
    return logits.double().log_softmax(-1)


def compare(plain: Any, edited: Any, ids: np.ndarray) -> tuple[list[float | None], list[float]]:
    """Δ log p of each actual token and KL(plain ‖ edited) at every position, from [T, V] logits."""
    import torch

    deltas: list[float | None] = [None]
    kls: list[float] = []
    nxt = torch.as_tensor(ids, device=plain.device)
    for a in range(0, plain.shape[0], 256):  # float64 [256, V] at a time
        lp, lq = _log_probs(plain[a : a + 256]), _log_probs(edited[a : a + 256])
        p = lp.exp()
        kls += torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1).tolist()
        rows = torch.arange(lp.shape[0], device=lp.device)
        tgt = nxt[a + 1 : a + 1 + lp.shape[0]]
        k = tgt.numel()
        deltas += (lq[rows[:k], tgt] - lp[rows[:k], tgt]).tolist()
    return deltas, kls


def top_table(lp: Any, lq: Any, k: int, label: Callable[[int], str]) -> list[dict[str, Any]]:
    """The k most probable tokens of log-probs lp [V], with their probability under lq too."""
    probs, idx = lp.exp().topk(k)
    other = lq.exp()
    return [
        {"id": int(i), "token": label(int(i)), "prob": float(p), "other": float(other[int(i)])}
        for p, i in zip(probs.tolist(), idx.tolist(), strict=True)
    ]


def start_intervention(session: Any, text: str, edits: Sequence[dict[str, Any]], max_new_tokens: int = 20,
                       top_k: int = 10, features: Any = None) -> Any:  # fmt: skip
    """`text` run plain and with `edits` (see the module docstring) as a Session job (LongRun). Bad
    input raises here; the reference forwards (means, second prompts) run here too, on the model's
    thread. `features`: the app's FeatureService (feature ablations name its sources), or None."""
    import torch

    from lmpeek import validate
    from lmpeek.attribution.intervene import edited, plan
    from lmpeek.attribution.prompt_ablation import _generate, word_diff
    from lmpeek.capture.hooks import model_lock
    from lmpeek.capture.tokens import token_labels_fn, tokenize
    from lmpeek.session import ticker

    validate.text(text)
    max_new_tokens = validate.integer("max_new_tokens", max_new_tokens, 0, MAX_NEW_TOKENS)
    top_k = validate.integer("top_k", top_k, 1, 100)
    edits = [dict(e) for e in edits]
    if not 1 <= len(edits) <= MAX_EDITS:
        raise InvalidInput(f"give 1 to {MAX_EDITS} edits, got {len(edits)}")
    model = session.model
    norm = [_norm_edit(e) for e in edits]
    key = ("intervene", model.fingerprint["id"], text, _frozen(norm), max_new_tokens, top_k)
    hit = session.cached_run(key)
    if hit is not None:
        return hit
    tz = tokenize(model.tokenizer, text, model.context_length)
    ids = tz.token_ids

    def feature_source(name: str) -> Any:
        if features is None:
            raise InvalidInput(f"no features sources are served (asked for {name!r})")
        return features.source(name)

    ablate, patch = specs(model, ids, norm, feature_source)
    labels = [label_of(e) for e in norm]
    planned = plan(model, ablate, patch, (), ids)  # runs the reference forwards: may raise InvalidInput
    x = torch.as_tensor(ids, device=model.device)[None]
    forwards = 2 + 2 * max_new_tokens
    seconds = forwards * session.forward_seconds(x)
    label = token_labels_fn(model.tokenizer)

    def compute(pause: Any) -> InterventionResult:
        tick = ticker(pause)
        with torch.no_grad():
            with model_lock(model.hf):
                plain = model.hf(input_ids=x, use_cache=False).logits[0]
            tick(1, forwards)
            with edited(model, planned):
                changed = model.hf(input_ids=x, use_cache=False).logits[0]
            tick(2, forwards)
            deltas, kls = compare(plain, changed, ids)
            lp, lq = _log_probs(plain[-1]), _log_probs(changed[-1])
            k = min(top_k, int(lp.numel()))
            t1 = int(lp.argmax())
            top1 = {"id": t1, "token": label(t1), "plain_logp": float(lp[t1]), "edited_logp": float(lq[t1]),
                    "delta": float(lq[t1] - lp[t1])}  # fmt: skip
            plain_text = edited_text = ""
            if max_new_tokens:
                with model_lock(model.hf):
                    (g0,), _ = _generate(model, [ids], max_new_tokens, 1)
                tick(2 + max_new_tokens, forwards)
                with edited(model, planned):
                    (g1,), _ = _generate(model, [ids], max_new_tokens, 1)
                plain_text = model.tokenizer.decode(g0.tolist(), skip_special_tokens=False)
                edited_text = model.tokenizer.decode(g1.tolist(), skip_special_tokens=False)
            tick(forwards, forwards)
        return InterventionResult(
            tokens=list(tz.tokens), labels=labels, plain_top=top_table(lp, lq, k, label),
            edited_top=top_table(lq, lp, k, label), top1=top1, delta_logp=deltas, kl=kls,
            plain_text=plain_text, edited_text=edited_text, diff=word_diff(plain_text, edited_text),
            forwards=forwards,
        )  # fmt: skip

    def kept(r: InterventionResult) -> InterventionResult:
        from dataclasses import replace

        return replace(r, cached=True)

    return session.start_job(key, forwards, seconds, compute, kept=kept, name="lmpeek-intervene")
