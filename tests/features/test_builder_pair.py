"""Crosscoder builds ("pair builds"): `build((base, chat), [crosscoder, ...], corpus, out)` against an
independent brute force: every stored sequence run through each model on its own (no batching, no
padding) and the crosscoder computed by the float64 reference formula of test_crosscoder.py (checked
against `crosscoder.pair_activations`); the database's statistics, histogram, top examples and windows
equal it (to TOL, and exactly wherever no value lies within TOL of a boundary). Also: a mixed build's
other source reads the chat model; logits are the chat-side decoder rows through the chat model's
unembedding; the manifest names both models; a resumed build equals a one-shot one; bad pairs are
one-line InvalidInputs; the CLI's --base-model builds what the API builds. And the logits' memory fix:
any chunk size gives the same rows as the whole [F, V] matrix sorted at once."""

from __future__ import annotations

import copy
import json
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

import lmpeek
from lmpeek import features
from lmpeek.capture.batched import activations as capture
from lmpeek.errors import InvalidInput
from lmpeek.features import builder
from lmpeek.features import db as dbf
from lmpeek.features.builder import build
from lmpeek.features.crosscoder import pair_activations
from lmpeek.models.tiny import tiny_hf_model
from tests.features.test_builder import (
    OPTS,
    TOL,
    all_rows,
    expected_sequences,
    hist_bins,
    near_edge,
    write_corpus,
)
from tests.features.test_crosscoder import dl_tensors, ref_dl, write

HOOK = "blocks.0.hook_resid_post"
NEURON_HOOK = "blocks.1.mlp.hook_post"
F = 40
QUIET = "ignore::lmpeek.features.sources.FeatureSourceWarning"  # a spec is checked on load: random, it warns


class Stop(Exception):
    pass


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chat():
    """A second tiny llama with other weights and the same tokenizer: the 'chat' model."""
    hf, tok = tiny_hf_model("llama", seed=1)
    return lmpeek.wrap(hf, tok, name="tiny-llama-chat")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def cc(tmp_path_factory):
    """A dictionary_learning crosscoder (CROSSCODER code normalisation, stored mean/std) at layer 0."""
    t = dl_tensors(seed=5, n_features=F)
    t["encoder.bias"] = t["encoder.bias"] - 0.3  # sparser: some features rarely fire
    files = {"model.safetensors": t, "config.json": {"layer": 0}}
    return write(tmp_path_factory.mktemp("cc") / "cc", files), t


@pytest.fixture(scope="module")
def built(tmp_path_factory, llama, chat, corpus, cc):
    out = tmp_path_factory.mktemp("db") / "pair.db"
    src = features.load(cc[0], (llama, chat), check=False)  # random: the guard would warn
    build((llama, chat), [src, "neurons:1"], [corpus], out, **OPTS)
    return out


@pytest.fixture(scope="module")
def brute(llama, chat, corpus, cc):
    """Per sequence: both models' hook values (one sequence per forward), the float64 reference
    activations [T, F] and their pre-activations (how far each is from relu's boundary)."""
    t = cc[1]
    seqs = expected_sequences(chat.tokenizer, corpus)
    full, margin, neurons = [], [], []
    for ids, _, _ in seqs:
        xb = capture(llama, [ids.tolist()], [HOOK])[0][HOOK]
        xc = capture(chat, [ids.tolist()], [HOOK, NEURON_HOOK])[0]
        full.append(ref_dl(xb, xc[HOOK], t))
        x = np.stack([xb, xc[HOOK]], 1).astype(np.float64)
        sd = t["activation_std"].astype(np.float64)
        s = float(t["target_rms"]) / np.sqrt((sd**2).sum(-1) + 1e-8)
        x = (x - t["activation_mean"]) * s[None, :, None]
        margin.append(np.einsum("tld,ldf->tf", x, t["encoder.weight"].astype(np.float64)) + t["encoder.bias"])
        neurons.append(xc[NEURON_HOOK].astype(np.float64))
    doc = np.concatenate([[d] * (len(a) - 1) for d, a in enumerate(full)])
    pos = np.concatenate([np.arange(1, len(a)) for a in full])
    return {
        "seqs": seqs,
        "full": full,
        "A": np.concatenate([a[1:] for a in full]),  # position 0 is not counted
        "unsure": np.abs(np.concatenate([m[1:] for m in margin])) < TOL,
        "doc": doc,
        "pos": pos,
        "neurons": np.concatenate([a[1:] for a in neurons]),
    }


# --- the database against the brute force -------------------------------------------------------------------


def test_reference_is_what_pair_activations_compute(llama, chat, cc, brute):
    src = features.load(cc[0], (llama, chat), check=False)
    for d in (0, len(brute["seqs"]) - 1):
        got = pair_activations((llama, chat), src, brute["seqs"][d][0].tolist())
        np.testing.assert_allclose(got, brute["full"][d], atol=1e-5)
    assert 0.05 < (brute["A"] > 0).mean() < 0.7


def test_manifest_names_both_models(built, llama, chat, cc):
    with dbf.FeatureDB(built) as db:
        m = db.manifest
        assert m["status"] == "complete"
        assert m["model"]["fingerprint"] == chat.fingerprint and m["model"]["name"] == "tiny-llama-chat"
        assert m["base_model"]["fingerprint"] == llama.fingerprint
        assert m["tokenizer"] == chat.fingerprint["tokenizer"]
        cc_info, neurons_info = m["sources"]
        assert cc_info["kind"] == "crosscoder" and cc_info["logits_model"] == "chat"
        assert cc_info["hooks"] == [f"base:{HOOK}", f"chat:{HOOK}"] and cc_info["n_features"] == F
        assert cc_info["spec"] == str(cc[0])
        assert "logits_model" not in neurons_info
        assert [s["kind"] for s in db.sources] == ["crosscoder", "neurons"]
        assert all(s["logits"] for s in db.sources)


def test_statistics_histogram_and_top_examples(built, brute):
    A, unsure = brute["A"], brute["unsure"]
    n = len(A)
    k, (left, right) = OPTS["k"], OPTS["context"]
    checked = exact = 0
    with dbf.FeatureDB(built) as db:
        for f in range(F):
            got = db.feature(f, 0)
            x = A[:, f]
            u = int(unsure[:, f].sum())
            assert got["n"] == n
            assert abs(got["count"] - int((x > 0).sum())) <= u
            assert got["count_neg"] == 0
            assert got["sum"] == pytest.approx(x.sum(), abs=TOL * n)
            assert got["max"] == pytest.approx(x.max(), abs=TOL)
            # the histogram of the activations > 0 over the fixed edges
            counts = np.zeros(len(dbf.HIST_EDGES) - 1, np.int64)
            edges = got["histogram"]["edges"]
            first = int(np.searchsorted(dbf.HIST_EDGES, edges[0])) if edges else 0
            counts[first : first + len(got["histogram"]["counts"])] = got["histogram"]["counts"]
            pos = x[x > 0]
            want = np.bincount(hist_bins(pos), minlength=len(counts))
            doubtful = int(near_edge(pos).sum()) + u
            assert np.abs(counts - want).sum() <= 2 * doubtful
            exact += doubtful == 0 and np.array_equal(counts, want)
            # the top k (ties: the earlier document and position) and their windows
            order = np.lexsort((brute["pos"], brute["doc"], -x))
            order = order[x[order] > TOL]
            top = db.examples(f, "top", 0)
            assert abs(len(top) - min(k, len(order))) <= u
            scores = x[order[: k + 1]]
            for rank, e in enumerate(top[: len(order[:k])]):
                i = order[rank]
                assert e["score"] == pytest.approx(x[i], abs=TOL)
                gaps = np.abs(np.delete(scores, rank) - scores[rank])
                if gaps.size == 0 or gaps.min() > 2 * TOL:
                    assert (e["doc"], e["pos"]) == (brute["doc"][i], brute["pos"][i])
                    checked += 1
                seq = brute["full"][e["doc"]]
                start, end = max(1, e["pos"] - left), min(len(seq), e["pos"] + right + 1)
                assert (e["start"], len(e["acts"])) == (start, end - start)
                np.testing.assert_allclose(e["acts"], seq[start:end, f], atol=TOL)
    assert checked > 2 * F and exact > F // 2


def test_mixed_source_reads_the_chat_model(built, brute):
    """neurons:1 beside the crosscoder: the chat model's MLP neurons (not the base model's)."""
    N = brute["neurons"]
    with dbf.FeatureDB(built) as db:
        got = np.array([s["max"] for s in db.features(source=1)])
        counts = np.array([s["count"] for s in db.features(source=1)])
    np.testing.assert_allclose(got, N.max(0), atol=TOL)
    assert np.abs(counts - (N > 0).sum(0)).max() <= 2


def test_logits_are_the_chat_side_through_the_chat_unembedding(built, chat, llama, cc):
    """Direction of feature j in the chat stream: W_dec[chat, j] / (mult_chat · c_j), c_j = Σ_l ‖W_dec[l, j]‖,
    mult_chat = target_rms / sqrt(Σ σ²_chat + 1e-8); times the final RMSNorm's gain, through W_U, centred."""
    t = cc[1]
    dec = t["decoder.weight"].astype(np.float64)
    c = np.sqrt((dec**2).sum(-1)).sum(0)
    sd = t["activation_std"][1].astype(np.float64)
    mult = float(t["target_rms"]) / np.sqrt((sd**2).sum() + 1e-8)
    dirs = dec[1] / (mult * c[:, None])

    def logits(model):
        gain = model.hf.model.norm.weight.detach().numpy().astype(np.float64)
        L = (dirs * gain) @ model.hf.lm_head.weight.detach().numpy().astype(np.float64).T
        return L - L.mean(1, keepdims=True)

    L, other = logits(chat), logits(llama)
    with dbf.FeatureDB(built) as db:
        for f in range(0, F, 3):
            got = db.feature(f, 0)["logits"]
            top = np.argsort(-L[f], kind="stable")[:5]
            assert [e["token"] for e in got["top"]] == top.tolist()
            np.testing.assert_allclose([e["value"] for e in got["top"]], L[f, top], atol=1e-5)
            bottom = np.argsort(L[f], kind="stable")[:5]
            assert [e["token"] for e in got["bottom"]] == bottom.tolist()
            assert got["top"][0]["value"] != pytest.approx(other[f].max(), abs=1e-3)  # not the base's W_U


# --- resuming ---------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings(QUIET)
def test_resumed_pair_build_equals_one_shot(tmp_path, built, llama, chat, corpus, cc):
    out = tmp_path / "resumed.db"

    def crash(p):
        if p.batches == 3:
            raise Stop

    with pytest.raises(Stop):
        build((llama, chat), [str(cc[0]), "neurons:1"], [corpus], out, progress=crash, **OPTS)
    with sqlite3.connect(out) as conn:
        assert json.loads(dict(conn.execute("SELECT key, value FROM state"))["progress"])["batches"] == 2
    resumed = []
    build((llama, chat), [f"crosscoder:{cc[0]}", "neurons:1"], [corpus], out,
          progress=lambda p: resumed.append(p.batches), **OPTS)  # fmt: skip
    assert resumed[0] == 3
    assert all_rows(out) == all_rows(built)
    # another base model is another build
    with pytest.raises(InvalidInput, match="base_model") as err:
        build((chat, chat), [str(cc[0]), "neurons:1"], [corpus], out, **OPTS)
    assert "\n" not in str(err.value)


def test_sharded_pair_build_equals_the_local_one(tmp_path, built, llama, chat, corpus, cc):
    """ray="inline": the shards run through the same packing and merge as on Ray (which refuses a pair)."""
    src = features.load(cc[0], (llama, chat), check=False)
    opts = dict(OPTS, shard_batches=2)
    build((llama, chat), [src, "neurons:1"], [corpus], tmp_path / "local.db", **opts)
    build((llama, chat), [src, "neurons:1"], [corpus], tmp_path / "inline.db", ray="inline", **opts)
    rows = all_rows(tmp_path / "local.db")
    assert all_rows(tmp_path / "inline.db") == rows
    assert rows["examples"] == all_rows(built)["examples"]  # shards regroup float64 sums, nothing else


# --- bad pairs ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_tokenizer_model():
    """A tiny llama whose tokenizer splits text differently."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, show_progress=False, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(["zebra quartz jumping vexed wizard boxing " * 3], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    return lmpeek.wrap(tiny_hf_model("llama", seed=2)[0], fast, name="other-tokenizer")


def one_line(err) -> str:
    assert isinstance(err.value, InvalidInput) and "\n" not in str(err.value)
    return str(err.value)


def test_bad_pairs_are_refused(tmp_path, llama, chat, other_tokenizer_model, cc):
    out = tmp_path / "bad.db"
    text = ["The capital of France is Paris, and the river runs through it."]
    cases = [
        ((llama, other_tokenizer_model), [cc[0]], "tokenize text differently"),
        (llama, [cc[0]], "is a crosscoder"),  # a crosscoder needs the pair
        ((llama, chat), ["neurons:1"], "crosscoder sources only"),  # a base model nothing reads
        ((llama, chat, llama), [cc[0]], "got 3 models"),
        ((llama, "tiny:llama"), [cc[0]], "lmpeek.load"),
    ]
    for model, sources, match in cases:
        with pytest.raises(InvalidInput, match=match) as err:
            build(model, sources, text, out)
        one_line(err)
        assert not out.exists()
    with pytest.raises(InvalidInput, match="without --ray") as err:
        build((llama, chat), [cc[0]], text, out, ray="127.0.0.1:1")
    one_line(err)


@pytest.mark.filterwarnings(QUIET)
def test_ids_the_base_model_reads_otherwise_are_refused(tmp_path, llama, cc):
    """A chat tokenizer with an added token: ordinary text tokenizes alike (the pair is accepted), but a
    document holding the new token gives an id the base model does not have: refused, in one line."""
    hf, tok = tiny_hf_model("llama", seed=1)
    tok = copy.deepcopy(tok)
    tok.add_tokens(["<|extra|>"])
    hf.resize_token_embeddings(len(tok), mean_resizing=False)
    chat = lmpeek.wrap(hf, tok, name="chat-with-extra-token")
    assert chat.fingerprint["tokenizer"] != llama.fingerprint["tokenizer"]
    ok = tmp_path / "ok.db"
    build((llama, chat), [cc[0]], ["Plain words that both tokenizers read alike."], ok, k=2)
    with dbf.FeatureDB(ok) as db:
        assert db.manifest["base_model"]["name"] == llama.name
    with pytest.raises(InvalidInput, match="reads token id") as err:
        build((llama, chat), [cc[0]], ["Plain words <|extra|> and more."], tmp_path / "bad.db", k=2)
    one_line(err)


# --- the CLI ------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings(QUIET)
def test_cli_base_model(tmp_path, llama, corpus, cc):
    from lmpeek.cli import app

    hf, tok = tiny_hf_model("llama", seed=1)
    folder = tmp_path / "chat-model"
    hf.save_pretrained(folder)
    tok.save_pretrained(folder)
    out = tmp_path / "cli.db"
    args = ["features", "build", "-m", str(folder), "--base-model", "tiny:llama", "-s", f"crosscoder:{cc[0]}",
            "-c", str(corpus), "-o", str(out), "--tokens", "200", "--k", "3"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"({F} features)" in r.output
    want = build((llama, lmpeek.load(str(folder))), [cc[0]], [corpus], tmp_path / "api.db", tokens=200, k=3,
                 seq_len=128)  # fmt: skip
    rows = all_rows(out), all_rows(want)
    assert {t: v for t, v in rows[0].items() if t != "manifest"} == {
        t: v for t, v in rows[1].items() if t != "manifest"
    }
    # without --base-model the crosscoder is refused in one line
    r = CliRunner().invoke(app, [*args[:4], *args[6:], "--overwrite"])
    assert r.exit_code == 2 and "--base-model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# --- the logits, chunk by chunk -----------------------------------------------------------------------------


def _rows_at_once(model, dirs, n):
    """The logits rows as the builder computed them before chunking: the whole [F, V] matrix, a full
    lexsort per row (ties: the smaller token id), one bincount for every histogram."""
    logits = np.concatenate([chunk for _, chunk in builder.logit_effects(model, dirs)])
    V = logits.shape[1]
    lo, hi = logits.min(1), logits.max(1)
    span = np.where(hi > lo, hi - lo, 1.0)
    bins = np.clip(((logits - lo[:, None]) / span[:, None] * builder.LOGIT_BINS).astype(np.int64), 0, 49)
    counts = np.bincount((np.arange(len(logits))[:, None] * 50 + bins).ravel(), minlength=len(logits) * 50)
    rows = []
    for j, row in enumerate(logits):
        top = np.lexsort((np.arange(V), -row))[:n]
        bottom = np.lexsort((np.arange(V), row))[:n]
        rows.append((j, dbf.blob(top, "<i4"), dbf.blob(row[top], "<f4"), dbf.blob(bottom, "<i4"),
                     dbf.blob(row[bottom], "<f4"), dbf.blob(counts[j * 50 : j * 50 + 50], "<i4"),
                     float(lo[j]), float(hi[j])))  # fmt: skip
    return rows


def _same(rows):
    """Rows comparable with ==, NaN included (float("nan") != float("nan"); repr round-trips floats)."""
    return [(*r[:6], repr(r[6]), repr(r[7])) for r in rows]


def test_logit_rows_do_not_depend_on_the_chunk(llama):
    neurons = builder.directions(llama, features.load("neurons:1", llama))
    rng = np.random.default_rng(0)
    dirs = np.concatenate(
        [
            neurons,
            rng.standard_normal((70, neurons.shape[1])).astype(np.float32),
            np.zeros((2, neurons.shape[1]), np.float32),  # every logit tied: the smallest ids first
            np.full((1, neurons.shape[1]), np.nan, np.float32),  # NaN logits: the full sort's order
        ]
    )
    with np.errstate(invalid="ignore"):  # the NaN row's histogram casts NaN to int
        want = _rows_at_once(llama, dirs, 7)
        got = {chunk: builder._logit_rows(llama, dirs, 7, chunk) for chunk in (1, 3, 64, None, 10_000)}
    zero = want[-3]
    assert np.frombuffer(zero[1], "<i4").tolist() == list(range(7)) == np.frombuffer(zero[3], "<i4").tolist()
    assert np.frombuffer(want[-1][1], "<i4").tolist() == list(range(7))  # all NaN: by token id
    for chunk, rows in got.items():
        assert _same(rows) == _same(want), chunk
    assert builder._logit_rows(llama, dirs[:5], 10_000) == _rows_at_once(llama, dirs[:5], 10_000)  # n > V
    assert builder.logit_chunk(49_152) == 170 and builder.logit_chunk(1) == builder.LOGIT_CHUNK_BYTES // 4


def test_a_build_with_tiny_logit_chunks_equals_the_default(tmp_path, monkeypatch, llama, corpus):
    opts = dict(OPTS, k=2)
    build(llama, "neurons:1", [corpus], tmp_path / "a.db", tokens=120, **opts)
    monkeypatch.setattr(builder, "LOGIT_CHUNK_BYTES", 1)  # one feature per chunk
    assert builder.logit_chunk(300) == 1
    build(llama, "neurons:1", [corpus], tmp_path / "b.db", tokens=120, **opts)
    assert all_rows(tmp_path / "a.db") == all_rows(tmp_path / "b.db")
