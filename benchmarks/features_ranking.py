"""Live feature ranking on your text (the Features tab's online dashboard) against a plain forward.

    .venv/bin/python benchmarks/features_ranking.py [--tokens 128] [--repeat 7] [--layer L]
        [--sae SAELENS_FOLDER] [--db FEATURES_DB]

On the default model, a text of TOKENS tokens (a bundled sample, cut), interleaved round-robin in one
process, median wall time per mode:
  plain        model.hf(input_ids) under inference_mode, no hooks (the floor)
  neurons:L    FeatureService.activations("neurons:L", text, features=[0, 1], top=5): tokenising,
               template flags, one forward capturing the MLP activations of a middle layer, each
               token's top 5 features by activation, the text's top features
  SAE          the same for a SAELens folder (--sae)
  +quantile    rank="quantile" for each database source (--db; quantiles from the stored histograms)
Target (issue 12): each ranking < 1 s at 128 tokens.
"""

from __future__ import annotations

import argparse

from _batches import interleaved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--layer", type=int, default=None, help="default: the middle layer")
    ap.add_argument("--sae", default=None, help="a SAELens folder for this model")
    ap.add_argument("--db", action="append", default=[], help="a feature database of this model")
    args = ap.parse_args()

    import torch

    import lmpeek
    from lmpeek.capture.tokens import tokenize
    from lmpeek.features.service import FeatureService
    from lmpeek.samples.library import bundled

    model = lmpeek.load("default", progress=False)
    layer = model.n_layers // 2 if args.layer is None else args.layer
    text = " ".join(s.text for s in bundled())
    ids = tokenize(model.tokenizer, text, None).token_ids[: args.tokens]
    text = model.tokenizer.decode(ids.tolist(), skip_special_tokens=True)
    ids = tokenize(model.tokenizer, text, model.context_length).token_ids
    T = len(ids)

    specs = [f"neurons:{layer}"] + ([args.sae] if args.sae else [])
    service = FeatureService(args.db, specs, model=model)
    listed = service.sources()["sources"]
    x = torch.as_tensor(ids)[None].to(model.device)

    @torch.inference_mode()
    def plain() -> None:
        model.hf(input_ids=x, use_cache=False)

    modes = {"plain": plain}
    for s in listed:
        if not s["online"]:
            print(f"skipped {s['id']}: {s.get('message')}")
            continue
        sid = s["id"]
        modes[f"{sid} ({s['n_features']:,} features)"] = lambda sid=sid: service.activations(
            sid, text, [0, 1], top=5
        )
        if s["database"] is not None:
            modes[f"{sid} +quantile"] = lambda sid=sid: service.activations(
                sid, text, [0, 1], rank="quantile", top=5
            )
    # warmed up first: the first call loads the sources and reads the databases' histograms
    medians = interleaved(modes, args.repeat)
    base = medians["plain"]
    print(f"{model.name}, {T} tokens, layer {layer}, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeat}")  # fmt: skip
    for name, med in medians.items():
        verdict = "" if name == "plain" else ("  ok (< 1 s)" if med < 1.0 else "  OVER 1 s")
        print(f"  {name:40s} {med * 1000:8.1f} ms  {med / base:6.2f}x plain{verdict}")
    service.close()


if __name__ == "__main__":
    main()
