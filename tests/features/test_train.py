"""SAE training (lmpeek.features.train) on tiny:llama over the bundled sample texts.

Checked against independent computations: the held-out FVU and L0 recomputed through lmpeek's SAELens
reader on a held-out set found here (the stream's last whole sequences), the written folder's features
against the float64 reference formulas of tests/features/saes.py applied to the trainer's own
(unfolded) parameters, float16 weights against the rounded float64 fold. Resuming after an exception
and after a real kill -9 gives the same weights, bit for bit, as one uninterrupted run.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner

import lmpeek
from lmpeek import features
from lmpeek.capture.batched import activations as capture
from lmpeek.errors import InvalidInput
from lmpeek.features.corpus import documents, sequences
from lmpeek.features.train import CHECKPOINT, Sae, _JumpReLU, _State, _Step, _step, train_sae
from tests.features.saes import assert_close, ref_decode, ref_encode

HOOK = "blocks.1.hook_resid_post"
N, K = 256, 16
OPTS = dict(seq_len=48, batch_size=64, buffer_tokens=768, held_out_tokens=400, lr=3e-3, seed=3,
            dead_tokens=600, checkpoint_every=1)  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The bundled sample texts, twice (the tiny model's residual stream is mostly its random token
    embeddings: a second pass gives the SAE enough steps to learn them)."""
    root = tmp_path_factory.mktemp("corpus")
    texts = pathlib.Path(lmpeek.__file__).parent / "samples" / "texts"
    for copy in ("a", "b"):
        shutil.copytree(texts, root / copy)
    return root


@pytest.fixture(scope="module")
def topk(tmp_path_factory, llama, corpus):
    out = tmp_path_factory.mktemp("topk") / "sae"
    return train_sae(llama, HOOK, corpus, N, k=K, out=out, **OPTS)


def held_out_acts(model, corpus, held: int, seq_len: int, tokens: int | None = None) -> np.ndarray:
    """The last whole sequences holding at least `held` activations (first positions left out) of the
    corpus, or of its first tokens + held activations (the last sequence read cut to fit), through
    an unbatched capture."""
    ids = [s.ids for s in sequences(model.tokenizer, documents(corpus), seq_len)]
    if tokens is not None:
        kept, n = [], 0
        for seq in ids:
            if n >= tokens + held:
                break
            kept.append(seq[: tokens + held - n + 1])
            n += len(kept[-1]) - 1
        ids = kept
    tail, n = [], 0
    while n < held:
        tail.insert(0, ids.pop())
        n += len(tail[0]) - 1
    return np.concatenate([capture(model, [s.tolist()], [HOOK])[0][HOOK][1:] for s in tail])


def params(result) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in result.sae.state_dict().items()}


def fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


def test_topk_learns_and_the_folder_reads_back(llama, corpus, topk):
    assert topk.fvu < 0.35 and topk.l0 == K and topk.tokens > 4000 and topk.dead < 0.5
    x = held_out_acts(llama, corpus, OPTS["held_out_tokens"], OPTS["seq_len"])
    assert topk.held_out == len(x)
    sae = features.load(topk.path, llama)  # the hook-parity check passes: no warning
    assert sae.cfg.architecture == "topk" and sae.cfg.k == K and sae.hooks == (HOOK,)
    assert sae.cfg.normalize_activations == "none" and sae.n_features == N
    target, recon, f = sae.reconstruct({HOOK: x})
    assert fvu(target, recon) == pytest.approx(topk.fvu, rel=1e-4)
    assert (f > 0).sum(-1).tolist() == [K] * len(x)
    # the reader's features equal the trainer's, and the float64 reference on the unfolded parameters
    assert_close(f, topk.sae.encode_raw(x).numpy().astype(np.float64), 1e-6, "reader vs trainer")
    p, s = params(topk), topk.scaling_factor
    want = ref_encode("topk", x.astype(np.float64) * s, p, k=K)
    assert_close(f, want, 1e-5, "reader vs reference")
    assert_close(recon, ref_decode(want, p) / s, 1e-5, "decode")
    cfg = json.loads((topk.path / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["metadata"]["sae_lens_version"].startswith("6.")
    assert cfg["metadata"]["model_from_pretrained_kwargs"] == {"center_writing_weights": False}
    # unit-norm decoder rows (before folding), the scale makes the mean squared norm d_in
    assert np.allclose(np.linalg.norm(p["W_dec"], axis=-1), 1, atol=1e-5)
    assert 0.5 < float(((x.astype(np.float64) * s) ** 2).sum(-1).mean()) / x.shape[1] < 2
    assert not (topk.path / CHECKPOINT).exists()


def test_finished_folder_is_returned_and_others_refused(llama, corpus, topk, tmp_path):
    again = train_sae(llama, HOOK, corpus, N, k=K, out=topk.path, **OPTS)
    assert again.sae is None and again.fvu == topk.fvu and again.steps == topk.steps
    with pytest.raises(InvalidInput, match="another trained SAE") as err:
        train_sae(llama, HOOK, corpus, N, k=K + 1, out=topk.path, **OPTS)
    assert "\n" not in str(err.value)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not empty"):
        train_sae(llama, HOOK, corpus, N, k=K, out=tmp_path / "other", **OPTS)
    with pytest.raises(InvalidInput, match="too small"):
        train_sae(llama, HOOK, "A short text.", N, k=K, out=tmp_path / "small", **OPTS)
    for bad, match in [
        (dict(hook="blocks.7.hook_resid_post"), "does not exist"),
        (dict(hook="blocks.0.attn.hook_z"), "one vector per token"),
        (dict(k=N + 1), "k must be"),
        (dict(arch="relu"), "arch must be"),
        (dict(dtype="int8"), "dtype must be"),
    ]:
        args = {"hook": HOOK, "k": K, **bad}
        with pytest.raises(InvalidInput, match=match):
            train_sae(llama, args.pop("hook"), corpus, N, out=tmp_path / "bad", **args)


def test_float16_weights_are_the_rounded_fold(llama, corpus, tmp_path):
    r = train_sae(llama, HOOK, corpus, 64, k=4, tokens=1500, out=tmp_path / "f16", dtype="float16",
                  **{**OPTS, "held_out_tokens": 200})  # fmt: skip
    got = load_file(str(r.path / "sae_weights.safetensors"))
    p, s = params(r), r.scaling_factor
    want = {"W_enc": p["W_enc"] * np.float64(s), "b_enc": p["b_enc"].astype(np.float64),
            "W_dec": p["W_dec"] / np.float64(s), "b_dec": p["b_dec"] / np.float64(s)}  # fmt: skip
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert got[name].dtype == np.float16
        assert np.array_equal(got[name], value.astype(np.float16)), name
    x = held_out_acts(llama, corpus, 200, OPTS["seq_len"], tokens=1500)
    assert r.held_out == len(x)
    f = features.load(r.path, llama, check=False).encode({HOOK: x})
    rounded = {k: v.astype(np.float32) for k, v in got.items()}
    assert_close(f, ref_encode("topk", x, rounded, k=4), 1e-5, "float16 folder")
    assert json.loads((r.path / "cfg.json").read_text())["dtype"] == "float16"


def test_jumprelu_trains_and_reads_back(llama, corpus, tmp_path):
    r = train_sae(llama, HOOK, corpus, 128, arch="jumprelu", tokens=26000, sparsity_coefficient=1e-2,
                  out=tmp_path / "jr", **OPTS)  # fmt: skip
    assert r.fvu < 0.3 and 0 < r.l0 < 64
    x = held_out_acts(llama, corpus, OPTS["held_out_tokens"], OPTS["seq_len"], tokens=26000)
    assert r.held_out == len(x)
    sae = features.load(r.path, llama)
    target, recon, f = sae.reconstruct({HOOK: x})
    assert fvu(target, recon) == pytest.approx(r.fvu, rel=1e-4)
    assert float((f > 0).sum(-1).mean()) == pytest.approx(r.l0, abs=0.05)
    p, s = params(r), r.scaling_factor
    assert np.allclose(sae.w["threshold"].numpy(), np.exp(p["log_threshold"]), rtol=1e-6)
    assert_close(f, r.sae.encode_raw(x).numpy().astype(np.float64), 1e-6, "reader vs trainer")
    want = ref_encode("jumprelu", x.astype(np.float64) * s, {**p, "threshold": np.exp(p["log_threshold"])})
    assert_close(f, want, 1e-5, "reader vs reference")


def test_jumprelu_pseudo_derivatives():
    """Rajamanoharan et al.'s straight-through estimators, against the formulas written out: with
    K(u) = 1[|u| < 1/2], d/dθ [z H(z - θ)] = -(θ/ε) K((z - θ)/ε) and d/dθ H(z - θ) = -(1/ε) K(...)."""
    z = torch.tensor([[0.50, 0.96, 1.00, 1.04, 2.0], [0.97, 1.5, 0.2, 1.01, -1.0]], requires_grad=True)
    theta = torch.tensor([1.0, 1.0, 0.99, 1.0, 1.9], requires_grad=True)
    eps = 0.1
    g = torch.arange(10.0).reshape(2, 5) + 1
    (_JumpReLU.apply(z, theta, eps) * g).sum().backward()
    zz, th = z.detach().numpy(), theta.detach().numpy()
    near = (np.abs(zz - th) < eps / 2) / eps
    assert np.allclose(z.grad.numpy(), g.numpy() * (zz > th))
    assert np.allclose(theta.grad.numpy(), (g.numpy() * -th * near).sum(0))
    z.grad = theta.grad = None
    (_Step.apply(z, theta, eps) * g).sum().backward()
    assert z.grad is None
    assert np.allclose(theta.grad.numpy(), (g.numpy() * -near).sum(0))


def test_auxk_trains_dead_latents_only_through_the_aux_loss():
    """A latent that fires nowhere in the batch gets an encoder gradient only from AuxK, and only once
    it is dead (silent for dead_tokens)."""
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))  # 4 tokens × k=2: most are quiet
    changed = []
    for since in (0, 10**6):
        sae = Sae(16, 32, "topk", 2, 0.1, 0.05, seed=1)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
        st = _State(fired=np.zeros(32), since=np.full(32, since, np.int64))
        quiet = (sae.features(sae.pre(x)) > 0).sum(0) == 0
        assert quiet.any()
        before = sae.W_enc.detach().clone()
        _step(sae, opt, x, st, {"lr": 1e-2, "dead_tokens": 1000, "k_aux": 8}, 1.0, 1.0)
        changed.append((sae.W_enc.detach() != before)[:, quiet].any(0))
        assert (st.since[~quiet.numpy()] == 0).all() and (st.fired[quiet.numpy()] == 0).all()
    assert not changed[0].any() and changed[1].any()


class Stop(Exception):
    pass


def test_resume_after_an_exception_equals_an_uninterrupted_run(llama, corpus, topk, tmp_path):
    out = tmp_path / "sae"
    seen = []

    def fail(p):
        seen.append(p)
        if p.checkpoints == 2 and p.steps % 3 == 0:  # in the third buffer, after two checkpoints
            raise Stop

    with pytest.raises(Stop):
        train_sae(llama, HOOK, corpus, N, k=K, out=out, progress=fail, **OPTS)
    assert (out / CHECKPOINT).is_file() and not (out / "cfg.json").exists()
    resumed = []
    r = train_sae(llama, HOOK, corpus, N, k=K, out=out, progress=resumed.append, **OPTS)
    assert resumed[0].tokens > seen[-1].tokens - OPTS["buffer_tokens"] * 1.2  # it did not start over
    assert (out / "sae_weights.safetensors").read_bytes() == (
        topk.path / "sae_weights.safetensors"
    ).read_bytes()
    assert (r.fvu, r.l0, r.dead, r.tokens, r.steps) == (topk.fvu, topk.l0, topk.dead, topk.tokens, topk.steps)


def test_kill_9_then_resume(llama, corpus, tmp_path):
    """A real SIGKILL mid-buffer after a checkpoint, then the same training resumed (here): the weights
    equal an uninterrupted run's, bit for bit."""
    small = {**OPTS, "tokens": 3000}
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads({torch.get_num_threads()})  # the same float rounding as this process
        import lmpeek
        from lmpeek.features.train import train_sae
        model = lmpeek.load("tiny:llama")
        def kill(p):
            if p.checkpoints == 1 and p.steps % 4 == 0:
                os.kill(os.getpid(), signal.SIGKILL)
        train_sae(model, {HOOK!r}, {str(corpus)!r}, {N}, k={K}, out={str(out)!r}, progress=kill, **{small!r})
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert (out / CHECKPOINT).is_file() and not (out / "cfg.json").exists()
    resumed = []
    r = train_sae(llama, HOOK, corpus, N, k=K, out=out, progress=resumed.append, **small)
    assert resumed[0].steps > 12  # from the checkpoint after the first buffer
    whole = train_sae(llama, HOOK, corpus, N, k=K, out=tmp_path / "whole", **small)
    weights = "sae_weights.safetensors"
    assert (out / weights).read_bytes() == (whole.path / weights).read_bytes()
    assert (r.fvu, r.l0, r.tokens, r.steps) == (whole.fvu, whole.l0, whole.tokens, whole.steps)


def test_cli_trains_what_the_api_trains(llama, corpus, tmp_path):
    from lmpeek.cli import app

    runner = CliRunner()
    args = ["sae", "train", "-m", "tiny:llama", "--hook", HOOK, "-c", str(corpus), "--features", "64",
            "--k", "4", "--tokens", "1200", "--held-out", "200", "--batch-size", "64",
            "--seq-len", "48"]  # fmt: skip
    r = runner.invoke(app, [*args, "-o", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert "held-out" in r.output and "FVU" in r.output
    api = train_sae(llama, HOOK, corpus, 64, k=4, tokens=1200, held_out_tokens=200, batch_size=64, seq_len=48,
                    out=tmp_path / "api")  # fmt: skip
    got = (tmp_path / "cli" / "sae_weights.safetensors").read_bytes()
    assert got == (api.path / "sae_weights.safetensors").read_bytes()
    for extra, message in [
        (["--hook", "blocks.9.hook_resid_post"], "does not exist"),
        (["--hook", HOOK, "--k", "99"], "k must be"),
        (["--hook", HOOK, "--arch", "relu"], "arch must be"),
    ]:
        r = runner.invoke(app, ["sae", "train", "-m", "tiny:llama", "-c", str(corpus), "--features", "64",
                                *extra, "-o", str(tmp_path / "bad")])  # fmt: skip
        assert r.exit_code == 2 and message in r.stderr, r.output
        assert len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["sae", "train", "-m", "tiny:llama", "--hook", HOOK, "-c", str(tmp_path / "nope"),
                            "-o", str(tmp_path / "bad")])  # fmt: skip
    assert r.exit_code == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
