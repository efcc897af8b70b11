"""Train a sparse autoencoder (TopK or JumpReLU) on one hook point of a model, on CPU.

    from lmpeek.features.train import train_sae
    r = train_sae(model, "blocks.15.hook_resid_post", "demo", 2048, k=32, tokens=1_000_000, out="sae")
    r.fvu, r.l0, r.dead, r.tokens          # measured on held-out text the SAE never trained on
    lmpeek.features.load("sae", model)     # the SAELens folder it wrote

Data. The corpus (corpus.py) is read once, in a fixed order, cut into sequences of `seq_len` tokens.
`forward_batch` sequences at a time run through the model (batched capture: the float32 hook values of
one forward); each sequence's first position is left out (the attention sink, whose norm dwarfs every
other token's). Activations are gathered into a buffer of about `buffer_tokens`, shuffled and trained
on in steps of `batch_size` tokens, then dropped: memory is flat in the corpus size. The last
`held_out_tokens` activations of the stream (whole sequences) are never trained on: a look-ahead of
that many tokens' ids holds them back, and at the end the FVU (sum |x - x̂|² / sum |x - mean x|²) and L0
are measured on them. `tokens` counts training activations; reading stops at tokens + held_out_tokens.

Input scaling. Activations are multiplied by a constant s, set from the first buffer so that the
mean squared norm is d_in (SAELens' "expected_average_only_in"), so that learning rates and
thresholds mean the same at every hook point. As SAELens does at the end of training, s is folded into
the written weights (W_enc * s, W_dec / s, b_dec / s; exact in real arithmetic, done in float64) and
cfg.json says normalize_activations "none": any SAELens reader gets the same features from raw
activations. s is kept in lmpeek_train.json.

TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): z = (x - b_dec) W_enc + b_enc,
f = the k largest z per token, relu'd; decoder rows unit-norm after every step, with the gradient
parallel to them projected out before it; b_dec starts at the mean of the first buffer, W_enc at
W_decᵀ; loss = normalised MSE (the batch's FVU) + AuxK / 32: the k_aux = d_in / 2 largest
pre-activations of the dead latents (none fired in the last `dead_tokens` tokens) reconstruct the
main reconstruction's error. Adam (eps 6.25e-10), gradients clipped to norm 1.

JumpReLU (Rajamanoharan et al. 2024, "Jumping ahead"): f = z · H(z - θ), θ = exp(log θ) per latent;
straight-through estimators with a rectangle kernel of width `bandwidth` give θ a gradient: ∂f/∂θ =
-(θ/ε) K((z - θ)/ε) and ∂H(z - θ)/∂θ = -(1/ε) K((z - θ)/ε). Loss = normalised MSE + λ · L0, λ
warmed up linearly over the first 10% of training. Adam (β1 = 0). Decoder rows unit-norm as above.
Adam moves log θ by about the learning rate per step, so in the few thousand steps of a CPU run λ
reaches only so far (tiny:llama, 400 steps: L0 92 of 128 at λ = 0, 55 at λ = 0.01 to 0.1); TopK,
whose L0 is k by construction, is the default.

Both: learning rate warmed up over the first 5% and decayed linearly to 0 over the last 20% (when
the length is known: with `tokens`). Defaults for CPU-sized runs (~1 M tokens, a few thousand steps):
256 tokens per step and a learning rate of 1e-3 / sqrt(n_features / 2048) (Gao's scaling in the
number of latents; the constant from the default model, 2,048 latents, 42k tokens of the demo corpus:
held-out FVU 0.36 against 0.56 with Gao's 2e-4 / sqrt(n / 2^14) at 1,024 tokens per step, a rate
meant for batches a hundred times larger). The SAE subtracts b_dec from its input (SAELens'
apply_b_dec_to_input).

Resume. Every `checkpoint_every` buffers, the SAE, Adam's state, the shuffling RNG's state, the firing
statistics and the corpus position (sequences trained on, with a hash chain of their ids to refuse a
changed corpus) are written to `out/checkpoint.pt` (atomically). Running the same training again after
an interruption (kill -9 included) resumes there and ends with the same weights, bit for bit, as an
uninterrupted run on the same machine. A finished folder is returned as it is.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmpeek import validate
from lmpeek.errors import InvalidInput
from lmpeek.features import points
from lmpeek.features.corpus import Sequence, documents, sequences
from lmpeek.features.corpus import inputs as corpus_inputs

ARCHS = ("topk", "jumprelu")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CHECKPOINT = "checkpoint.pt"
RESULT = "lmpeek_train.json"
FORMAT = 1
SAE_LENS_VERSION = "6.0.0"  # the cfg.json layout written (v6: model side under "metadata")
AUX_COEFF = 1 / 32  # Gao et al.'s AuxK weight
LR_WARMUP, LR_DECAY, SPARSITY_WARMUP = 0.05, 0.2, 0.1  # fractions of the planned training tokens
_UNPLANNED_STEPS = 100  # warm-ups, in steps, when the length is unknown (no `tokens`)


@dataclass(frozen=True)
class TrainProgress:
    """What a progress callback receives after every optimiser step."""

    tokens: int  # activations trained on so far
    total: int | None  # the training budget, when one was given
    steps: int
    checkpoints: int  # written in this run
    elapsed_s: float  # in this run (a resumed run restarts the clock)
    tokens_per_s: float  # in this run, model forwards included
    eta_s: float | None
    fvu: float  # of the last batch (training data, before the step)
    l0: float  # of the last batch


@dataclass(frozen=True)
class TrainResult:
    path: Path
    architecture: str
    n_features: int
    hook: str
    fvu: float  # on the held-out activations
    l0: float  # mean active features per held-out token
    dead: float  # fraction of features that never fired in the last dead_tokens training tokens
    tokens: int  # activations trained on
    held_out: int  # activations held out
    steps: int
    scaling_factor: float  # s: the SAE read s · x in training (folded into the written weights)
    sae: Sae | None = field(default=None, compare=False, repr=False)  # the trained float32 SAE


# --- the SAE ---------------------------------------------------------------------------------------------


class _JumpReLU(torch.autograd.Function):
    """z · H(z - θ); z gets H(z - θ), θ gets -(θ/ε) K((z - θ)/ε) with K the rectangle kernel."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return z * (z > theta)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        kernel = ((z - theta).abs() < ctx.eps / 2).to(g.dtype) / ctx.eps
        return g * (z > theta), (g * -theta * kernel).sum(0), None


class _Step(torch.autograd.Function):
    """H(z - θ); z gets nothing, θ gets -(1/ε) K((z - θ)/ε)."""

    @staticmethod
    def forward(ctx, z, theta, eps):
        ctx.save_for_backward(z, theta)
        ctx.eps = eps
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        kernel = ((z - theta).abs() < ctx.eps / 2).to(g.dtype) / ctx.eps
        return None, (g * -kernel).sum(0), None


class Sae(torch.nn.Module):
    """The SAE as trained: it reads s · x (`scale`); `encode_raw` / `decode_raw` take and give raw
    activations, as the written folder does."""

    def __init__(self, d_in: int, n: int, arch: str, k: int, threshold: float, bandwidth: float, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(n, d_in, generator=gen)
        w_dec /= w_dec.norm(dim=-1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w_dec)
        self.W_enc = torch.nn.Parameter(w_dec.T.contiguous())
        self.b_enc = torch.nn.Parameter(torch.zeros(n))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        if arch == "jumprelu":
            self.log_threshold = torch.nn.Parameter(torch.full((n,), math.log(threshold)))
        self.register_buffer("scale", torch.ones(()))
        self.arch, self.k, self.eps = arch, k, bandwidth

    def pre(self, xs: torch.Tensor) -> torch.Tensor:
        return (xs - self.b_dec) @ self.W_enc + self.b_enc

    def features(self, z: torch.Tensor) -> torch.Tensor:
        if self.arch == "topk":
            top = z.topk(self.k, dim=-1, sorted=False)
            return torch.zeros_like(z).scatter(-1, top.indices, top.values.relu())
        return _JumpReLU.apply(z, self.log_threshold.exp(), self.eps)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec + self.b_dec

    @torch.no_grad()
    def encode_raw(self, x: Any) -> torch.Tensor:
        """Features [T, n] of raw activations x [T, d_in] (float32), as in training."""
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        return self.features(self.pre(x * self.scale))

    @torch.no_grad()
    def decode_raw(self, f: torch.Tensor) -> torch.Tensor:
        return self.decode(f) / self.scale

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Remove the part of W_dec's gradient along each (unit) row: it would only change the norm."""
        g, w = self.W_dec.grad, self.W_dec
        if g is not None:
            g -= (g * w).sum(-1, keepdim=True) * w


def sae_tensors(sae: Sae, dtype: str = "float32") -> dict[str, torch.Tensor]:
    """The SAELens tensors of `sae` with its input scale folded in (float64, then `dtype`)."""
    s = sae.scale.double()
    out = {
        "W_enc": sae.W_enc.detach().double() * s,
        "b_enc": sae.b_enc.detach().double(),
        "W_dec": sae.W_dec.detach().double() / s,
        "b_dec": sae.b_dec.detach().double() / s,
    }
    if sae.arch == "jumprelu":
        out["threshold"] = sae.log_threshold.detach().exp().double()  # as training compares: float32 exp
    if dtype == "float16":  # numpy rounds float64 to float16 once; torch goes through float32 (twice)
        return {
            k: torch.from_numpy(np.ascontiguousarray(v.numpy().astype(np.float16))) for k, v in out.items()
        }
    return {k: v.to(DTYPES[dtype]).contiguous() for k, v in out.items()}


# --- the data stream -------------------------------------------------------------------------------------


def _chain(h: str, ids: np.ndarray) -> str:
    """The corpus hash after one more sequence (a chain, so it can be checkpointed)."""
    data = bytes.fromhex(h) + len(ids).to_bytes(8, "little") + np.asarray(ids, "<i4").tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class _Stream:
    """Sequences for training, holding back the last `held` activations (whole sequences) of the
    stream: a sequence is released only once at least `held` activations of later sequences have been
    read. Reading stops after `limit` activations (the last sequence cut to fit). Activations: positions
    after each sequence's first."""

    def __init__(self, seqs: Iterator[Sequence], held: int, limit: int | None):
        self.seqs, self.held, self.limit = seqs, held, limit
        self.queue: collections.deque[Sequence] = collections.deque()
        self.queued = self.read = 0

    def __iter__(self) -> Iterator[Sequence]:
        for seq in self.seqs:
            if self.limit is not None:
                room = self.limit - self.read
                if room < 1:
                    break
                seq = Sequence(seq.ids[: room + 1], seq.path, seq.part) if len(seq.ids) - 1 > room else seq
            n = len(seq.ids) - 1
            self.read += n
            self.queue.append(seq)
            self.queued += n
            while self.queued - (len(self.queue[0].ids) - 1) >= self.held:
                first = self.queue.popleft()
                self.queued -= len(first.ids) - 1
                yield first

    @property
    def held_out(self) -> list[Sequence]:
        return list(self.queue)


def _capture(model: Any, seqs: list[Sequence], hook: str, forward_batch: int) -> np.ndarray:
    """The hook's float32 activations of `seqs`, each sequence's first position left out: [N, d]."""
    from lmpeek.capture.batched import activations as capture

    acts = capture(model, [s.ids.tolist() for s in seqs], [hook], batch_size=forward_batch)
    return np.concatenate([a[hook][1:] for a in acts]).astype(np.float32, copy=False)


# --- training --------------------------------------------------------------------------------------------


def _factor(done: int, planned: int | None, batch: int) -> tuple[float, float]:
    """(learning-rate factor, sparsity-coefficient factor) after `done` training activations."""
    warm = LR_WARMUP * planned if planned else _UNPLANNED_STEPS * batch
    lr = min(1.0, (done + batch) / warm)
    if planned:
        lr *= min(1.0, max(0.0, (planned - done) / (LR_DECAY * planned)))
    sparse = min(1.0, done / (SPARSITY_WARMUP * planned if planned else 10 * _UNPLANNED_STEPS * batch))
    return lr, sparse


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    return ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum().clamp_min(1e-12)


@dataclass
class _State:
    """Everything a checkpoint holds besides the SAE and Adam."""

    seqs: int = 0  # sequences trained on (the corpus position)
    chain: str = "00" * 16
    tokens: int = 0
    steps: int = 0
    buffers: int = 0
    rng: str = ""  # the shuffling generator's state (JSON)
    fired: np.ndarray | None = None  # per feature: activations > 0 over all training tokens
    since: np.ndarray | None = None  # per feature: training tokens since it last fired


def _step(
    sae: Sae, opt: torch.optim.Optimizer, xs: torch.Tensor, st: _State, cfg: dict, lr: float, lam: float
):
    """One optimiser step on the scaled batch xs; updates the firing statistics; (fvu, l0) of the batch."""
    for group in opt.param_groups:
        group["lr"] = cfg["lr"] * lr
    z = sae.pre(xs)
    f = sae.features(z)
    x_hat = sae.decode(f)
    mse = _fvu(xs, x_hat)
    loss = mse
    active = f.detach() > 0
    if sae.arch == "topk":
        dead = torch.from_numpy(st.since >= cfg["dead_tokens"])
        n_dead = int(dead.sum())
        if n_dead:
            k_aux = min(cfg["k_aux"], n_dead)
            top = z.masked_fill(~dead, -torch.inf).topk(k_aux, dim=-1, sorted=False)
            f_aux = torch.zeros_like(z).scatter(-1, top.indices, top.values.relu())
            err = (xs - x_hat).detach()
            loss = loss + AUX_COEFF * _fvu(err, f_aux @ sae.W_dec)
    else:
        l0 = _Step.apply(z, sae.log_threshold.exp(), sae.eps).sum(-1).mean()
        loss = loss + cfg["sparsity_coefficient"] * lam * l0
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sae.project_decoder_grad()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    sae.normalise_decoder()
    counts = active.sum(0).numpy()
    st.fired += counts
    st.since += len(xs)
    st.since[counts > 0] = 0
    return float(mse.detach()), float(active.sum(-1).float().mean())


def _evaluate(sae: Sae, x: np.ndarray) -> tuple[float, float]:
    """(FVU, mean L0) of raw activations x [N, d], sums in float64."""
    err = var = 0.0
    l0 = 0
    mean = x.astype(np.float64).mean(0)
    for a in range(0, len(x), 4096):
        part = x[a : a + 4096]
        f = sae.encode_raw(part)
        x_hat = sae.decode_raw(f).double().numpy()
        err += float(((part - x_hat) ** 2).sum())
        var += float(((part - mean) ** 2).sum())
        l0 += int((f > 0).sum())
    return (err / var if var > 0 else float("inf")), l0 / max(len(x), 1)


# --- the folder ------------------------------------------------------------------------------------------


def _save_checkpoint(path: Path, sae: Sae, opt: torch.optim.Optimizer, st: _State, identity: dict) -> None:
    state = {
        "identity": json.dumps(identity, sort_keys=True),
        "sae": sae.state_dict(),
        "optimizer": opt.state_dict(),
        "progress": json.dumps(
            {k: getattr(st, k) for k in ("seqs", "chain", "tokens", "steps", "buffers", "rng")}
        ),
        "fired": torch.from_numpy(st.fired),
        "since": torch.from_numpy(st.since),
    }
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # a kill -9 leaves the old checkpoint or the new one, never half of one


def _load_checkpoint(path: Path, identity: dict) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # torch's own error types for a truncated or foreign file
        raise InvalidInput(f"{path} is not a readable checkpoint ({err}); remove it to start over") from None
    if json.loads(state["identity"]) != identity:
        raise InvalidInput(
            f"{path.parent} holds another training (its settings, model or corpus differ); remove it, choose "
            f"another --out or pass overwrite=True"
        )
    return state


def _cfg_json(model: Any, identity: dict, dtype: str) -> dict:
    arch = identity["architecture"]
    cfg = {
        "architecture": arch,
        "d_in": identity["d_in"],
        "d_sae": identity["n_features"],
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",  # the input scale is folded into the weights
        "reshape_activations": "none",
        "metadata": {
            "model_name": model.name,
            "hook_name": identity["hook"],
            "hook_head_index": None,
            # lmpeek runs Hugging Face weights as they are: TransformerLens must not centre them
            "model_from_pretrained_kwargs": {"center_writing_weights": False},
            "prepend_bos": True,
            "exclude_special_tokens": False,
            "context_size": identity["seq_len"],
            "seqpos_slice": [1, None],  # each sequence's first position was left out
            "dataset_path": ", ".join(identity["corpus"]),
            "sae_lens_version": SAE_LENS_VERSION,
            "sae_lens_training_version": None,
            "trained_with": "lmpeek",
        },
    }
    if arch == "topk":
        cfg.update(k=identity["k"], rescale_acts_by_decoder_norm=False)
    return cfg


def _write_folder(
    out: Path, model: Any, sae: Sae, st: _State, identity: dict, dtype: str, result: dict
) -> None:
    from safetensors.torch import save  # bytes, written as any file (save_file makes them owner-only)

    (out / "sae_weights.safetensors").write_bytes(save(sae_tensors(sae, dtype)))
    freq = st.fired / max(st.tokens, 1)
    sparsity = torch.from_numpy(np.log10(freq + 1e-10).astype(np.float32))
    (out / "sparsity.safetensors").write_bytes(save({"sparsity": sparsity}))
    (out / "cfg.json").write_text(json.dumps(_cfg_json(model, identity, dtype), indent=2) + "\n")
    (out / RESULT).write_text(json.dumps({"identity": identity, "result": result}, indent=2) + "\n")


_OURS = (
    "cfg.json",
    "sae_weights.safetensors",
    "sparsity.safetensors",
    RESULT,
    CHECKPOINT,
    CHECKPOINT + ".tmp",
)


def _prepare_out(out: Path, identity: dict, overwrite: bool) -> dict | None:
    """The output folder made ready; the stored result when it already holds this training, finished."""
    if out.exists() and not out.is_dir():
        raise InvalidInput(f"{out} is a file; --out names a folder to write the SAE into")
    if overwrite:
        for name in _OURS:
            (out / name).unlink(missing_ok=True)
    if (out / RESULT).is_file():
        done = json.loads((out / RESULT).read_text())
        if done.get("identity") != identity:
            raise InvalidInput(
                f"{out} holds another trained SAE (its settings, model or corpus differ); choose another "
                f"--out or pass overwrite=True"
            )
        return done["result"]
    if out.is_dir() and not (out / CHECKPOINT).is_file() and any(out.iterdir()):
        raise InvalidInput(f"{out} is not empty and holds no lmpeek training: choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    return None


# --- the API ---------------------------------------------------------------------------------------------


def _hook(model: Any, hook: Any) -> str:
    name = points.from_transformer_lens(hook, model.bound)
    shape = points.shape(model.bound, name)
    if len(shape) != 1:
        raise InvalidInput(f"{name} holds {list(shape)} per token: an SAE trains on one vector per token")
    return name


def train_sae(
    model: Any,
    hook: str,
    corpus: Any,
    n_features: int,
    *,
    arch: str = "topk",
    k: int = 32,
    tokens: int | None = None,
    batch_size: int = 256,
    lr: float | None = None,
    seq_len: int = 128,
    out: Any = "sae",
    seed: int = 0,
    held_out_tokens: int = 8192,
    checkpoint_every: int = 1,
    dtype: str = "float32",
    buffer_tokens: int = 32768,
    forward_batch: int = 8,
    sparsity_coefficient: float = 2e-3,
    bandwidth: float = 0.05,
    threshold: float = 0.1,
    dead_tokens: int = 50_000,
    progress: bool | Callable[[TrainProgress], Any] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train an SAE with `n_features` features on `hook` of `model` over `corpus` (see the module
    docstring) and write it as a SAELens folder `out`; returns the held-out FVU, L0 and more.

    arch: "topk" (k active features per token) or "jumprelu" (sparsity_coefficient: λ of the L0
    penalty; bandwidth: the kernel width ε; threshold: θ's start). tokens: activations to train on
    (default: the whole corpus); batch_size: tokens per step; buffer_tokens: activations shuffled
    together; forward_batch: sequences per forward; dead_tokens: a feature silent this long is dead
    (AuxK trains it); checkpoint_every: buffers between checkpoints; dtype: of the written weights
    (float32, float16, bfloat16); progress: a callback taking TrainProgress, or True for a bar. An
    existing `out` from the same training is resumed (or returned, when finished)."""
    from lmpeek import __version__
    from lmpeek.capture.trace import require_model

    require_model(model)
    hook = _hook(model, hook)
    d_in = points.shape(model.bound, hook)[0]
    if arch not in ARCHS:
        raise InvalidInput(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    n_features = validate.integer("n_features", n_features, 1, 1 << 24)
    k = validate.integer("k", k, 1, n_features) if arch == "topk" else None
    if tokens is not None:
        tokens = validate.integer("tokens", tokens, 1)
    batch_size = validate.integer("batch_size", batch_size, 1, 1 << 20)
    lr = 1e-3 / math.sqrt(n_features / 2048) if lr is None else validate.number("lr", lr, 0, 1, above=True)
    seq_len = validate.integer("seq_len", seq_len, 2, min(model.context_length or 1 << 20, 1 << 20))
    seed = validate.integer("seed", seed, 0, 2**32 - 1)
    held_out_tokens = validate.integer("held_out_tokens", held_out_tokens, 1)
    checkpoint_every = validate.integer("checkpoint_every", checkpoint_every, 1)
    if dtype not in DTYPES:
        raise InvalidInput(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    buffer_tokens = validate.integer("buffer_tokens", buffer_tokens, batch_size)
    forward_batch = validate.integer("forward_batch", forward_batch, 1, 4096)
    sparsity_coefficient = validate.number("sparsity_coefficient", sparsity_coefficient, 0)
    bandwidth = validate.number("bandwidth", bandwidth, 0, above=True)
    threshold = validate.number("threshold", threshold, 0, above=True)
    dead_tokens = validate.integer("dead_tokens", dead_tokens, 1)

    seqs = sequences(model.tokenizer, documents(corpus), seq_len)  # bad paths fail here
    out = Path(out).expanduser()
    identity = {
        "format": FORMAT,
        "model": {"name": model.name, "fingerprint": model.fingerprint},
        "hook": hook,
        "d_in": d_in,
        "corpus": corpus_inputs(corpus),
        "architecture": arch,
        "n_features": n_features,
        "k": k,
        "tokens": tokens,
        "batch_size": batch_size,
        "lr": lr,
        "seq_len": seq_len,
        "seed": seed,
        "held_out_tokens": held_out_tokens,
        "buffer_tokens": buffer_tokens,
        "forward_batch": forward_batch,
        "dead_tokens": dead_tokens,
        "k_aux": max(1, d_in // 2),
        "sparsity_coefficient": sparsity_coefficient if arch == "jumprelu" else None,
        "bandwidth": bandwidth if arch == "jumprelu" else None,
        "threshold": threshold if arch == "jumprelu" else None,
        "dtype": dtype,
        "lmpeek_version": __version__,
    }
    done = _prepare_out(out, identity, overwrite)
    if done is not None:
        return TrainResult(path=out, **done)

    sae = Sae(d_in, n_features, arch, k or 0, threshold, bandwidth, seed)
    betas, eps = ((0.9, 0.999), 6.25e-10) if arch == "topk" else ((0.0, 0.999), 1e-8)
    opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=betas, eps=eps)
    st = _State(fired=np.zeros(n_features, np.float64), since=np.zeros(n_features, np.int64))
    rng = np.random.default_rng(seed)
    saved = _load_checkpoint(out / CHECKPOINT, identity)
    if saved is not None:
        sae.load_state_dict(saved["sae"])
        opt.load_state_dict(saved["optimizer"])
        for key, value in json.loads(saved["progress"]).items():
            setattr(st, key, value)
        st.fired, st.since = saved["fired"].numpy().copy(), saved["since"].numpy().copy()
        rng.bit_generator.state = json.loads(st.rng)

    stream = _Stream(seqs, held_out_tokens, None if tokens is None else tokens + held_out_tokens)
    train = iter(stream)
    chain = "00" * 16
    for _ in range(st.seqs):  # the sequences already trained on: the corpus must not have changed
        seq = next(train, None)
        if seq is None:
            break
        chain = _chain(chain, seq.ids)
    if chain != st.chain:
        raise InvalidInput(
            f"{out}: the corpus differs from the one this training started on (its first {st.seqs} sequences "
            f"changed); remove {out / CHECKPOINT} or pass overwrite=True to start over"
        )

    bar = _Bar(tokens, st.tokens) if progress is True else None
    report = bar if bar is not None else (progress if callable(progress) else None)
    t0, run_tokens, checkpoints = time.perf_counter(), 0, 0
    try:
        while True:
            chunk, n = [], 0
            while n < buffer_tokens:
                seq = next(train, None)
                if seq is None:
                    break
                chunk.append(seq)
                n += len(seq.ids) - 1
            if not chunk:
                break
            x = torch.from_numpy(_capture(model, chunk, hook, forward_batch))
            if st.steps == 0:  # the first buffer sets the input scale and b_dec's start
                with torch.no_grad():
                    sae.scale.fill_(math.sqrt(d_in / float((x.double() ** 2).sum(-1).mean())))
                    sae.b_dec.copy_((x * sae.scale).mean(0))
            xs = x * sae.scale
            order = torch.from_numpy(rng.permutation(len(xs)))
            for idx in torch.tensor_split(order, max(1, round(len(xs) / batch_size))):
                lr_f, lam_f = _factor(st.tokens, tokens, batch_size)
                fvu, l0 = _step(sae, opt, xs[idx], st, identity, lr_f, lam_f)
                st.tokens += len(idx)
                run_tokens += len(idx)
                st.steps += 1
                if report is not None:
                    elapsed = time.perf_counter() - t0
                    rate = run_tokens / elapsed if elapsed > 0 else 0.0
                    eta = (tokens - st.tokens) / rate if tokens is not None and rate > 0 else None
                    report(
                        TrainProgress(st.tokens, tokens, st.steps, checkpoints, elapsed, rate, eta, fvu, l0)
                    )
            for seq in chunk:
                st.chain = _chain(st.chain, seq.ids)
            st.seqs += len(chunk)
            st.buffers += 1
            if st.buffers % checkpoint_every == 0:
                st.rng = json.dumps(rng.bit_generator.state)
                _save_checkpoint(out / CHECKPOINT, sae, opt, st, identity)
                checkpoints += 1
    finally:
        if bar is not None:
            bar.close()
    if st.tokens == 0:
        raise InvalidInput(
            f"the corpus is too small: nothing is left to train on after holding out {held_out_tokens:,} "
            f"tokens (give more text or a smaller held_out_tokens)"
        )
    held = stream.held_out
    if not held:
        raise InvalidInput("the corpus is too small: nothing is left to hold out for the evaluation")
    x_held = _capture(model, held, hook, forward_batch)
    fvu, l0 = _evaluate(sae, x_held)
    dead = float((st.since >= min(dead_tokens, st.tokens)).mean())
    result = {
        "architecture": arch,
        "n_features": n_features,
        "hook": hook,
        "fvu": fvu,
        "l0": l0,
        "dead": dead,
        "tokens": st.tokens,
        "held_out": len(x_held),
        "steps": st.steps,
        "scaling_factor": float(sae.scale),
    }
    _write_folder(out, model, sae, st, identity, dtype, result)
    (out / CHECKPOINT).unlink(missing_ok=True)
    return TrainResult(path=out, sae=sae, **result)


class _Bar:
    """A rich progress bar with tokens/s, the last batch's FVU and an ETA (the CLI's default)."""

    def __init__(self, total: int | None, done: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]sae"),
            BarColumn(),
            TextColumn("{task.completed:,} tokens"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[fit]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("train", total=total, completed=done, rate="", fit="")
        self.progress.start()

    def __call__(self, p: TrainProgress) -> None:
        fit = f"FVU {p.fvu:.3f} L0 {p.l0:.1f}"
        self.progress.update(self.task, completed=p.tokens, rate=f"{p.tokens_per_s:,.0f} tokens/s", fit=fit)

    def close(self) -> None:
        self.progress.stop()


def train_cli(
    model: Any,
    hook: str,
    corpus: Iterable[str],
    n_features: int,
    echo: Callable[[str], Any] = print,
    **options: Any,
) -> TrainResult:
    """What `lmpeek sae train` runs: train with a progress bar, say what was written."""
    corpus = [c if c == "demo" else Path(c) for c in corpus]  # the CLI's arguments are paths, never texts
    r = train_sae(model, hook, corpus, n_features, progress=True, **options)
    echo(
        f"{r.path}: {r.architecture} SAE, {r.n_features:,} features on {r.hook}, trained on {r.tokens:,} "
        f"tokens; held-out ({r.held_out:,} tokens) FVU {r.fvu:.4f}, L0 {r.l0:.1f}, dead {r.dead:.1%}"
    )
    return r
