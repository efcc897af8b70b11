"""The Why tab's prompt ablation (issue 13): the prompt and its variants run batched, streamed as
server-sent events.

`POST /api/why/ablate` checks the request and counts the variants (one job on the model's queue; bad
input answers 4xx before any stream: an empty prompt, no variants and no `auto`, too many variants, an
unknown `auto` / `replace_with`, a target with no token), then streams `estimate` {forwards, seconds,
cached}, `progress` {done, total} (sequences: scoring forwards and generation steps) while it runs, and
`result` (PromptAblation.to_dict(), non-finite numbers as null, with `cached`, `batch_size` and the
seconds it took) or `error` {detail}. The study is one job that runs in turns
(attribution/ablation_job.py), so other requests are answered between its batches and decoding steps;
closing the connection cancels it; a repeat is answered from the Session's cache.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator, BaseModel, Field, model_validator

from lmpeek.server.finite import clean
from lmpeek.server.guard import Index
from lmpeek.server.sse import SSE_RESPONSES, long_run_stream

MAX_PROMPT = 20_000  # characters (the attribution's limit)
MAX_VARIANTS = 64  # written variants per request
MAX_ALL_VARIANTS = 256  # with the automatic ones (one per word of the prompt, or per sentence)
MAX_NEW_TOKENS = 64


def _not_blank(value: str) -> str:
    if value.strip() == "":
        raise ValueError("must not be empty: give some text to run the model on")
    return value


Text = Annotated[str, AfterValidator(_not_blank)]


class AblationVariant(BaseModel):
    text: Text = Field(max_length=MAX_PROMPT, description="The variant of the prompt.")
    label: str | None = Field(None, max_length=200, description="Its name in the table (default: the text).")


class AblateRequest(BaseModel):
    prompt: Text = Field(max_length=MAX_PROMPT, description="The prompt whose variants to compare.")
    variants: list[AblationVariant] = Field(
        default_factory=list, max_length=MAX_VARIANTS, description="Variants written by the user."
    )
    auto: Literal["sentences", "words", "replace"] | None = Field(
        None, description="Also make variants: drop each sentence / word, or replace each word."
    )
    replace_with: Literal["pad", "plausible"] = Field(
        "pad", description="auto='replace': the pad token, or a token from the model's own top-k."
    )
    target: str | Index | None = Field(
        None, description="The token to follow (its first token; an id): default the model's top prediction."
    )
    top_k: int = Field(10, ge=1, le=100, strict=True)
    max_new_tokens: int = Field(20, ge=0, le=MAX_NEW_TOKENS, strict=True, description="Greedy regeneration.")
    seed: int = Field(0, ge=0, lt=2**63, strict=True, description="replace_with='plausible': the draw.")

    @model_validator(mode="after")
    def _something_to_run(self) -> AblateRequest:
        if not self.variants and self.auto is None:
            raise ValueError("give variants or an automatic kind (auto: sentences, words or replace)")
        return self


def result_json(result: Any) -> dict[str, Any]:
    """An AblationResult as the `result` event (strict JSON: non-finite numbers become null)."""
    out = result.ablation.to_dict()
    out.update(cached=bool(result.cached), batch_size=result.batch_size, seconds=result.seconds)
    return clean(out)


def add_ablation_routes(app: FastAPI, holder: Any) -> None:
    """The route; `holder` (server.app.ModelHolder) runs model jobs."""
    from lmpeek.attribution.ablation_job import start_prompt_ablation

    @app.post("/api/why/ablate", response_class=StreamingResponse, responses=SSE_RESPONSES)
    async def why_ablate(req: AblateRequest, request: Request) -> StreamingResponse:
        """Server-sent events: `estimate`, `progress` (while it runs), then `result` or `error` (see
        the module docstring). Closing the connection cancels the study."""
        session = holder.session()
        args = req.model_dump()
        args["variants"] = [(v["label"], v["text"]) for v in args["variants"]] or None

        # checks the input and counts the variants on the model's thread: bad input is a 4xx, no stream
        def start():
            return start_prompt_ablation(session, **args, max_variants=MAX_ALL_VARIANTS)

        run = await holder.run(start, request, "ablate")
        return long_run_stream(holder, run, "ablate", result_json)
