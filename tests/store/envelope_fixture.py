"""A trace with every awkward case, and the envelope fixtures the front end's tests read.

    .venv/bin/python tests/store/envelope_fixture.py     # rewrite web/test/fixtures/ after a format change

tests/store/test_envelope.py checks that the committed fixtures are what this writes, so the
TypeScript decoder (web/test/envelope.test.ts) always reads what the Python writer writes today.
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))  # run as a script: trace_fakes beside it

from trace_fakes import make_trace  # noqa: E402

from lmpeek import schema  # noqa: E402
from lmpeek.capture.trace import Trace  # noqa: E402

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "web" / "test" / "fixtures"
TRACE_ID = "0123456789abcdef"


def awkward_trace() -> Trace:
    """NaN and ±inf in every float summary, byte-piece tokens, non-ASCII and control text, kept tensors
    in float16 and float32, a chat trace, a token without bytes."""
    t = make_trace(6, k=3)
    t.text = "Zürich 東京 🙂\t\x00"
    t.tokens = ["Z", "ürich", " 東京", " <0xF0>", "<0x9F>", "\x00"]
    t.token_bytes = [b"Z", "ürich".encode(), " 東京".encode(), b" \xf0", b"\x9f", b""]
    t.topk_tokens = [["<0xC3>", " the", "\ud800"], ["é", "", " the"]] * 3  # a lone surrogate too
    t.chat = True
    t.topk_probs[1, 2] = np.nan
    t.topk_probs[2, 0] = 1e-30  # far below float16's range: must come back as it was
    t.entropy[0] = np.inf
    t.loss[-1] = np.nan
    t.loss[2] = -0.0
    t.true_prob[3] = -np.inf
    t.attn_entropy[0, 1, 2] = np.nan
    nan_payload = np.array([0x7FC00123], dtype=np.uint32).view(np.float32)[0]
    t.norms["blocks.0.hook_resid_post"][4] = nan_payload
    t.norms["blocks.1.hook_resid_pre"] = t.norms["blocks.0.hook_resid_post"].copy()  # shares a buffer
    t.tensors = {
        "blocks.0.hook_resid_post": np.arange(24, dtype=np.float32).reshape(6, 4) * 1e5,
        "blocks.1.attn.hook_pattern": np.full((2, 6, 6), 0.25, dtype=np.float16),
    }
    t.nonfinite = ["blocks.0.hook_resid_post", "logits"]
    t.model["fingerprint"] = {"name": "tiny:llama", "id": "a" * 16}
    return t


def fixtures() -> dict[str, bytes]:
    """file name -> bytes: the compact envelope the server would send for awkward_trace(), the JSON
    summary the server would send for the same (decoded) trace, envelopes of a newer minor and a
    newer major format version, and an export's envelope (norms and attention entropy left out)."""
    t = awkward_trace()
    t.attn_entropy = np.abs(np.nan_to_num(t.attn_entropy, nan=1.0)) * 3  # nats, as a real trace holds
    t.attn_entropy[1, 0, 5] = np.nan
    compact = schema.encode_trace(t, precision="compact", trace_id=TRACE_ID)
    seen = Trace.from_bytes(compact)  # what the page gets: attention entropy rounded to float16
    summary = json.dumps({"id": TRACE_ID, **seen.summary()}, ensure_ascii=True, allow_nan=False, indent=0)
    env = schema.decode(compact)
    header = {k: v for k, v in env.header.items() if k not in ("format", "version", "writer", "buffers")}
    arrays = {k: np.array(v) for k, v in env.arrays.items()}
    dtypes = {k: s["dtype"] for k, s in env.header["buffers"].items()}
    version, writer = schema.VERSION, schema.__version__
    try:
        schema.VERSION, schema.__version__ = (1, 9), "0.4.0"
        future = {"attribution/saliency": np.ones((6, 6), np.float32)}
        minor = schema.encode(header | {"saliency": "ig"}, arrays | future, dtypes)
        schema.VERSION, schema.__version__ = (2, 0), "9.0.0"
        major = schema.encode(header, arrays, dtypes)
    finally:
        schema.VERSION, schema.__version__ = version, writer
    return {
        "trace-compact.lmpeek": compact,
        "trace-compact.json": summary.encode("ascii") + b"\n",
        "trace-v1_9.lmpeek": minor,
        "trace-v2_0.lmpeek": major,
        # what an HTML export embeds: no norms, no attention entropy (views.export)
        "trace-export.lmpeek": schema.encode_trace(t, "compact", TRACE_ID, omit=schema.OMITTABLE),
    }


def write(folder: pathlib.Path = FIXTURES) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in fixtures().items():
        (folder / name).write_bytes(data)


if __name__ == "__main__":
    write()
    print(f"wrote {', '.join(fixtures())} to {FIXTURES}")
