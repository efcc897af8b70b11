"""The trace envelope (lmpeek.schema): exact round trips, compact precision, versions, damage, no torch."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
import warnings

import numpy as np
import pytest
from envelope_fixture import awkward_trace
from trace_fakes import make_trace

import lmpeek
from lmpeek import schema
from lmpeek.capture.trace import Trace
from lmpeek.errors import LmpeekError
from lmpeek.models.tiny import TINY_ARCHITECTURES, TINY_VARIANTS, tiny_hf_model


def assert_same_trace(a: Trace, b: Trace) -> None:
    """Every field equal; arrays equal bit for bit (so NaN payloads and -0.0 count) with the same dtype."""
    for f in dataclasses.fields(Trace):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            _same_array(f.name, x, y)
        elif isinstance(x, dict) and x and isinstance(next(iter(x.values())), np.ndarray):
            assert list(x) == list(y), f.name  # same names, same order
            for k in x:
                _same_array(f"{f.name}[{k}]", x[k], y[k])
        else:
            assert x == y, f.name
            assert type(x) is type(y), f.name


def _same_array(name: str, x: np.ndarray, y: np.ndarray) -> None:
    assert isinstance(y, np.ndarray), name
    assert x.dtype == y.dtype and x.shape == y.shape, (name, x.dtype, y.dtype, x.shape, y.shape)
    assert x.tobytes() == y.tobytes(), name
    assert y.flags.writeable, name  # a fresh array, not a view into the received bytes


def test_exact_round_trip_of_every_field():
    t = awkward_trace()
    back = Trace.from_bytes(t.to_bytes())
    assert_same_trace(t, back)
    assert back.partial == [False, False, False, True, True, False]
    assert np.isnan(back.norms["blocks.0.hook_resid_post"][4])


def test_round_trip_from_bytearray_and_memoryview():
    t = awkward_trace()
    data = t.to_bytes()
    for view in (bytearray(data), memoryview(data)):
        assert_same_trace(t, Trace.from_bytes(view))


def test_empty_topk():
    t = make_trace(4, k=0)
    t.topk_tokens = [[] for _ in range(4)]
    back = Trace.from_bytes(t.to_bytes())
    assert_same_trace(t, back)
    assert back.topk_ids.shape == (4, 0)


def _tiny(arch: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # llama-inf warns about its inf (NonFiniteWarning)
        m = lmpeek.wrap(*tiny_hf_model(arch), name=f"tiny:{arch}")
        return lmpeek.trace(m, "Hello wörld 🙂! The cat sat.", top_k=5, keep=["blocks.0.*"])


@pytest.mark.parametrize("arch", [*TINY_ARCHITECTURES, *TINY_VARIANTS])
def test_exact_round_trip_of_a_real_trace(arch):
    t = _tiny(arch)
    assert t.tensors, "keep=['blocks.0.*'] should have kept some tensors"
    assert_same_trace(t, Trace.from_bytes(t.to_bytes()))
    if arch == "llama-inf":
        assert t.nonfinite and Trace.from_bytes(t.to_bytes()).nonfinite == t.nonfinite


def test_every_buffer_is_aligned_and_inside():
    data = awkward_trace().to_bytes()
    (size,) = struct.unpack("<I", data[4:8])
    assert data[:4] == b"LMPK" and size % 8 == 0
    header = json.loads(data[8 : 8 + size])
    assert header["format"] == "lmpeek.trace" and header["version"] == "1.1"
    assert header["writer"] == f"lmpeek {lmpeek.__version__}"
    for name, spec in header["buffers"].items():
        assert spec["offset"] % 8 == 0, name
        assert spec["offset"] >= 8 + size and spec["offset"] + spec["nbytes"] <= len(data), name
        assert spec["dtype"] in ("float16", "float32", "int32"), name


def test_identical_buffers_are_stored_once():
    t = awkward_trace()
    bufs = schema.decode(t.to_bytes()).header["buffers"]
    assert bufs["norms/blocks.0.hook_resid_post"]["offset"] == bufs["norms/blocks.1.hook_resid_pre"]["offset"]
    assert (
        bufs["norms/blocks.0.hook_resid_post"]["offset"] != bufs["norms/blocks.1.hook_resid_post"]["offset"]
    )


def test_integer_ids_travel_as_int32_and_come_back_as_int64():
    spec = schema.decode(make_trace(4).to_bytes()).header["buffers"]["token_ids"]
    assert spec["dtype"] == "int32" and spec["as"] == "int64"
    t = make_trace(4)
    t.token_ids[0] = 2**31
    with pytest.raises(LmpeekError, match="outside int32"):
        t.to_bytes()


def test_compact_precision():
    t = awkward_trace()
    t.attn_entropy = np.abs(t.attn_entropy) * 8  # nats, as a real trace holds
    t.attn_entropy[0, 1, 2] = np.nan
    env = schema.decode(t.to_bytes("compact"))
    bufs = env.header["buffers"]
    assert bufs["attn_entropy"]["dtype"] == "float16"
    assert bufs["topk_probs"]["dtype"] == bufs["true_prob"]["dtype"] == "float32"
    assert all(bufs[f"norms/{k}"]["dtype"] == "float32" for k in t.norms)
    # a kept tensor past float16's range stays float32; one that fits goes float16
    assert bufs["tensors/blocks.0.hook_resid_post"]["dtype"] == "float32"
    assert bufs["tensors/blocks.1.attn.hook_pattern"]["dtype"] == "float16"
    back = Trace.from_bytes(t.to_bytes("compact"))
    assert back.attn_entropy.dtype == np.float32
    np.testing.assert_allclose(back.attn_entropy, t.attn_entropy, rtol=2**-11, atol=0)
    assert np.isnan(back.attn_entropy[0, 1, 2])
    # everything but attention entropy is exact
    assert_same_trace(dataclasses.replace(t, attn_entropy=back.attn_entropy), back)
    # and a compact trace written again compactly is the same bytes
    assert back.to_bytes("compact") == t.to_bytes("compact")
    assert len(t.to_bytes("compact")) < len(t.to_bytes("exact"))


def test_unknown_precision_is_refused():
    with pytest.raises(LmpeekError, match="precision must be one of exact, compact"):
        make_trace(3).to_bytes("tiny")


def _written_as(
    monkeypatch, version: tuple[int, int], writer: str, extra_header=None, extra_arrays=None
) -> bytes:
    """An envelope as a future lmpeek would write it."""
    t = make_trace(5)
    with monkeypatch.context() as m:
        m.setattr(schema, "VERSION", version)
        m.setattr(schema, "__version__", writer)
        if extra_header is None and extra_arrays is None:
            return t.to_bytes()
        env = schema.decode(t.to_bytes())
        header = {k: v for k, v in env.header.items() if k not in ("format", "version", "writer", "buffers")}
        arrays = {k: np.array(v) for k, v in env.arrays.items()}
        return schema.encode(header | (extra_header or {}), arrays | (extra_arrays or {}))


def test_a_newer_major_version_is_refused_naming_the_lmpeek_that_reads_it(monkeypatch):
    data = _written_as(monkeypatch, (2, 0), "0.9.0")
    with pytest.raises(schema.NewerTraceFormat) as err:
        Trace.from_bytes(data)
    msg = str(err.value)
    assert "format 2.0" in msg and "lmpeek 0.9.0" in msg and "lmpeek>=0.9.0" in msg
    assert f"reads format {schema.VERSION[0]}.x" in msg
    assert isinstance(err.value, LmpeekError)  # the CLI and server show it as a one-line message


def test_a_newer_minor_version_is_read_ignoring_what_it_added(monkeypatch):
    extra = {"attribution/integrated": np.ones((5, 5), np.float32)}
    data = _written_as(
        monkeypatch, (1, 9), "0.4.0", extra_header={"saliency_method": "ig"}, extra_arrays=extra
    )
    assert schema.decode(data).version == (1, 9)
    assert_same_trace(make_trace(5), Trace.from_bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b"PK\x03\x04" + b[4:], "does not start with b'LMPK'"),
        (lambda b: b[:6], "not an lmpeek trace envelope"),
        (lambda b: b[:20], "truncated"),
        (lambda b: b[:-8], "truncated or damaged"),
        (lambda b: b[:8] + b"\xff" + b[9:], "not valid JSON"),
    ],
)
def test_damaged_bytes_are_refused_with_a_reason(damage, message):
    with pytest.raises(schema.TraceFormatError, match=message):
        Trace.from_bytes(damage(make_trace(5).to_bytes()))


def test_importing_the_schema_and_reading_a_trace_leaves_torch_out(tmp_path):
    path = tmp_path / "t.lmpeek"
    path.write_bytes(awkward_trace().to_bytes())
    code = (
        "import sys; import lmpeek.schema as s; "
        f"f = s.decode_trace(open({str(path)!r}, 'rb').read()); "
        "assert f['tokens'][3] == ' <0xF0>', f['tokens']; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_front_end_fixtures_are_what_the_writer_writes_today():
    from envelope_fixture import FIXTURES, fixtures

    for name, data in fixtures().items():
        path = FIXTURES / name
        assert path.is_file() and path.read_bytes() == data, (
            f"web/test/fixtures/{name} is stale: run .venv/bin/python tests/store/envelope_fixture.py"
        )
