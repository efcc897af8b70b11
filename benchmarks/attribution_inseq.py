"""lmpeek.attribute against inseq (the same Captum method, steps, batch and baseline), interleaved
rounds in one process, medians. inseq pins old typeguard and CUDA wheels, so it is not a dependency:
run this in a throwaway copy of the venv with inseq added (how it was run for the README):

    cp -a .venv /tmp/iv && /tmp/iv/bin/pip install --no-deps inseq==0.7.1 \\
        && /tmp/iv/bin/pip install rich jaxtyping 'typeguard<=2.13.3' treescope
    /tmp/iv/bin/python benchmarks/attribution_inseq.py --tokens 128

Both explain the raw logit of the model's top next token after the text (inseq's `attributed_fn="logit"`,
lmpeek's score="logit"), one generation step: inseq is given the text plus that token as its
`generated_texts`. IG runs on the input embeddings with the same baseline (the token inseq uses,
lmpeek's baseline= that token) at --steps Riemann/Gauss-Legendre steps; occlusion and input x gradient
as they are. Prints seconds, the ratio lmpeek/inseq and both completeness errors where defined.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--methods", default="integrated_gradients,input_x_gradient,occlusion")
    args = ap.parse_args()

    try:
        import inseq
    except ImportError:
        sys.exit("inseq is not installed here: see this script's docstring for a throwaway venv")
    import torch
    from _batches import interleaved, sample_text

    import lmpeek
    from lmpeek.attribution.attribute import attribute

    model = lmpeek.load(args.model, progress=False)
    hf, tok = model.hf, model.tokenizer
    text = sample_text(tok, args.tokens)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        top = int(hf(ids).logits[0, -1].argmax())
    generated = text + tok.decode([top])
    print(f"model {model.name}  tokens {ids.shape[1]}  threads {torch.get_num_threads()}  steps {args.steps}")
    print(f"{'method':<20}{'lmpeek s':>10}{'inseq s':>10}{'ratio':>8}  lmpeek delta / inseq delta")
    ours = {"integrated_gradients": "integrated_gradients", "input_x_gradient": "gradient_x_input",
            "occlusion": "occlusion"}  # fmt: skip
    for method in args.methods.split(","):
        im = inseq.load_model(hf, method, tokenizer=tok)
        kw: dict = {"attributed_fn": "logit", "show_progress": False}
        mine_kw: dict = {"method": ours[method], "target": top, "score": "logit", "batch": args.batch}
        if method == "integrated_gradients":
            kw.update(n_steps=args.steps, internal_batch_size=args.batch, return_convergence_delta=True)
            mine_kw.update(steps=args.steps, time_budget=1e9, baseline="zeros")
        box: dict = {}

        def theirs(im=im, kw=kw, box=box):
            box["out"] = im.attribute(text, generated, **kw)

        def mine(kw=mine_kw, box=box):
            box["a"] = attribute(model, text, **kw)

        t = interleaved({"lmpeek": mine, "inseq": theirs}, repeat=args.repeat)
        seq = box["out"].sequence_attributions[0]
        steps = getattr(seq, "step_scores", {}) or {}
        their_delta = steps.get("deltas")
        their_delta = f"{float(their_delta.flatten()[-1]):+.4f}" if their_delta is not None else "–"
        a = box["a"]
        print(f"{method:<20}{t['lmpeek']:>10.3f}{t['inseq']:>10.3f}{t['lmpeek'] / t['inseq']:>8.2f}"
              f"  {a.delta[0]:+.4f} / {their_delta}")  # fmt: skip


if __name__ == "__main__":
    main()
