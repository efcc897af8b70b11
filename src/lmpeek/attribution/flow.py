"""The information-flow graph of one prediction (Ferrando & Voita 2024, "Information Flow Routes", as
drawn by the LLM Transparency Tool), on plain Hugging Face models of every supported architecture.

**Sums.** Every residual stream vector of one forward is a sum of parts. For block l and token i:
- after attention (node A{l}_i): resid_mid_i = resid_pre_i + Σ_h Σ_{j≤i} a^h_ij · (v^h_j W_O^h) + b_O,
  where a is the attention pattern, v the value vectors (their bias already inside, counted once: the
  LLM Transparency Tool adds b_V a second time, its issue #35) and W_O^h head h's rows of the output
  projection. GQA heads read their KV head. Gemma 3 normalises the attention output before adding it:
  that norm, frozen at token i's scale, is a per-feature linear map, applied to every part.
- after the MLP (node I{l}_i): resid_post_i = resid_mid_i + mlp_out_i (the MLP output is node M{l}_i).
- parallel blocks (GPT-NeoX / Pythia): resid_post_i = resid_pre_i + Σ heads + b_O + mlp_out_i, one sum
  (there is no stream between attention and MLP); M{l}_i then reads I{l-1}_i.
The parts reconstruct each hooked vector to float rounding (tests: ‖Σ parts − whole‖ ≤ 1e-4‖whole‖ on
every tiny architecture).

**Importance** of part x_k in y = Σ_m x_m (proximity, L1 norm as LM-TT):
    prox_k = max(0, ‖y‖₁ − ‖y − x_k‖₁),    w_k = prox_k / Σ_m prox_m
(the residual and the bias are parts too; the bias belongs to no node, so its share leaves the graph).

**Pruning by cumulative influence.** The target node I{L-1}_t has influence 1. Walking down, a node's
incoming edge carries flow = influence(node) · w_edge; edges with flow ≥ threshold are kept and add
their flow to their source's influence. A node's influence is thus the share of the prediction that
reaches it along kept paths (products of local shares, summed over paths). Raising the threshold
only removes edges and nodes. The walk is lazy: a sum is decomposed only when its node was reached, so
no [T, T, H, D] tensor exists: one query token's parts are [H, T, D], one layer's value writes
[T, H, D], and pattern rows are recomputed from q and k (capture.attention_rows).

**Contrastive target** (A against B): every part also gets its direct effect on log p(A) − log p(B) =
logit_A − logit_B, its projection on u_t = (g ⊙ (W_U[A] − W_U[B])) / rms_t (centred for a LayerNorm),
the final norm frozen at that part's token t. At the target token this is exact direct logit
attribution (the parts of I{L-1}_t project to the log-prob difference, tested); elsewhere it is the
logit lens of the part. Edges keep their proximity weights; `contrast` < 0 marks edges that push
toward B.

Checked against: a dense implementation building every [T, T, H, D] part with the model's own o_proj
and the hooked attention pattern (the lazy graph equals it), a NumPy loop for the importances, and the
model's logits for the contrastive projection (tests/attribution/test_flow.py).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmpeek.errors import InvalidInput


@dataclass(frozen=True, order=True)
class Node:
    layer: int  # -1 for the embedding (the input of block 0)
    token: int
    kind: str  # "embed" | "attn" (resid_mid) | "mlp" (the MLP's output) | "resid" (resid_post)

    @property
    def id(self) -> str:
        """LM-TT's names: X_t (embedding), A{l}_t, M{l}_t, I{l}_t."""
        if self.kind == "embed":
            return f"X_{self.token}"
        return f"{'AMI'[('attn', 'mlp', 'resid').index(self.kind)]}{self.layer}_{self.token}"


@dataclass(frozen=True)
class Edge:
    src: Node
    dst: Node
    kind: str  # "head" | "mlp" | "residual"
    weight: float  # the part's share of dst's sum (proximity importance)
    flow: float  # weight × dst's influence: the share of the prediction this edge carries
    head: int | None = None
    contrast: float | None = None  # the part's direct effect on log p(A) − log p(B) (contrastive only)


@dataclass
class Graph:
    tokens: list[str]
    target: int  # the token whose prediction is explained
    threshold: float
    n_layers: int
    parallel: bool
    nodes: dict[Node, float]  # node -> influence (share of the prediction reaching it)
    edges: list[Edge]
    prediction: dict[str, Any]  # {"id", "token", "prob"} at the target
    contrastive: dict[str, Any] | None = None  # {"a", "b", "a_id", "b_id", "logprob_diff"}
    node_contrast: dict[Node, float] | None = None  # node vector's projection on u (contrastive only)
    computed: int = 0  # attention sums decomposed by the lazy walk

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


def to_json(graph: Graph) -> dict[str, Any]:
    """JSON-ready dicts for a view: {"tokens", "target", "threshold", "n_layers", "parallel",
    "prediction", "contrastive", "nodes": [{"id", "layer", "token", "kind", "influence", "contrast"?}],
    "edges": [{"source", "target", "kind", "head", "weight", "flow", "contrast"?}]}."""
    contrast = graph.node_contrast or {}
    nodes = []
    for n in sorted(graph.nodes):
        d: dict[str, Any] = {"id": n.id, "layer": n.layer, "token": n.token, "kind": n.kind,
                             "influence": float(graph.nodes[n])}  # fmt: skip
        if n in contrast:
            d["contrast"] = float(contrast[n])
        nodes.append(d)
    edges = []
    for e in graph.edges:
        d = {"source": e.src.id, "target": e.dst.id, "kind": e.kind, "head": e.head,
             "weight": float(e.weight), "flow": float(e.flow)}  # fmt: skip
        if e.contrast is not None:
            d["contrast"] = float(e.contrast)
        edges.append(d)
    return {
        "tokens": list(graph.tokens),
        "target": graph.target,
        "threshold": graph.threshold,
        "n_layers": graph.n_layers,
        "parallel": graph.parallel,
        "prediction": dict(graph.prediction),
        "contrastive": dict(graph.contrastive) if graph.contrastive else None,
        "nodes": nodes,
        "edges": edges,
    }


# --- importance ------------------------------------------------------------------------------


def proximity(parts: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    """Shares [K] of parts [K, D] in whole [D]: max(0, ‖y‖₁ − ‖y − x_k‖₁), normalised to sum to 1
    (all zeros when every proximity is 0, e.g. y = 0)."""
    return _normalise(_closeness(parts, whole))


def _closeness(parts: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
    # parts [..., D] -> [...]; float32 (rounding ~1e-7·‖y‖₁, far below any threshold) and one
    # temporary: the [H, T, D] head parts of a long text are the largest tensor the walk makes
    return (whole.abs().sum() - (parts - whole).abs_().sum(-1)).clamp_min_(0.0)


def _normalise(prox: torch.Tensor) -> torch.Tensor:
    total = prox.sum()
    return prox / total if total > 0 else prox


# --- the frozen norms -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Frozen:
    """A norm frozen at each token's scale: y_t = c(x) ⊙ scale_t + shift, c centring for a LayerNorm."""

    centers: bool
    scale: torch.Tensor  # [T, D]
    shift: torch.Tensor  # [D]

    def center(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True) if self.centers else x


@torch.inference_mode()
def _freeze(module: torch.nn.Module, x: torch.Tensor) -> _Frozen:
    """`module` (RMSNorm or LayerNorm, any gain convention) as a per-token affine map at inputs x [T, D].

    Gain and bias are read off the module itself (a ±1 probe, whose normalised form has no zero entry),
    so Gemma's (1 + w) gain needs no special case."""
    from lmpeek.models.adapters import norm_centers, norm_eps, normalized

    p = next(module.parameters(), None)
    dtype, device = (p.dtype, p.device) if p is not None else (torch.float32, x.device)
    D = x.shape[-1]
    probe = torch.ones(1, D)
    probe[:, 1::2] = -1.0
    shift = module.forward(torch.zeros(1, D, dtype=dtype, device=device)).float().cpu()[0]
    out = module.forward(probe.to(device, dtype)).float().cpu()[0]
    gain = (out - shift) / normalized(module, probe)[0].cpu()
    centers = norm_centers(module)
    xc = x - x.mean(-1, keepdim=True) if centers else x
    r = torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + norm_eps(module))
    return _Frozen(centers, r * gain, shift)


# --- one forward, decomposed on demand ----------------------------------------------------------


@dataclass
class _Layer:
    resid_pre: torch.Tensor  # [T, D]
    attn_out: torch.Tensor  # [T, D] what attention adds (after Gemma's post-norm)
    mlp_out: torch.Tensor  # [T, D]
    resid_post: torch.Tensor  # [T, D]
    q: torch.Tensor  # [T, H, dh] what the model scores with (after RoPE where it has RoPE)
    k: torch.Tensor  # [T, H_kv, dh]
    v: torch.Tensor  # [T, H_kv, dh] (with the value bias)
    post: _Frozen | None  # the norm between o_proj and the residual (Gemma 3), frozen


class Decomposition:
    """The parts of every residual sum of one forward of `model` on some tokens (see the module doc).

    `parts(layer, kind, token)` -> {"residual": [D], "heads": [H, token+1, D], "bias": [D], "mlp": [D]}
    (the keys that sum to that node: attn nodes have residual/heads/bias, resid nodes residual/mlp, or
    all four in a parallel block); `whole(layer, kind, token)` -> the hooked vector [D]."""

    def __init__(self, model: Any, token_ids: Sequence[int], tokens: list[str]) -> None:
        self.model = model
        b = model.bound
        self.n_layers, self.n_heads, self.parallel = b.n_layers, b.n_heads, b.parallel
        self.n_rep = b.n_heads // b.n_kv_heads
        self.tokens = tokens
        self.token_ids = list(map(int, token_ids))
        self.layers, self.logits = _capture(model, self.token_ids)
        self._vo: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (layer, vo [T, H, D], bias [D])

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def _values(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every token's per-head value written through o_proj, vo [T, H, D] (centred when the post-norm
        centres), and the o_proj bias [D]: one layer held at a time (the walk goes layer by layer)."""
        if self._vo is None or self._vo[0] != layer:
            vo, bias = _value_writes(self.model, layer, self.layers[layer].v, self.n_rep)
            post = self.layers[layer].post
            if post is not None:
                vo, bias = post.center(vo), post.center(bias)
            self._vo = (layer, vo, bias)
        return self._vo[1], self._vo[2]

    def pattern_row(self, layer: int, i: int) -> torch.Tensor:
        """Row i of layer `layer`'s pattern [H, i+1], recomputed from q and k as the model scores."""
        from lmpeek.capture.attention_rows import pattern_rows

        lay = self.layers[layer]
        q = lay.q[i : i + 1].transpose(0, 1)  # [H, 1, dh]
        k = lay.k[: i + 1].repeat_interleave(self.n_rep, dim=1).transpose(0, 1)  # [H, i+1, dh]
        return torch.from_numpy(pattern_rows(self.model, layer, q.numpy(), k.numpy()))[:, 0]

    def parts(self, layer: int, kind: str, i: int) -> dict[str, torch.Tensor]:
        lay = self.layers[layer]
        if kind == "resid" and not self.parallel:
            return {"residual": lay.resid_pre[i] + lay.attn_out[i], "mlp": lay.mlp_out[i]}
        if kind not in ("attn", "resid") or (kind == "attn" and self.parallel):
            raise ValueError(f"no sum for a {kind} node in {'a parallel' if self.parallel else 'this'} block")
        vo, bias = self._values(layer)
        heads = self.pattern_row(layer, i)[:, :, None] * vo[: i + 1].transpose(0, 1)  # [H, i+1, D]
        if lay.post is not None:
            heads = heads * lay.post.scale[i]
            bias = bias * lay.post.scale[i] + lay.post.shift
        out = {"residual": lay.resid_pre[i], "heads": heads, "bias": bias}
        if kind == "resid":
            out["mlp"] = lay.mlp_out[i]
        return out

    def whole(self, layer: int, kind: str, i: int) -> torch.Tensor:
        if kind == "embed":
            return self.layers[0].resid_pre[i]
        lay = self.layers[layer]
        return {
            "attn": lay.resid_pre[i] + lay.attn_out[i],
            "mlp": lay.mlp_out[i],
            "resid": lay.resid_post[i],
        }[kind]

    def shares(self, layer: int, kind: str, i: int) -> dict[str, torch.Tensor]:
        """Proximity shares of the parts of node (layer, i, kind): same keys as `parts`, heads [H, i+1]."""
        whole = self.whole(layer, kind, i)
        prox = {key: _closeness(p, whole) for key, p in self.parts(layer, kind, i).items()}
        total = sum(float(p.sum()) for p in prox.values())
        return {key: p / total if total > 0 else p for key, p in prox.items()}


@torch.inference_mode()
def _value_writes(model: Any, layer: int, v: torch.Tensor, n_rep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """v [T, H_kv, dh] -> (v^h_j W_O^h [T, H, D], b_O [D]). W_O is read off the model's own o_proj by
    applying it to the identity (less its bias), so Linear and GPT-2's Conv1D need no special case."""
    b = model.bound
    o_proj = b.block_module(layer, b.adapter.o_proj)
    p = next(o_proj.parameters())
    H, dh = b.n_heads, b.d_head
    bias = o_proj(torch.zeros(1, H * dh, dtype=p.dtype, device=p.device))[0]
    w_o = (o_proj(torch.eye(H * dh, dtype=p.dtype, device=p.device)) - bias).float().cpu()  # [H*dh, D]
    v = v.repeat_interleave(n_rep, dim=1)  # GQA: head h reads KV head h // n_rep
    vo = torch.einsum("thd,hde->the", v, w_o.view(H, dh, -1))
    return vo, bias.float().cpu()


@torch.inference_mode()
def _capture(model: Any, token_ids: list[int]) -> tuple[list[_Layer], torch.Tensor]:
    """One forward: per layer the residual vectors, q/k/v, and Gemma's post-attention norm frozen at
    each token (from hook_z through o_proj); also the logits [T, V]."""
    from lmpeek.capture.hooks import attach

    b = model.bound
    q_pt, k_pt = ("attn.hook_rot_q", "attn.hook_rot_k") if b.rotary_dims else ("attn.hook_q", "attn.hook_k")
    points = {"resid_pre": "hook_resid_pre", "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
              "resid_post": "hook_resid_post", "q": q_pt, "k": k_pt, "v": "attn.hook_v"}  # fmt: skip
    post_norm = b.adapter.attn_out.path != b.adapter.attn  # Gemma 3: a norm after o_proj
    if post_norm:
        points["z"] = "attn.hook_z"
    got: list[dict[str, torch.Tensor]] = [{} for _ in range(b.n_layers)]

    def keep(layer: int, key: str) -> Callable[[torch.Tensor], None]:
        def fn(x: torch.Tensor) -> None:
            got[layer][key] = x[0].detach().to("cpu", torch.float32).clone()

        return fn

    handlers = {f"blocks.{n}.{p}": keep(n, k) for n in range(b.n_layers) for k, p in points.items()}
    ids = torch.tensor([token_ids], dtype=torch.long, device=model.device)
    with attach(b, handlers):
        logits = model.hf(input_ids=ids, use_cache=False).logits[0].float().cpu()
    layers = []
    for layer, g in enumerate(got):
        post = None
        if post_norm:
            o_proj = b.block_module(layer, b.adapter.o_proj)
            p = next(o_proj.parameters())
            o_out = o_proj(g.pop("z").flatten(1).to(p.device, p.dtype)).float().cpu()
            post = _freeze(b.block_module(layer, b.adapter.attn_out.path), o_out)
        layers.append(_Layer(**g, post=post))
    return layers, logits


# --- the walk -----------------------------------------------------------------------------------

Shares = Callable[[int, str, int], dict[str, torch.Tensor]]


def walk(
    shares: Shares,
    n_layers: int,
    target: int,
    threshold: float,
    parallel: bool,
    project: Shares | None = None,
) -> tuple[dict[Node, float], list[Edge], int]:
    """Prune by cumulative influence from node I{n_layers-1}_target down (see the module doc).

    `shares(layer, kind, token)` gives a node's part shares (as `Decomposition.shares`); it is called
    only for nodes already reached, which is what makes the walk lazy. `project`, with the same
    signature, gives each part's contrastive projection. Returns (influence per node, kept edges, how
    many sums were decomposed)."""
    top = Node(n_layers - 1, target, "resid")
    infl: dict[Node, float] = {top: 1.0}
    edges: list[Edge] = []
    mlp_contrast: dict[Node, float] = {}  # an MLP node's output projected, for its input edge
    calls = 0

    def give(src: Node, dst: Node, kind: str, w: float, head: int | None = None, c: Any = None) -> None:
        f = infl[dst] * w
        if f > 0 and f >= threshold:
            infl[src] = infl.get(src, 0.0) + f
            edges.append(Edge(src, dst, kind, w, f, head, None if c is None else float(c)))

    def reached(layer: int, kind: str) -> list[int]:
        return sorted(n.token for n in infl if n.layer == layer and n.kind == kind)

    def spread(
        dst: Node, sh: dict[str, torch.Tensor], pr: dict[str, torch.Tensor] | None, back: Callable
    ) -> None:
        # residual / heads / mlp parts of dst's sum to their source nodes; the bias has no source
        layer, i = dst.layer, dst.token
        give(back(i) if dst.kind == "attn" or parallel else Node(layer, i, "attn"), dst, "residual",
             float(sh["residual"]), c=pr and pr["residual"])  # fmt: skip
        if "mlp" in sh:
            if pr is not None:
                mlp_contrast[Node(layer, i, "mlp")] = float(pr["mlp"])
            give(Node(layer, i, "mlp"), dst, "mlp", float(sh["mlp"]), c=pr and pr["mlp"])
        if "heads" in sh:
            w = sh["heads"]
            keep = (w * infl[dst] >= threshold) & (w > 0)
            for h, j in keep.nonzero().tolist():  # only the survivors leave tensor land
                give(back(j), dst, "head", float(w[h, j]), head=h, c=pr and pr["heads"][h, j])

    for layer in range(n_layers - 1, -1, -1):

        def back(j: int, layer: int = layer) -> Node:
            return Node(layer - 1, j, "resid") if layer else Node(-1, j, "embed")

        for i in reached(layer, "resid"):
            node = Node(layer, i, "resid")
            calls += int(parallel)
            spread(node, shares(layer, "resid", i), project(layer, "resid", i) if project else None, back)
        for i in reached(layer, "mlp"):
            node = Node(layer, i, "mlp")
            src = back(i) if parallel else Node(layer, i, "attn")
            give(src, node, "mlp", 1.0, c=mlp_contrast.get(node))  # the MLP reads all of its input node
        if not parallel:
            for i in reached(layer, "attn"):
                node = Node(layer, i, "attn")
                calls += 1
                spread(node, shares(layer, "attn", i), project(layer, "attn", i) if project else None, back)
    return infl, edges, calls


# --- the public entry point -------------------------------------------------------------------


def _position(token: Any, T: int) -> int:
    if not isinstance(token, numbers.Integral) or isinstance(token, bool) or not -T <= token < T:
        raise InvalidInput(
            f"token {token!r} is out of range: the text has {T} token{'s' * (T != 1)} "
            f"(use 0..{T - 1} or -{T}..-1)"
        )
    return int(token) % T


def _token_id(model: Any, value: Any, what: str) -> int:
    from lmpeek.capture.trace import vocab_size

    V = vocab_size(model)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if not 0 <= value < V:
            raise InvalidInput(f"contrastive {what} token id must be in [0, {V}), got {value}")
        return int(value)
    if isinstance(value, str) and value:
        ids = model.tokenizer(value, add_special_tokens=False)["input_ids"]
        if ids:
            return int(ids[0])
    raise InvalidInput(f"contrastive {what} must be a token (a non-empty str or a token id), got {value!r}")


def _contrast_pair(model: Any, contrastive: Any, top: int) -> tuple[int, int]:
    """(A, B) from `contrastive`: a pair (A, B), or B alone (A = the model's top prediction)."""
    if isinstance(contrastive, (tuple, list)):
        if len(contrastive) != 2:
            raise InvalidInput(f"contrastive must be B or a pair (A, B), got {len(contrastive)} items")
        a, b = (_token_id(model, v, w) for v, w in zip(contrastive, ("A", "B"), strict=True))
    else:
        a, b = top, _token_id(model, contrastive, "B")
    if a == b:
        raise InvalidInput("contrastive A and B are the same token: pick another B")
    return a, b


class _Projection:
    """Each part's direct effect on log p(A) − log p(B) through the final norm frozen at its token."""

    def __init__(self, dec: Decomposition, a: int, b: int) -> None:
        bound = dec.model.bound
        final = bound.module(bound.adapter.final_norm)
        unembed = bound.module(bound.adapter.unembed)
        frozen = _freeze(final, dec.layers[-1].resid_post)
        with torch.inference_mode():
            w = unembed.weight.float().cpu()
            diff = w[a] - w[b]
            bias = getattr(unembed, "bias", None)
            db = 0.0 if bias is None else float(bias[a] - bias[b])
        self.u = frozen.center(frozen.scale * diff)  # [T, D]: c(x)·v = x·c(v)
        self.const = float(frozen.shift @ diff) + db
        self.dec = dec

    def __call__(self, layer: int, kind: str, i: int) -> dict[str, torch.Tensor]:
        return {k: p @ self.u[i] for k, p in self.dec.parts(layer, kind, i).items()}

    def node(self, n: Node) -> float:
        return float(self.dec.whole(n.layer, n.kind, n.token) @ self.u[n.token])


def decompose(model: Any, text: str | Sequence[int]) -> Decomposition:
    """One forward of `model` (from lmpeek.load / lmpeek.wrap) on `text` (or token ids), ready to be
    split into parts (`Decomposition.parts`) and shares (`Decomposition.shares`)."""
    from lmpeek.capture.tokens import from_ids, tokenize
    from lmpeek.capture.trace import require_model, vocab_size

    require_model(model)
    if isinstance(text, str):
        tok = tokenize(model.tokenizer, text, model.context_length)
    else:
        tok = from_ids(model.tokenizer, text, model.context_length, vocab_size(model))
    return Decomposition(model, tok.token_ids.tolist(), tok.tokens)


def flow(
    model: Any,
    text: str | Sequence[int],
    token: int = -1,
    threshold: float = 0.04,
    contrastive: Any = None,
) -> Graph:
    """The information-flow graph of the prediction made at position `token` (default: the last).

    `threshold`: the smallest share of the prediction an edge must carry to be kept (LM-TT's slider:
    0.01..0.10, default 0.04). `contrastive`: B, or a pair (A, B), as strings (first token) or ids;
    edges then also carry their direct effect on log p(A) − log p(B) (negative: toward B); A defaults
    to the top prediction. Bad input raises InvalidInput with a one-line message."""
    from lmpeek import validate
    from lmpeek.capture.tokens import from_ids, tokenize
    from lmpeek.capture.trace import require_model, vocab_size

    require_model(model)
    threshold = validate.number("threshold", threshold, 0.0, 1.0)
    if isinstance(text, str):
        tok = tokenize(model.tokenizer, text, model.context_length)
    else:
        tok = from_ids(model.tokenizer, text, model.context_length, vocab_size(model))
    target = _position(token, len(tok.token_ids))
    return explain(Decomposition(model, tok.token_ids.tolist(), tok.tokens), target, threshold, contrastive)


def _memoised(fn: Shares, memo: dict[tuple[int, str, int], dict[str, torch.Tensor]]) -> Shares:
    def get(layer: int, kind: str, i: int) -> dict[str, torch.Tensor]:
        key = (layer, kind, i)
        if key not in memo:
            memo[key] = fn(layer, kind, i)
        return memo[key]

    return get


def explain(
    dec: Decomposition,
    target: int,
    threshold: float = 0.04,
    contrastive: Any = None,
    memo: dict[Any, Any] | None = None,
) -> Graph:
    """`flow`'s graph from a Decomposition already made (position `target` in 0..T-1). `memo`: a dict
    kept by the caller between calls on the same `dec` (the server's Session): each node's shares and
    each contrast pair's projections are then computed once, so another threshold or target re-walks
    without decomposing a sum twice (same numbers: the parts do not depend on the target)."""
    from lmpeek import validate
    from lmpeek.capture.tokens import token_labels_fn

    threshold = validate.number("threshold", threshold, 0.0, 1.0)
    target = _position(target, dec.n_tokens)
    model = dec.model
    logp = torch.log_softmax(dec.logits[target].double(), -1)
    top = int(logp.argmax())
    label = token_labels_fn(model.tokenizer)
    prediction = {"id": top, "token": label(top), "prob": float(logp[top].exp())}
    shares: Shares = dec.shares if memo is None else _memoised(dec.shares, memo.setdefault("shares", {}))
    project, info, projection = None, None, None
    if contrastive is not None:
        a, b = _contrast_pair(model, contrastive, top)
        if memo is None:
            projection = _Projection(dec, a, b)
            project = projection
        else:
            if ("projection", a, b) not in memo:
                memo[("projection", a, b)] = _Projection(dec, a, b)
            projection = memo[("projection", a, b)]
            project = _memoised(projection, memo.setdefault(("project", a, b), {}))
        info = {"a": label(a), "b": label(b), "a_id": a, "b_id": b, "logprob_diff": float(logp[a] - logp[b])}
    infl, edges, calls = walk(shares, dec.n_layers, target, threshold, dec.parallel, project)
    return Graph(
        tokens=list(dec.tokens),
        target=target,
        threshold=threshold,
        n_layers=dec.n_layers,
        parallel=dec.parallel,
        nodes=infl,
        edges=edges,
        prediction=prediction,
        contrastive=info,
        node_contrast={n: projection.node(n) for n in infl} if projection else None,
        computed=calls,
    )
