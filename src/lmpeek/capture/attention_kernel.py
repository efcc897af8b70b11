"""Causal attention that also yields each query's attention entropy, without materialising [H, T, T].

Why this exists: eager attention (the only transformers implementation that exposes patterns) builds
the whole [B, H, T, T] score matrix and walks it several times; on this CPU it costs 1.3x the sdpa
forward at 512 tokens and 2.4x at 2048. Entropy needs every softmax weight, but not all at once:
going through query blocks keeps the working set in cache, skips the keys a causal block cannot see
(half the work), and reuses softmax's own exp pass for the entropy (H = log s - sum(e * (x - m)) / s
with e = exp(x - m), s = sum e), so no log over the pattern is needed.

It implements exactly the math of transformers' `eager_attention_forward` (scale, optional softcap,
additive mask, float32 softmax, weights @ V, grouped KV heads); `capture.hooks` uses it only for
modules and arguments it knows to be plain causal attention, and falls back to the model's own eager
function otherwise. The contract test compares the patterns with transformers' eager output on every
architecture.

Where no pattern is wanted and attention is plain causal (no softcap, no window hiding keys, the CPU,
no autograd), `fused_causal_attention` gets the output, and the entropy if asked, from torch's fused
flash kernel instead (`fused_applies` says where; capture.hooks.FUSED_ENTROPY says whether for the
entropy too: measured slower than the blocked kernel on this CPU).

Under autograd (grad enabled and an input that requires grad, as attribution runs it) every step is
out of place, so backward works through it; without, the same steps run in place to save memory
traffic. Both paths compute the same numbers.
"""

from __future__ import annotations

import math

import torch

# queries per block: the working set stays in cache and causal blocks skip the keys they cannot see;
# with the fused softmax, 32 was fastest here at 512 and 2,048 tokens, 1 and 2 threads
# (benchmarks/attention_kernel.py)
_BLOCK = 32
# additive masks hold finfo.min where attention is not allowed
_MASKED = torch.finfo(torch.float32).min / 2


def attention_entropy(pattern: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each query's attention distribution: pattern [..., Tq, Tk] -> [..., Tq], float32.
    Zero probabilities contribute 0 (x·log x -> 0), so masked keys are harmless."""
    p = pattern.float()
    return -torch.special.xlogy(p, p).sum(-1)


def _is_plain_causal(mask: torch.Tensor, offset: int) -> bool:
    """Whether an additive mask [B, 1, Tq, Tk] only hides future keys. Checked once per mask tensor
    (a forward passes the same mask object to every layer) and remembered on the tensor itself."""
    known = getattr(mask, "_lmpeek_plain_causal", None)
    if known is None:
        Tq, Tk = mask.shape[-2:]
        i = torch.arange(Tq, device=mask.device)[:, None] + offset
        future = torch.arange(Tk, device=mask.device)[None, :] > i
        known = bool(mask.shape[1] == 1 and torch.equal(mask < _MASKED, future.expand_as(mask)))
        mask._lmpeek_plain_causal = known  # type: ignore[attr-defined]
    return known


def causal_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
    softcap: float | None = None,
    want_pattern: bool = False,
    block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """query [B, H, Tq, d]; key, value [B, Hkv, Tk, d] (Tk >= Tq, the last Tq keys are the queries'
    own positions); mask additive [B, 1, Tq, Tk] or None (None means plain causal).

    Returns output [B, Tq, H, d] (eager's layout), entropy [B, H, Tq] in nats (float32), and the
    pattern [B, H, Tq, Tk] when `want_pattern` (else None).
    """
    B, H, Tq, d = query.shape
    Hkv, Tk = key.shape[1], key.shape[2]
    G = H // Hkv
    offset = Tk - Tq  # absolute position of query 0 (cached keys come first)
    grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if Tq == 1 and not want_pattern and not grad and (mask is None or _is_plain_causal(mask, offset)):
        return (*_one_query(query, key, value, scaling, softcap), None)  # a generation step
    # [B, Hkv, G, Tq, d]: query head h uses KV head h // G (transformers' repeat_kv order)
    q = query.reshape(B, Hkv, G, Tq, d)
    out = torch.empty(B, Hkv, G, Tq, value.shape[-1], dtype=query.dtype, device=query.device)
    entropy = torch.empty(B, Hkv, G, Tq, dtype=torch.float32, device=query.device)
    pattern = torch.zeros(B, Hkv, G, Tq, Tk, dtype=query.dtype, device=query.device) if want_pattern else None
    block = block or _BLOCK
    # contiguous once: transformers hands over transposed views, which each block's matmul would copy
    key, value = key.contiguous(), value.contiguous()
    k_t = key.transpose(-1, -2)  # [B, Hkv, d, Tk]
    # a power-of-two scale (head size 64: 1/8) commutes exactly with float rounding, so it can go on
    # the queries ([tq, d]) instead of each block's scores ([tq, Tk]): one pass less, same numbers
    exact_scale = math.frexp(scaling)[0] == 0.5
    if exact_scale:
        q = q * scaling
    if mask is not None and _is_plain_causal(mask, offset):
        mask = None  # only each block's diagonal tile needs masking: skip two full passes per block
    # rows with no visible key only happen with padding (a mask that hides a query's own position)
    padded = mask is not None and not grad and bool((mask.amax(-1) < _MASKED).any())
    for a in range(0, Tq, block):
        b = min(Tq, a + block)
        tq = b - a
        kv = offset + b  # keys after the block's last query are masked for every query in it
        qb = q[:, :, :, a:b].reshape(B, Hkv, G * tq, d)
        scores = torch.matmul(qb, k_t[..., :kv]).view(B, Hkv, G, tq, kv)
        if not exact_scale:
            scores = scores * scaling
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        if grad:
            e, scores = _weights_out_of_place(
                scores, None if mask is None else mask[:, :, None, a:b, :kv], kv
            )
            s = e.sum(-1, keepdim=True)
            entropy[:, :, :, a:b] = s[..., 0].log() - torch.linalg.vecdot(e, scores) / s[..., 0]
            p = (e / s).to(query.dtype)
        else:
            empty = None
            if mask is not None:
                mb = mask[:, :, None, a:b, :kv]
                scores += mb
                scores = scores.float()
                empty = (mb < _MASKED).all(-1, keepdim=True) if padded else None
            else:  # plain causal: the masked keys of this block are the upper triangle of its last tq keys
                tri = _future(tq, query.device)
                scores = scores.float()
                # finite, so that 0 weight × masked score below is 0 (not 0 × -inf = NaN)
                scores[..., kv - tq :].masked_fill_(tri, _MASKED)
            p, h = _softmax_entropy(scores)
            if empty is not None:
                # a query whose every key is masked (a pad token's, in a padded batch) gets weights 0 and
                # output 0, not uniform weights over keys it may not see
                p.masked_fill_(empty, 0.0)
                h.masked_fill_(empty[..., 0], 0.0)
            entropy[:, :, :, a:b] = h
            p = p.to(query.dtype)
        out[:, :, :, a:b] = torch.matmul(p.view(B, Hkv, G * tq, kv), value[:, :, :kv]).view(B, Hkv, G, tq, -1)
        if pattern is not None:
            pattern[:, :, :, a:b, :kv] = p
    return (
        out.reshape(B, H, Tq, -1).transpose(1, 2).contiguous(),
        entropy.reshape(B, H, Tq),
        None if pattern is None else pattern.reshape(B, H, Tq, Tk),
    )


_FUTURE: dict[tuple[int, torch.device], torch.Tensor] = {}


def _future(tq: int, device: torch.device) -> torch.Tensor:
    """[tq, tq] bool, True above the diagonal: the keys a block's queries may not see among their own
    positions. Made once per size: a fresh one per block (64 per layer at 2,048 tokens) cost ~3% of a
    trace on a busy machine, each tiny op paying the thread pool's wake-up."""
    key = (tq, device)
    tri = _FUTURE.get(key)
    if tri is None:
        tri = _FUTURE[key] = torch.ones(tq, tq, dtype=torch.bool, device=device).triu_(1)
    return tri


def _softmax_entropy(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax weights and each row's entropy (nats) from float32 scores [..., kv], in few passes:
    the scores are shifted by their row max in place (so x <= 0 and the entropy suffers no cancellation),
    torch's fused softmax gives p, and H = log s - sum p x with s = sum exp(x) = 1 / max p (the max
    key's weight is exp(0) / s). Masked keys hold a large finite negative score, so their weight is
    exactly 0 and 0 x score is 0. Four passes where exp, sum, division and entropy took seven."""
    scores -= scores.amax(-1, keepdim=True)
    p = torch.softmax(scores, -1)
    h = torch.linalg.vecdot(p, scores).neg_().sub_(p.amax(-1).log())
    return p, h


def _one_query(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`causal_attention` for one query that sees every key (a generation step after its cached keys),
    without autograd or a pattern: the loop's operations on the same operands in the same order, less
    those a 1x1 block makes no-ops (its causal triangle masks nothing) and the buffers one block does
    not need; so the same numbers, bit for bit (tests/capture/test_one_query_attention.py). Half the
    time of the loop per layer: a generation step is ~20 small ops a layer, each ~5 us here (30 layers
    of the default model: ~3 ms a token, 4% of its step)."""
    B, H, _, d = query.shape
    Hkv = key.shape[1]
    q = query.reshape(B, Hkv, H // Hkv, 1, d)
    exact_scale = math.frexp(scaling)[0] == 0.5
    if exact_scale:
        q = q * scaling
    scores = torch.matmul(q.reshape(B, Hkv, H // Hkv, d), key.contiguous().transpose(-1, -2))
    if not exact_scale:
        scores = scores * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    p, entropy = _softmax_entropy(scores.float())
    p = p.to(query.dtype)
    out = torch.matmul(p, value.contiguous())  # [B, Hkv, G, d]
    return out.view(B, H, 1, -1).transpose(1, 2), entropy.reshape(B, H, 1)


def fused_applies(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    softcap: float | None,
    sliding_window: int | None = None,
) -> bool:
    """Whether `fused_causal_attention` computes what `causal_attention` does: plain causal attention
    (no softcap, no window that hides keys, a mask that only hides future keys) on the CPU, without
    autograd, with every query seeing its own position and all keys before it: Tq == Tk (a whole
    sequence) or one query after cached keys (a generation step). torch's `is_causal` aligns the
    triangle top-left, so a block of several queries after cached keys must take the blocked kernel."""
    Tq, Tk = query.shape[-2], key.shape[-2]
    return (
        query.device.type == "cpu"
        and softcap is None
        and (sliding_window is None or Tk <= sliding_window)
        and (Tq == Tk or Tq == 1)
        and value.shape[-1] == query.shape[-1] == key.shape[-1]
        and query.dtype == key.dtype == value.dtype
        and query.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and not (
            torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
        )
        and (mask is None or (mask.dim() == 4 and _is_plain_causal(mask, Tk - Tq)))
    )


def fused_causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float, want_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What `causal_attention` returns without a pattern, through PyTorch's fused CPU flash attention
    (the kernel a plain sdpa forward runs), for the cases `fused_applies` accepts.

    Entropy needs no pattern: the fused kernel returns each query's log-sum-exp LSE = log sum_j exp(s_j)
    of the scaled scores s_j = scaling * q·k_j, and run a second time with the keys as values it returns
    E_p[k] = sum_j p_j k_j. With log p_j = s_j - LSE, H = -sum_j p_j log p_j = LSE - scaling * q·E_p[k].
    That second call (in float32 whatever the model's dtype) is the only cost over a plain forward. Grouped KV
    heads go in as they are (the kernel maps query head h to KV head h // G, transformers' order).
    Returns output [B, Tq, H, d] (eager's layout) and entropy [B, H, Tq] (float32) or None.
    """
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    causal = query.shape[-2] > 1  # one query after its cached keys sees all of them
    if not want_entropy:
        out, _ = op(query, key, value, is_causal=causal, scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    d = query.shape[-1]
    if query.dtype == torch.float32:
        # one call for both: values [V | K], and Q, K padded with d zeros (the kernel wants one head
        # size for all three; zeros leave every score as it was). It shares the scores and their exp
        # between output and E_p[k]: 8% less time than two calls at 2,048 tokens, same numbers.
        both, lse = op(
            torch.nn.functional.pad(query, (0, d)),
            torch.nn.functional.pad(key, (0, d)),
            torch.cat([value, key], -1),
            is_causal=causal,
            scale=scaling,
        )
        out, mean_k = both[..., :d], both[..., d:]
    else:  # the output in the model's dtype as its own call; entropy in float32 from a second one
        out, _ = op(query, key, value, is_causal=causal, scale=scaling)
        k = key.float()
        mean_k, lse = op(query.float(), k, k, is_causal=causal, scale=scaling)
    # rounding can leave a one-hot row (the first query) a hair below 0; entropy never is
    entropy = (lse - scaling * torch.linalg.vecdot(query.float(), mean_k)).clamp_min_(0.0)
    return out.transpose(1, 2).contiguous(), entropy


def _weights_out_of_place(
    scores: torch.Tensor, mask: torch.Tensor | None, kv: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The in-place steps of `causal_attention`'s loop, out of place for autograd: returns (e, x) with
    x = scores (+ mask) minus the row max (a constant for autograd: softmax and entropy do not depend
    on it), clamped at -80, and e = exp(x) with masked weights exactly 0."""
    tq = scores.shape[-2]
    if mask is not None:
        masked = mask < _MASKED
        scores = (scores + mask).float()
    else:
        masked = torch.zeros(tq, kv, dtype=torch.bool, device=scores.device)
        masked[:, kv - tq :] = torch.ones(tq, tq, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.float().masked_fill(masked, float("-inf"))
    x = (scores - scores.detach().amax(-1, keepdim=True)).clamp_min(-80.0)
    return x.exp().masked_fill(masked, 0.0), x
