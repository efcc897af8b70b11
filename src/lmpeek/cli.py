"""`lmpeek trace|generate|check|models`: a thin layer over lmpeek.api.

Errors a user can cause (bad text, unknown model, bad numbers, bad options) end the command with exit
code 2 and one line on stderr; a failed `check` exits 1, and so does an unexpected error (one line too;
LMPEEK_DEBUG=1 shows its traceback). Libraries' own warnings (transformers' deprecations, ...) are for
developers and never reach the terminal; lmpeek's notes do.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from lmpeek.errors import LmpeekError


def _one_line(message: str) -> str:
    """A message as one printable line: newlines folded, lone surrogates (from undecodable argv
    bytes) escaped so that printing cannot fail."""
    text = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _OneLineErrors(TyperGroup):
    """Usage errors (a bad option value, an unknown option) as one line and exit code 2, like every
    other error the user can cause, instead of click's usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as e:  # click's exceptions, as vendored by typer
            if type(e).__name__ == "NoArgsIsHelpError":  # `lmpeek` alone, or a command without arguments
                return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            _print_error(e.format_message() + hint)
            sys.exit(getattr(e, "exit_code", 2))
        except typer.Abort:
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="See inside a transformer language model while it reads or writes text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (files, CI logs) has no terminal width; rich would assume 80 columns and wrap tables.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model", "-m", help="'default', a HF folder, a hub id in the local cache, a .gguf file, tiny:ARCH"
    ),
]


def _print_error(message: str) -> None:
    err.print(Text("error: ", style="bold red"), Text(_one_line(message)), sep="", soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    _print_error(message)
    raise typer.Exit(code)


def friendly(fn):
    """Turn the errors a user can cause into one line and exit code 2 instead of a traceback; anything
    else (a bug) into one line and exit code 1, with its traceback only when LMPEEK_DEBUG=1."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LmpeekError as e:
            _fail(str(e))
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as e:
            if os.environ.get("LMPEEK_DEBUG") == "1":
                raise
            _fail(
                f"unexpected {type(e).__name__}: {e} (a bug in lmpeek or a library it uses: run again "
                "with LMPEEK_DEBUG=1 for the traceback, and please report it)",
                code=1,
            )

    return run


@contextlib.contextmanager
def _libraries_quiet() -> Iterator[None]:
    """No library warnings or log lines in the terminal (a deprecation in a new transformers release is
    news for lmpeek's developers, who see it in the test suite, not for the user); lmpeek's own
    warnings still show."""
    from transformers import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.filterwarnings("default", module=r"lmpeek(\.|$)")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def quiet(fn):
    """Run a command inside `_libraries_quiet`."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with _libraries_quiet():
            return fn(*args, **kwargs)

    return run


RemoteOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", help="Allow a model's own Python code to run (only if you trust it)."
    ),
]


# the web servers' options (serve, features serve)
HostOpt = Annotated[str, typer.Option(help="Interface to listen on (loopback by default).")]
PortOpt = Annotated[int, typer.Option(min=0, max=65535)]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="LMPEEK_TOKEN",
        help="Require this token from every client (generated when --host is not loopback).",
    ),
]
AllowHostOpt = Annotated[
    list[str] | None,
    typer.Option(help="Also answer to this Host name (repeatable; loopback names always; '*' = any)."),
]
CorsOpt = Annotated[
    list[str] | None,
    typer.Option(help="Let pages from this origin call the API, e.g. http://localhost:5173 (repeatable)"),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype", help="Weights' dtype: float32 (default), bfloat16, float16, auto (the checkpoint's own)."
    ),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", help="cpu, cuda, cuda:N, mps or auto (default: a GPU if there is one)."),
]
DeviceMapOpt = Annotated[
    str | None,
    typer.Option(
        "--device-map",
        help="Split the model with accelerate: auto, balanced, sequential, or module=device,... "
        "(device: cpu, disk, N) or a JSON object.",
    ),
]
MaxMemoryOpt = Annotated[
    str | None,
    typer.Option("--max-memory", help="Memory per device for --device-map, e.g. cpu=8GiB,0=20GiB."),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Load even when the memory estimate says the model will not fit.")
]


def _placement(
    dtype: str | None, device: str | None, device_map: str | None, max_memory: str | None, force: bool
) -> dict:
    """The placement flags every command that loads a model takes, as `lmpeek.load` keywords."""
    return dict(dtype=dtype, device=device, device_map=device_map, max_memory=max_memory, force=force)


def _load(source: str, trust_remote_code: bool = False, placement: dict | None = None):
    from lmpeek.api import load

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        model = load(source, trust_remote_code=trust_remote_code, **(placement or {}))
    for w in caught:
        if "lmpeek" in str(w.message) or "adapter" in str(w.message):
            err.print(f"[yellow]note:[/] {w.message}")
    return model


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _show(token: str) -> str:
    return token.replace("\n", "\\n").replace("\t", "\\t")


@app.command("trace")
@friendly
@quiet
def trace_cmd(
    text: Annotated[str, typer.Argument(help="Text to run; '<eot>' separates chat turns.")],
    model: ModelOpt = "default",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Alternatives kept per position.")] = 10,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the trace's summary fields as JSON.")
    ] = False,
    save: Annotated[str | None, typer.Option("--save", help="Save the trace to this folder.")] = None,
    keep: Annotated[
        list[str] | None, typer.Option("--keep", help="Hook names/globs to keep (with --save).")
    ] = None,
    allow_nonfinite: Annotated[
        bool, typer.Option("--allow-nonfinite", help="Save a trace even if the model produced inf/NaN.")
    ] = False,
    trust_remote_code: RemoteOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    force: ForceOpt = False,
) -> None:
    """Run the model on TEXT once and show, per token, the prediction that produced it (made at the
    previous position, as in the app): its probability, loss, the entropy and top-3 of that prediction."""
    from lmpeek.api import trace
    from lmpeek.capture.trace import NonFiniteWarning

    if keep and not save:  # kept tensors only go to disk: without --save they would be dropped unseen
        _fail("--keep needs --save DIR: the tensors it keeps are written to that folder")
    m = _load(model, trust_remote_code, _placement(dtype, device, device_map, max_memory, force))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteWarning)
        t = trace(m, text, top_k=top_k, keep=keep or ())
    if save:  # refuses inf/NaN (one line, exit 2) unless --allow-nonfinite
        path = t.save(save, allow_nonfinite=allow_nonfinite)
        err.print(f"saved trace to {path}")
    for w in caught:  # the model produced inf/NaN: one line, not a Python warning's two
        note = Text(_one_line(str(w.message)))
        err.print(Text("warning: ", style="bold yellow"), note, sep="", soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps(t.summary(), ensure_ascii=False) + "\n")
        return
    # one convention with the app: each token shows the prediction that produced it, made at the
    # previous position (the trace's arrays are indexed by the predicting position: row i reads i - 1)
    table = Table(title=f"{m.name} · {len(t)} tokens", title_justify="left", expand=False)
    table.caption = "each token: the prediction that produced it, made at the previous position"
    for col, just in [
        ("#", "right"),
        ("token", "left"),
        ("p(token)", "right"),
        ("loss", "right"),
        ("entropy", "right"),
        ("top-3 predictions", "left"),
    ]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for i, tok in enumerate(t.tokens):
        if i == 0:  # nothing comes before the first token: no prediction produced it
            table.add_row("0", repr(tok), "–", "–", "–", Text("(first token: no prediction)", style="dim"))
            continue
        p = float(t.true_prob[i - 1])
        style = "" if math.isnan(p) else ("green" if p >= 0.5 else "yellow" if p >= 0.1 else "red")
        top3 = zip(t.topk_tokens[i - 1][:3], t.topk_probs[i - 1][:3], strict=True)
        alts = "  ".join(f"{s!r} {pr:.2f}" for s, pr in top3)
        table.add_row(
            str(i),
            repr(tok),
            Text(_fmt(p), style=style),
            _fmt(float(t.loss[i - 1])),
            _fmt(float(t.entropy[i - 1])),
            alts,
        )
    out.print(table)
    mean_loss = float(t.loss[:-1].mean()) if len(t) > 1 else float("nan")
    out.print(f"mean loss {_fmt(mean_loss)} nats · perplexity {_fmt(math.exp(mean_loss), 2)}")


# The page's defaults (web/src/views/GenerateView.svelte; tests/test_cli.py compares), so that the
# CLI and the page make the same kind of run
GEN_MAX_NEW_TOKENS, GEN_TEMPERATURE, GEN_TOP_P, GEN_TOP_K = 32, 0.7, 0.95, 50


@app.command("generate")
@friendly
@quiet
def generate_cmd(
    prompt: Annotated[str, typer.Argument(help="Prompt; '<eot>' separates chat turns.")],
    model: ModelOpt = "default",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = GEN_MAX_NEW_TOKENS,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = GEN_TEMPERATURE,
    top_p: Annotated[float, typer.Option("--top-p", help="1 = off.")] = GEN_TOP_P,
    top_k: Annotated[int, typer.Option("--top-k", help="0 = off.")] = GEN_TOP_K,
    seed: Annotated[int | None, typer.Option(help="Repeat a run (default: a random seed, printed).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per token.")] = False,
    trust_remote_code: RemoteOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    force: ForceOpt = False,
) -> None:
    """Generate from PROMPT: the text as it streams, then a table of each token's probability (as the
    model predicted it, and in the distribution it was drawn from after temperature / top-k / top-p)."""
    from lmpeek.api import generate

    m = _load(model, trust_remote_code, _placement(dtype, device, device_map, max_memory, force))
    steps = generate(
        m, prompt, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed
    )
    if as_json:
        for s in steps:
            row = {
                "index": s.index,
                "token": s.token,
                "token_id": s.token_id,
                "prob": s.prob,
                "sampled_prob": s.sampled_prob,
                "entropy": s.entropy,
                "top": list(zip(s.topk_tokens[:5], s.topk_probs[:5].tolist(), strict=False)),
                "sampled_top": [
                    [i, p]
                    for i, p in zip(
                        s.sampled_topk_ids[:5].tolist(), s.sampled_topk_probs[:5].tolist(), strict=True
                    )
                ],
                "seed": steps.seed,
            }
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        return
    # The text reads as text: no numbers between tokens (they went in a table below). It is decoded as
    # a whole, so characters split across byte-level tokens come out whole, not as U+FFFD pieces.
    out.print(Text(prompt, style="dim"), end="")
    ids: list[int] = []
    done: list = []
    shown = ""
    for s in steps:
        ids.append(s.token_id)
        done.append(s)
        text = m.tokenizer.decode(ids)
        if not text.endswith("\ufffd"):  # wait for the rest of a character split across tokens
            out.print(_visible(text[len(shown) :]), end="")
            shown = text
    text = m.tokenizer.decode(ids)
    out.print(_visible(text[len(shown) :]))
    out.print(_generate_table(done))
    drawn = "greedy: 1" if temperature == 0 else "after temperature, top-k, top-p"
    out.print(
        "p: the model's probability (temperature 1, unfiltered) · "
        f"p sampled: in the distribution the token was drawn from ({drawn})",
        style="dim",
        soft_wrap=True,
    )
    how = "greedy (temperature 0)"
    if temperature > 0:
        how = (
            f"temperature {temperature:g}, top-k {top_k or 'off'}, top-p {top_p:g}, seed {steps.seed}"
            f" (repeat with --seed {steps.seed})"
        )
    out.print(f"{len(done)} tokens · {how}", soft_wrap=True)


def _visible(text: str) -> Text:
    """Text for the terminal with control and invisible format characters (a right-to-left override,
    a zero-width space, ...) shown as dim escapes: they would otherwise reorder or hide what follows."""
    import unicodedata

    shown = Text()
    for ch in text:
        if ch not in "\n\t" and unicodedata.category(ch) in ("Cc", "Cf"):
            shown.append(ch.encode("unicode_escape").decode("ascii"), style="dim")
        else:
            shown.append(ch)
    return shown


def _generate_table(steps: list) -> Table:
    table = Table(title_justify="left", expand=False)
    for col, just in [
        ("#", "right"),
        ("token", "left"),
        ("p", "right"),
        ("p sampled", "right"),
        ("entropy", "right"),
        ("top-3 predictions (T=1)", "left"),
    ]:
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for s in steps:
        style = "green" if s.prob >= 0.5 else "yellow" if s.prob >= 0.1 else "red"
        top3 = zip(s.topk_tokens[:3], s.topk_probs[:3], strict=False)
        table.add_row(
            str(s.index),
            repr(s.token),
            Text(_fmt_prob(s.prob), style=style),
            _fmt_prob(s.sampled_prob),
            _fmt(s.entropy),
            "  ".join(f"{tok!r} {_fmt_prob(float(p))}" for tok, p in top3),
        )
    return table


def _fmt_prob(p: float) -> str:
    """A probability that is never shown as a misleading 0.00: small values get significant digits."""
    if math.isnan(p):
        return "–"
    if p == 0 or p >= 0.01:
        return f"{p:.2f}"
    return f"{p:.1e}"


@app.command("export")
@friendly
@quiet
def export_cmd(
    text: Annotated[str, typer.Argument(help="Text to run; '<eot>' separates chat turns.")],
    output: Annotated[str, typer.Option("--output", "-o", help="The HTML file to write.")],
    model: ModelOpt = "default",
    include: Annotated[
        str,
        typer.Option(
            "--include",
            help="Also embed, comma-separated: attention=LAYER:HEAD (repeatable), lens (the logit lens of "
            "every token), grid (the Attention tab's model view of its first window), grid=START:END (the "
            "model view of tokens START..END-1), qk=LAYER:HEAD:QUERY (the neuron view of that query "
            "against every key), flow=TOKEN or flow (the information flow of that token's, or the last "
            "token's, prediction at thresholds 0.02, 0.04, 0.06 and 0.1).",
        ),
    ] = "",
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Alternatives kept per position.")] = 10,
    trust_remote_code: RemoteOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    force: ForceOpt = False,
) -> None:
    """Run the model on TEXT and write one self-contained HTML file of the Explore view: it opens from
    disk, offline, and shows the numbers the app shows."""
    from pathlib import Path

    from lmpeek.session import Session
    from lmpeek.views.export import Include, export_html

    inc = Include.parse(include)  # a bad --include fails before the model loads
    m = _load(model, trust_remote_code, _placement(dtype, device, device_map, max_memory, force))
    heads = [(f"attention={lay}:{h}", lay, h) for lay, h in inc.attention]
    heads += [(f"qk={lay}:{h}:{q}", lay, h) for lay, h, q in inc.qk]
    for item, layer, head in heads:
        if layer >= m.n_layers or head >= m.n_heads:
            _fail(f"--include {item}: {m.name} has layers 0..{m.n_layers - 1}, heads 0..{m.n_heads - 1}")
    with Session(m) as session:
        stored = session.trace(text, top_k=top_k)
        page = export_html(session, stored.id, inc)
    path = Path(output)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as e:
        _fail(f"cannot write {path}: {e.strerror or e}")
    err.print(f"wrote {path} ({len(page.encode()) / 1e6:.2f} MB, {len(stored.trace)} tokens)")


@app.command("check")
@friendly
@quiet
def check_cmd(
    source: Annotated[str, typer.Argument(help="Model: 'default', folder, hub id, .gguf, tiny:ARCH.")],
    text: Annotated[str | None, typer.Option(help="Text to run the check on.")] = None,
    rtol: Annotated[float, typer.Option(help="Tolerance relative to the reference's scale.")] = 1e-4,
    trust_remote_code: RemoteOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    force: ForceOpt = False,
) -> None:
    """Verify every hook point of a model against a plain transformers forward."""
    from lmpeek.api import check

    m = _load(source, trust_remote_code, _placement(dtype, device, device_map, max_memory, force))
    rows = check(m, text, rtol=rtol) if text is not None else check(m, rtol=rtol)
    table = Table(
        title=f"{m.name} ({m.architecture}, adapter '{m.bound.adapter.name}')", title_justify="left"
    )
    for col in ("hook point", "compared with", "max |dev|", "scale", "ok", "worst at"):
        table.add_column(col, justify="right" if col in ("max |dev|", "scale") else "left")
    recomputed = False
    for r in rows:
        if "(recomputed)" in r.hook and not recomputed:  # the recompute path the app uses: its own group
            table.add_section()
            recomputed = True
        table.add_row(
            Text(r.hook),
            Text(r.against),
            f"{r.max_dev:.2e}",
            f"{r.scale:.3g}",
            Text("ok", style="green") if r.ok else Text("FAIL", style="bold red"),
            r.worst,
        )
    out.print(table)
    if m.bound.adapter.note:
        out.print(f"note: {m.bound.adapter.note}")
    failed = [r for r in rows if not r.ok]
    if failed:
        out.print(f"[bold red]{len(failed)} of {len(rows)} checks failed[/]: do not trust those hook points.")
        raise typer.Exit(1)
    out.print(f"[green]all {len(rows)} checks passed[/] (tolerance {rtol:g} × scale)")


@app.command("attribute")
@friendly
@quiet
def attribute_cmd(
    text: Annotated[str, typer.Argument(help="The text whose next-token prediction to explain.")],
    model: ModelOpt = "default",
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="The token to explain (default: the model's top prediction)."),
    ] = None,
    contrast: Annotated[
        str | None, typer.Option("--contrast", help="Explain log p(target) - log p(this token) instead.")
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="integrated_gradients, gradient_x_input, occlusion, shapley, kernel_shap or lime.",
        ),
    ] = "integrated_gradients",
    features: Annotated[
        str, typer.Option("--features", "-f", help="tokens, words, sentences or lines.")
    ] = "tokens",
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Integrated-gradients steps.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the attribution as JSON.")] = False,
    html: Annotated[
        str | None,
        typer.Option("--html", help="Also write the app's page open on the Why tab: one offline HTML file."),
    ] = None,
    trust_remote_code: RemoteOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Attribute the model's prediction after TEXT to its tokens, words, sentences or lines (signed
    scores, through Captum), with the completeness error delta = sum of scores - (F(x) - F(baseline))."""
    from lmpeek.attribution.attribute import attribute_cli

    m = _load(model, trust_remote_code, _placement(dtype, device, None, None, False))
    if html is not None:  # the page's own request, recorded (views/export.py attribution_html)
        from pathlib import Path

        from lmpeek.views.export import attribution_html

        page = attribution_html(m, text, method, features=features, target=target, contrast=contrast,
                                steps=steps)  # fmt: skip
        try:
            Path(html).write_text(page, encoding="utf-8")
        except OSError as e:
            _fail(f"cannot write {html}: {e.strerror or e}")
        err.print(f"wrote {html} ({len(page.encode()) / 1e6:.2f} MB)")
    attribute_cli(m, text, target=target, method=method, features=features, as_json=as_json, steps=steps,
                  contrast=contrast)  # fmt: skip


@app.command("ablate")
@friendly
@quiet
def ablate_cmd(
    prompt: Annotated[str, typer.Argument(help="The prompt to vary.")],
    variant: Annotated[
        list[str] | None, typer.Option("--variant", "-v", help="A variant of the prompt (repeatable).")
    ] = None,
    auto: Annotated[
        str | None,
        typer.Option("--auto", help="Make variants: sentences or words (drop each), replace (each word)."),
    ] = None,
    model: ModelOpt = "default",
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="The token whose probability to follow.")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, max=100)] = 10,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=0, max=256)] = 20,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the study as JSON.")] = False,
    trust_remote_code: RemoteOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
) -> None:
    """A prompt-ablation study: the prompt and its variants run batched; per variant the target's
    probability, the top-k, KL from the prompt's next-token distribution, the greedy continuation with a
    word diff, and per-layer residual-norm differences at the last position."""
    from lmpeek.attribution.prompt_ablation import ablate_prompt_cli

    if not variant and auto is None:
        _fail("give variants (--variant TEXT, repeatable) or --auto sentences|words|replace")
    m = _load(model, trust_remote_code, _placement(dtype, device, None, None, False))
    ablate_prompt_cli(m, prompt, variant or None, target=target, auto=auto, top_k=top_k,
                      max_new_tokens=max_new_tokens, seed=seed, json=as_json, echo=print)  # fmt: skip


@app.command("serve")
@friendly
def serve_cmd(
    model: Annotated[
        str, typer.Argument(help="'default', a HF folder, a hub id in the local cache, .gguf, tiny:ARCH")
    ] = "default",
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    samples: Annotated[
        str | None, typer.Option(help="A folder of your own sample texts (.txt, .md, .jsonl) to offer.")
    ] = None,
    store_dir: Annotated[
        str | None, typer.Option(help="Folder for stored traces (default: <lmpeek cache>/traces).")
    ] = None,
    store_budget: Annotated[
        str | None,
        typer.Option(
            help="Disk the stored traces may take, e.g. 4G or 500M (default: $LMPEEK_STORE_BUDGET, else 4G)."
        ),
    ] = None,
    token: TokenOpt = None,
    allow_host: AllowHostOpt = None,
    cors_origin: CorsOpt = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    force: ForceOpt = False,
    features: Annotated[
        list[str] | None,
        typer.Option("--features", help="A feature database (lmpeek features build) to browse (repeatable)."),
    ] = None,
    features_source: Annotated[
        list[str] | None,
        typer.Option(
            "--features-source",
            help="A feature source to compute on your text: neurons:L, a SAELens folder or a crosscoder "
            "folder (with --base-model).",
        ),
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base-model",
            help="A crosscoder's base model (MODEL is the chat model), loaded with the same --dtype and "
            "--device; both must share a tokenizer.",
        ),
    ] = None,
) -> None:
    """Start the web app; the page shows the model's loading progress until it is ready."""
    import os

    import uvicorn

    from lmpeek.samples.library import ENV_VAR
    from lmpeek.server.app import create_app

    if samples is not None:
        if not os.path.isdir(samples):
            _fail(f"--samples: no such folder: {samples}")
        os.environ[ENV_VAR] = os.path.abspath(samples)

    edge, url = _edge_and_url(host, port, token, allow_host, cors_origin)
    _check_source(model)  # before announcing: the model itself loads in the background
    if base_model is not None:
        _check_source(base_model)
    for spec in features_source or []:
        from lmpeek.features import kind_for

        kind_for(spec)  # a folder that is not there or not a source: one line now, not on the page later
    placement = _placement(dtype, device, device_map, max_memory, force)
    loader = _check_placement(model, placement)
    _check_port(host, port)
    features = list(features or [])
    if model == "default":  # the SAE shipped for it, with its database over the demo corpus
        from lmpeek.features import shipped

        db = shipped.database()
        if db is not None and str(db) not in features:
            features.insert(0, str(db))
    web_app = create_app(model, store_dir=store_dir, store_budget=store_budget, loader=loader,
                         features=features, feature_sources=features_source or [], base_model=base_model,
                         **edge)  # fmt: skip
    out.print(f"lmpeek: serving {model} at {url}", soft_wrap=True)
    # SIGTERM / Ctrl+C: stop within seconds even with streams open (the app cancels their jobs)
    uvicorn.run(web_app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


def _edge_and_url(host: str, port: int, token, allow_host, cors_origin) -> tuple[dict, str]:
    """The server's edge settings and the URL to print (with the token); a note on stderr when it
    listens beyond loopback."""
    from urllib.parse import quote

    from lmpeek.server.guard import is_loopback

    edge = _edge_settings(host, token, allow_host or [], cors_origin or [])
    url_host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    url = f"http://{f'[{url_host}]' if ':' in url_host else url_host}:{port}/"
    if edge["token"] is not None:
        url += f"?token={quote(edge['token'], safe='')}"
    if not is_loopback(host):
        names = ", ".join(sorted({"127.0.0.1", "localhost", "[::1]", *edge["allowed_hosts"]}))
        err.print(
            f"[yellow]note:[/] listening on {host}: clients need the token in the URL below; "
            f"Host names answered: {names} (add more with --allow-host NAME)",
            soft_wrap=True,
        )
    return edge, url


def _check_source(source: str) -> None:
    """Fail now, with one line, for a model source that names nothing loadable: a missing path, a file
    that is not .gguf, a folder without config.json or a .gguf, an unknown tiny model, a hub id not in
    the local cache, 'default' without its package. Nothing is loaded (the server loads the model in
    the background, where an error would only show on the page)."""
    import pathlib

    from lmpeek.api import TINY_PREFIX
    from lmpeek.errors import InvalidInput, SourceNotFound
    from lmpeek.models import sources

    name = source.strip()
    if not name or "\x00" in name:
        raise InvalidInput("Model source is empty: pass 'default', a folder, a .gguf file or a hub id.")
    if name.startswith(TINY_PREFIX):
        from lmpeek.models.tiny import TINY_ARCHITECTURES, TINY_VARIANTS

        arch = name[len(TINY_PREFIX) :]
        if arch not in (*TINY_ARCHITECTURES, *TINY_VARIANTS):
            choices = ", ".join([*TINY_ARCHITECTURES, *TINY_VARIANTS])
            raise SourceNotFound(f"no tiny model '{arch}'; choose one of: {choices}")
        return
    if name == "default":
        sources.default_gguf_path()  # raises, saying how to install it
        return
    path = pathlib.Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise SourceNotFound(f"Not a model: {path}. Pass a .gguf file or a folder with config.json.")
        return
    if path.is_dir():
        if not (path / "config.json").is_file() and not any(path.glob("*.gguf")):
            raise SourceNotFound(f"Not a model folder: {path} has no config.json and no .gguf file.")
        return
    if sources._HUB_ID.match(name):
        if sources._hub_snapshot(name) is None:
            raise SourceNotFound(
                f"'{name}' is neither a file nor a hub id in the local Hugging Face cache (lmpeek does not "
                "download models): download it on a machine with network and pass its folder"
            )
        return
    raise SourceNotFound(
        f"No such file or folder: {name}. A model source is 'default', a folder with config.json, "
        "a .gguf file, or a hub id like 'org/name' that is in the local Hugging Face cache."
    )


def _check_placement(source: str, placement: dict):
    """Refuse, before serving, a model that will not fit (or bad placement flags), printing the
    memory estimate; then the loader the app runs in the background with the same flags."""
    from lmpeek.api import TINY_PREFIX, load

    chosen = {k: v for k, v in placement.items() if v not in (None, False)}
    if not source.strip().startswith(TINY_PREFIX):
        from lmpeek.models.sources import estimate_source

        with _libraries_quiet():
            est = estimate_source(source, **chosen)
        if est is not None:
            forced = " (does not fit: loading anyway, as forced)" if est.forced else ""
            err.print(f"[yellow]note:[/] {est.describe()}{forced}", soft_wrap=True)
    if not chosen:
        return None
    return functools.partial(load, progress=False, **chosen)


def _check_port(host: str, port: int) -> None:
    """Bind the address once (and let go) so that a busy port is one line and exit 2 before
    "serving ..." is announced, instead of uvicorn's error after it."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        _fail(f"cannot listen on {host}: {e.strerror} (pass --host with an address of this machine)")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as uvicorn does: TIME_WAIT is no obstacle
        try:
            sock.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                _fail(f"port {port} on {host} is already in use: stop what listens there or pass --port N")
            _fail(f"cannot listen on {host}:{port}: {e.strerror}")


def _edge_settings(host: str, token: str | None, allow_host: list[str], cors_origin: list[str]) -> dict:
    """What `lmpeek serve` asks of clients: a token on any non-loopback bind (generated unless given),
    the Host names it answers to (loopback, the name it binds to, --allow-host), CORS origins."""
    import secrets

    from lmpeek.server.guard import is_loopback

    if token is not None and not token.strip():
        _fail("--token must not be empty")
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(32)
    hosts = list(allow_host)
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(host)
    return {"token": token, "allowed_hosts": hosts, "cors_origins": list(cors_origin)}


features_app = typer.Typer(
    cls=_OneLineErrors,
    no_args_is_help=True,
    help="Feature dashboards: build a database of max-activating examples over a corpus.",
)
app.add_typer(features_app, name="features")


@features_app.command("build")
@friendly
@quiet
def features_build(
    source: Annotated[
        list[str],
        typer.Option("--source", "-s", help="neurons:L, a SAELens folder or crosscoder:FOLDER (repeatable)."),
    ],
    corpus: Annotated[
        list[str],
        typer.Option("--corpus", "-c", help="A folder (.txt, .md, .jsonl, .parquet) or file (repeatable)."),
    ],
    model: ModelOpt = "default",
    out_path: Annotated[str, typer.Option("--out", "-o", help="The database file to write.")] = "features.db",
    tokens: Annotated[
        int | None, typer.Option("--tokens", min=1, help="Stop after this many tokens.")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    k: Annotated[int, typer.Option("--k", min=1, help="Max-activating examples kept per feature.")] = 20,
    seq_len: Annotated[
        int, typer.Option("--seq-len", min=2, help="Tokens per sequence the corpus is cut into.")
    ] = 128,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over instead of resuming.")] = False,
    trust_remote_code: RemoteOpt = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    force: ForceOpt = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="Run on the Ray cluster at this address (host:port); needs lmpeek[ray]."),
    ] = None,
    base_model: Annotated[
        str | None,
        typer.Option(
            "--base-model",
            help="For a crosscoder source: the base model it reads beside --model (the chat model); both "
            "must share a tokenizer.",
        ),
    ] = None,
) -> None:
    """Run the model over a corpus once and keep, for every feature of every source, its max-activating
    examples, quantile samples, histogram, top/bottom logits and correlated features (resumable: run the
    same command again after an interruption; with --ray, the same database built on a Ray cluster).
    A crosscoder (`-s crosscoder:PATH` or its folder) reads two models: --model CHAT --base-model BASE."""
    from lmpeek.features.builder import build_cli

    placement = _placement(dtype, device, device_map, max_memory, force)
    m = _load(model, trust_remote_code, placement)
    base = _load(base_model, trust_remote_code, placement) if base_model is not None else None
    ray_load = {"trust_remote_code": trust_remote_code, **({"dtype": dtype} if dtype else {})}
    build_cli(m, source, corpus, out_path, tokens=tokens, batch_size=batch_size, k=k, seq_len=seq_len,
              overwrite=overwrite, echo=out.print, ray=ray, ray_load=ray_load, base_model=base)  # fmt: skip


@features_app.command("export")
@friendly
def features_export(
    db: Annotated[str, typer.Argument(help="A feature database made by `lmpeek features build`.")],
    feature: Annotated[
        list[int],
        typer.Option(
            "--feature", "-f", min=0, help="A feature to embed (repeatable); the file opens on the first."
        ),
    ],
    output: Annotated[str, typer.Option("--output", "-o", help="The HTML file to write.")],
    source: Annotated[
        str | None, typer.Option("--source", "-s", help="Which source: its id or name (default: the first).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="The database's model: computes each --text's features."),
    ] = None,
    text: Annotated[
        list[str] | None,
        typer.Option("--text", "-t", help='A text for "Your text" in the file (repeatable; needs -m).'),
    ] = None,
) -> None:
    """Write the pages of some features as one self-contained HTML file: it opens from disk, offline, on
    the first feature's page, with the list of the exported features (no model, no server needed). With
    --model and --text, the file also shows each text's features ("Your text", read-only)."""
    from lmpeek.views.features_export import export_cli

    export_cli(db, feature, source, output, echo=out.print, model=model, texts=text)


@features_app.command("export-td")
@friendly
@quiet
def features_export_td(
    db: Annotated[str, typer.Argument(help="A feature database made by `lmpeek features build`.")],
    out_path: Annotated[
        str, typer.Option("--out", "-o", help="The tiny-dashboard SQLite file to write.")
    ] = "td.db",
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Whose tokenizer (default: the database's model).")
    ] = None,
    source: Annotated[str, typer.Option("--source", "-s", help="Which source: its number or name.")] = "0",
    max_examples: Annotated[int | None, typer.Option("--max-examples", min=1)] = None,
    negatives: Annotated[
        str, typer.Option(help="clip (tiny-dashboard draws no negative values), nan, or keep.")
    ] = "clip",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Write a feature database as tiny-dashboard's SQLite file (its own reader opens it)."""
    from lmpeek.features.formats import export_td_cli

    which: int | str = int(source) if source.strip().isdigit() else source
    export_td_cli(db, out_path, model=model, source=which, max_examples=max_examples, negatives=negatives,
                  overwrite=overwrite, echo=out.print)  # fmt: skip


sae_app = typer.Typer(
    cls=_OneLineErrors, no_args_is_help=True, help="Sparse autoencoders: train one on a model's hook point."
)
app.add_typer(sae_app, name="sae")


@sae_app.command("train")
@friendly
@quiet
def sae_train(
    hook: Annotated[
        str, typer.Option("--hook", "-H", help="The hook point, e.g. blocks.15.hook_resid_post.")
    ],
    corpus: Annotated[
        list[str],
        typer.Option(
            "--corpus", "-c", help="'demo', a folder (.txt, .md, .jsonl, .parquet) or file (repeatable)."
        ),
    ],
    n_features: Annotated[int, typer.Option("--features", "-F", min=1, help="Features (latents).")] = 2048,
    model: ModelOpt = "default",
    out_path: Annotated[str, typer.Option("--out", "-o", help="The SAELens folder to write.")] = "sae",
    arch: Annotated[str, typer.Option("--arch", help="topk or jumprelu.")] = "topk",
    k: Annotated[int, typer.Option("--k", min=1, help="Active features per token (topk).")] = 32,
    tokens: Annotated[
        int | None, typer.Option("--tokens", min=1, help="Tokens to train on (default: the whole corpus).")
    ] = None,
    held_out: Annotated[
        int, typer.Option("--held-out", min=1, help="Last tokens of the corpus kept for the FVU/L0 check.")
    ] = 8192,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Tokens per step.")] = 256,
    lr: Annotated[float | None, typer.Option("--lr", help="Default: 1e-3 / sqrt(features / 2048).")] = None,
    sparsity: Annotated[
        float, typer.Option("--sparsity-coefficient", help="The L0 penalty's weight (jumprelu).")
    ] = 2e-3,
    seq_len: Annotated[int, typer.Option("--seq-len", min=2, help="Tokens per sequence.")] = 128,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    sae_dtype: Annotated[
        str, typer.Option("--dtype", help="The written weights' dtype: float32, float16 or bfloat16.")
    ] = "float32",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over instead of resuming.")] = False,
    trust_remote_code: RemoteOpt = False,
    model_dtype: Annotated[
        str | None, typer.Option("--model-dtype", help="The model's weights' dtype (default float32).")
    ] = None,
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    max_memory: MaxMemoryOpt = None,
    force: ForceOpt = False,
) -> None:
    """Train a TopK or JumpReLU sparse autoencoder on one hook point over a corpus and write it as a
    SAELens folder (resumable: run the same command again after an interruption)."""
    import pathlib

    from lmpeek.features.corpus import documents
    from lmpeek.features.train import train_cli

    documents([c if c == "demo" else pathlib.Path(c) for c in corpus])  # a bad path fails before loading
    m = _load(model, trust_remote_code, _placement(model_dtype, device, device_map, max_memory, force))
    train_cli(m, hook, corpus, n_features, arch=arch, k=k, tokens=tokens, held_out_tokens=held_out,
              batch_size=batch_size, lr=lr, sparsity_coefficient=sparsity, seq_len=seq_len, seed=seed,
              dtype=sae_dtype, out=out_path, overwrite=overwrite, echo=out.print)  # fmt: skip


@features_app.command("serve")
@friendly
def features_serve(
    db: Annotated[list[str], typer.Argument(help="Feature databases made by `lmpeek features build`.")],
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    token: TokenOpt = None,
    allow_host: AllowHostOpt = None,
    cors_origin: CorsOpt = None,
) -> None:
    """Browse feature databases without a model: feature lists, search, pages and labels (no torch, no
    model loaded; `lmpeek serve MODEL --features DB` also computes features on your text)."""

    import uvicorn

    from lmpeek.server.app import create_app

    edge, url = _edge_and_url(host, port, token, allow_host, cors_origin)
    _check_port(host, port)
    web_app = create_app(None, features=db, **edge)  # opens every database now: a bad one is one line
    names = ", ".join(s["id"] for s in web_app.state.features.sources()["sources"])
    out.print(f"lmpeek: serving feature databases ({names}) at {url}", soft_wrap=True)
    uvicorn.run(web_app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)


@app.command("models")
@friendly
def models_cmd() -> None:
    """List supported architectures, tiny test models and the conversion cache."""
    from lmpeek.models.adapters import REGISTRY
    from lmpeek.models.sources import cache_dir, cached_models
    from lmpeek.models.tiny import TINY_ARCHITECTURES

    table = Table(title="Supported architectures (Hugging Face model_type)", title_justify="left")
    table.add_column("adapter")
    table.add_column("model_type")
    table.add_column("notes")
    for a in REGISTRY:
        table.add_row(a.name, ", ".join(a.model_types), a.note)
    table.add_row("generic", "other llama-like layouts", "found by looking; verify with `lmpeek check`")
    out.print(table)
    out.print("tiny random models: " + ", ".join(f"tiny:{a}" for a in TINY_ARCHITECTURES))
    rows = cached_models()
    out.print(f"cache: {cache_dir()}" + ("" if rows else " (empty)"))
    for r in rows:
        out.print(f"  {r.get('name')}  {r.get('size', 0) / 1e6:.0f} MB  {r.get('path')}")


def main() -> None:
    try:
        app()
    except LmpeekError as e:
        err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
