"""Time per attribution method: lmpeek.attribute against Captum called directly on the plain
transformers model (the same method, baseline, steps and samples), interleaved rounds, medians.

Captum "directly" is what its tutorials do: the forward returns log_softmax over the whole vocabulary
at the last position (full logits at every position), perturbations run `perturbations_per_eval` at
a time (set to lmpeek's batch here, so the comparison is not just batching). IG runs at equal steps
(--steps) with a zero-embedding baseline; both deltas are printed.

    .venv/bin/python benchmarks/attribution_speed.py --tokens 128
    .venv/bin/python benchmarks/attribution_speed.py --tokens 32 --model tiny:llama
    .venv/bin/python benchmarks/attribution_speed.py --span 20 --tokens 60

--breakdown: what one batch of IG costs (forward + backward with one position's logits or all of
them, forward alone) and this CPU's float32 GEMM rate, the floor under IG at equal steps.

--span N: occlusion of every prompt token for each of N generated tokens (the token × input matrix of
a greedy N-token answer to a --tokens-token prompt): lmpeek scores all N rows from one teacher-forced
pass per perturbation, batched; it prints the forwards counted, against the N × (tokens + 1) a per-target
occlusion would run, and the time against Captum's LLMAttribution(FeatureAblation) over the same
continuation with its defaults (forward_in_tokens: per perturbation, one KV-cached forward per answer
token, unbatched).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))

METHOD_NAMES = ("integrated_gradients", "gradient_x_input", "occlusion", "shapley", "kernel_shap", "lime")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--samples", type=int, default=2, help="shapley permutations / 25x for kernel_shap, lime")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--methods", default=",".join(METHOD_NAMES))
    ap.add_argument("--span", type=int, default=0, help="occlusion of an N-token generated answer")
    ap.add_argument("--breakdown", action="store_true", help="what one IG batch costs, and the GEMM peak")
    args = ap.parse_args()
    if args.span:
        return span(args)
    if args.breakdown:
        return breakdown(args)

    import torch
    from _batches import interleaved, sample_text
    from captum.attr import (
        FeatureAblation,
        InputXGradient,
        IntegratedGradients,
        KernelShap,
        Lime,
        ShapleyValueSampling,
    )

    import lmpeek
    from lmpeek.attribution.attribute import attribute
    from lmpeek.attribution.methods import surrogate

    model = lmpeek.load(args.model, progress=False)
    hf, tok = model.hf, model.tokenizer
    text = sample_text(tok, args.tokens)
    ids = torch.tensor([tok.encode(text)])
    n = ids.shape[1]
    top = int(hf(ids).logits[0, -1].argmax())
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def logp(logits):
        return torch.log_softmax(logits[:, -1].float(), -1)[:, top]

    x = hf.get_input_embeddings()(ids).detach()
    ks = args.samples * 25
    ig = IntegratedGradients(lambda e: logp(hf(inputs_embeds=e).logits))
    captum = {
        "integrated_gradients": lambda: ig.attribute(
            x,
            baselines=torch.zeros_like(x),
            n_steps=args.steps,
            internal_batch_size=args.batch,
            return_convergence_delta=True,
        )[1].item(),  # fmt: skip
        "gradient_x_input": lambda: (
            InputXGradient(lambda e: logp(hf(inputs_embeds=e).logits))
            .attribute(x.clone().requires_grad_())
            .sum()
            .item()
        ),  # fmt: skip
        "occlusion": lambda: FeatureAblation(lambda i: logp(hf(i).logits)).attribute(
            ids, baselines=pad, perturbations_per_eval=args.batch
        ),  # fmt: skip
        "shapley": lambda: ShapleyValueSampling(lambda i: logp(hf(i).logits)).attribute(
            ids, baselines=pad, n_samples=args.samples, perturbations_per_eval=args.batch
        ),  # fmt: skip
    }

    def presence_f(p):
        return logp(hf(torch.where(p > 0.5, ids, torch.full_like(ids, pad)).long()).logits)

    def _ks(cls):
        e = cls(presence_f)
        e.interpretable_model = surrogate()
        return lambda: e.attribute(torch.ones(1, n), baselines=torch.zeros(1, n), n_samples=ks,
                                   perturbations_per_eval=args.batch)  # fmt: skip

    captum["kernel_shap"], captum["lime"] = _ks(KernelShap), _ks(Lime)
    threads = torch.get_num_threads()
    print(f"model {model.name}  tokens {n}  threads {threads}  steps {args.steps}  batch {args.batch}")
    print(f"{'method':<22}{'lmpeek s':>10}{'captum s':>10}{'ratio':>8}{'forwards':>10}  delta (rel)")
    for method in args.methods.split(","):
        kw = dict(method=method, batch=args.batch, time_budget=1e9)
        if method == "integrated_gradients":
            kw["steps"] = args.steps
        if method in ("kernel_shap", "lime"):
            kw["samples"] = ks
        if method == "shapley":
            kw["samples"] = args.samples
        if method in ("occlusion", "shapley", "kernel_shap", "lime"):
            kw["baseline"] = "pad" if tok.pad_token_id is not None else "eos"
        box = {}

        def mine(kw=kw, box=box):
            box["a"] = attribute(model, text, **kw)

        t = interleaved({"lmpeek": mine, "captum": captum[method]}, repeat=args.repeat)
        a = box["a"]
        extra = f"  captum IG delta {captum[method]():+.4f}" if method == "integrated_gradients" else ""
        print(f"{method:<22}{t['lmpeek']:>10.3f}{t['captum']:>10.3f}{t['lmpeek'] / t['captum']:>8.2f}"
              f"{a.forwards:>10}  {a.delta[0]:+.4f} ({a.relative_delta[0]:.1%}){extra}")  # fmt: skip


def breakdown(args) -> None:
    """One IG batch (--batch interpolated copies of the text): forward + input-gradient backward with the
    logits of the last position only (lmpeek) and of every position (Captum's forward), forward alone,
    and the float32 GEMM rate of the model's MLP shape on this machine: the floor under any IG."""
    import torch
    from _batches import interleaved, sample_text

    import lmpeek

    model = lmpeek.load(args.model, progress=False)
    hf, tok = model.hf, model.tokenizer
    ids = torch.tensor([tok.encode(sample_text(tok, args.tokens))])
    x = hf.get_input_embeddings()(ids).detach().expand(args.batch, -1, -1).contiguous()
    top = int(hf(ids).logits[0, -1].argmax())

    def run(keep: int, grad: bool = True):
        def f():
            e = x.clone().requires_grad_(grad)
            with torch.set_grad_enabled(grad):
                logits = hf(inputs_embeds=e, logits_to_keep=keep).logits[:, -1]
                y = torch.log_softmax(logits.float(), -1)[:, top]
                if grad:
                    torch.autograd.grad(y.sum(), e)

        return f

    modes = {"fwd+bwd, last logits": run(1), "fwd+bwd, all logits": run(0), "fwd, last logits": run(1, False)}
    t = interleaved(modes, repeat=args.repeat)
    print(f"one batch of {args.batch} x {ids.shape[1]} tokens, {torch.get_num_threads()} threads:")
    for name, sec in t.items():
        print(f"  {name:<22}{sec:8.3f} s")
    cfg = hf.config
    a = torch.randn(args.batch * ids.shape[1], cfg.hidden_size)
    w = torch.randn(cfg.intermediate_size, cfg.hidden_size)
    gemm = interleaved({"gemm": lambda: torch.nn.functional.linear(a, w)}, repeat=10)["gemm"]
    rate = 2 * a.shape[0] * a.shape[1] * w.shape[0] / gemm / 1e9
    print(f"  float32 GEMM [{a.shape[0]} x {a.shape[1]}] @ [{a.shape[1]} x {w.shape[0]}]: {rate:.0f} GFLOP/s")


def span(args) -> None:
    import torch
    from _batches import interleaved, sample_text
    from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput

    import lmpeek
    from lmpeek.attribution.attribute import attribute

    model = lmpeek.load(args.model, progress=False)
    hf, tok = model.hf, model.tokenizer
    text = sample_text(tok, args.tokens)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        out = hf.generate(ids, max_new_tokens=args.span, do_sample=False, pad_token_id=tok.eos_token_id)
    answer_ids = out[0, ids.shape[1] :].tolist()
    answer = tok.decode(answer_ids)
    n = ids.shape[1]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    box: dict = {}

    def mine():
        box["a"] = attribute(model, text, method="occlusion", span=answer_ids, baseline=pad, batch=args.batch)

    llm = LLMAttribution(FeatureAblation(hf), tok)

    def captum():
        box["c"] = llm.attribute(TextTokenInput(text, tok, skip_tokens=[]), target=torch.tensor(answer_ids))

    t = interleaved({"lmpeek": mine, "captum": captum}, repeat=args.repeat)
    a = box["a"]
    print(f"model {model.name}  prompt {n} tokens  answer {len(answer_ids)} tokens {answer!r}")
    rows, cols = a.scores.shape
    naive = len(answer_ids) * (n + 1)
    print(f"lmpeek occlusion: {a.forwards} sequences forward for the {rows} x {cols} matrix "
          f"(per-target occlusion: {naive:,}); {t['lmpeek']:.2f} s")  # fmt: skip
    ratio = t["lmpeek"] / t["captum"]
    print(f"captum LLMAttribution(FeatureAblation): {t['captum']:.2f} s  ratio {ratio:.2f}")
    ref = box["c"].token_attr.detach().double().numpy()  # [answer, prompt]
    print(f"max |lmpeek - captum| over the matrix: {abs(a.scores - ref).max():.2e}")


if __name__ == "__main__":
    main()
