"""The offline feature builder against an independent brute force: every stored sequence run through the
model on its own (no batching, no padding), every feature computed densely (neurons: the MLP activations;
the SAE: the float64 reference formula of tests/features/saes.py), and the database's statistics,
histograms, top-k examples and windows, quantile bins and samples, correlations and logits recomputed
from those dense arrays in plain numpy / Python. Batched and unbatched forwards differ by float rounding
(~1e-6), so values are compared to TOL, and a discrete outcome (a count, a bin, a rank) is required to
match wherever no value lies within TOL of the boundary that decides it.

Also: resuming after an exception and after a real kill -9 gives the same database as one uninterrupted
build; a finished build is not redone; bad corpora, sources and settings are one-line InvalidInputs."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from lmpeek import features
from lmpeek.capture.batched import activations as capture
from lmpeek.errors import InvalidInput
from lmpeek.features import db as dbf
from lmpeek.features.builder import build
from lmpeek.features.corpus import documents
from tests.features.saes import D, random_weights, ref_encode, v6_cfg, write_sae

TOL = 1e-4
EDGE_TOL = 5e-5  # batched and unbatched hook values differ by up to ~2.6e-5 here
SEQ_LEN = 24
SAE_HOOK = "blocks.0.hook_resid_post"
NEURON_HOOK = "blocks.1.mlp.hook_post"
OPTS = dict(seq_len=SEQ_LEN, batch_size=3, k=4, context=(3, 2), quantiles=3, per_bin=2, sample_size=9,
            n_correlated=3, n_logits=5, checkpoint_every=2)  # fmt: skip

TEXTS = {
    "a.txt": "The capital of France is Paris. Paris has museums, cafes and a river that runs through it. "
    "In spring the parks are full of people reading in the sun.",
    "b.md": "# Notes\n\n- def add(a, b): return a + b\n- for i in range(10): print(i * i)\n\nDone.",
    "sub/d.txt": "Once upon a time there was a small model that read every word twice. " * 6
    + "Then it wrote them down: 1, 2, 3, 4; alpha, beta, gamma; Montag, Dienstag, Mittwoch. " * 3,
}
JSONL = [
    "Numbers: 3.14159, 2.71828 and 1.41421 are famous constants.",
    "",  # an empty document is skipped
    "Emails go to team@example.com; calls to +1 555 0100 on Mondays.",
]


def write_corpus(folder):
    for name, text in TEXTS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(JSONL)]
    (folder / "c.jsonl").write_text("\n".join(lines) + "\n\n")
    (folder / ".hidden.txt").write_text("never read")
    (folder / "notes.csv").write_text("not a corpus suffix")
    return folder


def expected_documents(folder):
    """The reading order the corpus module promises: sorted relative paths, jsonl lines in order."""
    return [
        (str(folder / "a.txt"), TEXTS["a.txt"]),
        (str(folder / "b.md"), TEXTS["b.md"]),
        (f"{folder / 'c.jsonl'}:1", JSONL[0]),
        (f"{folder / 'c.jsonl'}:3", JSONL[2]),
        (str(folder / "sub/d.txt"), TEXTS["sub/d.txt"]),
    ]


def expected_sequences(tokenizer, folder):
    # the tiny tokenizers put nothing in front of a text, so a sequence is a plain SEQ_LEN-token piece
    assert tokenizer("x")["input_ids"] == tokenizer("x", add_special_tokens=False)["input_ids"]
    out = []
    for path, text in expected_documents(folder):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = [ids[a : a + SEQ_LEN] for a in range(0, len(ids), SEQ_LEN)]
        out += [(np.array(p), path, part) for part, p in enumerate(pieces) if len(p) >= 2]
    return out


# --- independent reference implementations -----------------------------------------------------------


def splitmix_key(doc: int, pos: int, seed: int = 0) -> float:
    """The documented sample key in Python integers: splitmix64 of (doc << 21 ^ pos) + seed·c, top 53 bits."""
    m = (1 << 64) - 1
    z = ((doc << 21) ^ pos) + seed * 0xD1B54A32D192ED03 + 0x9E3779B97F4A7C15 & m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    z ^= z >> 31
    return (z >> 11) / 2.0**53


def hist_bins(v: np.ndarray) -> np.ndarray:
    edges = dbf.HIST_EDGES
    return np.array([max(i for i in range(len(edges) - 1) if edges[i] <= x) for x in v], dtype=np.int64)


def near_edge(v: np.ndarray) -> np.ndarray:
    edges = dbf.HIST_EDGES[:-1]
    return np.abs(v[:, None] - edges[None, :]).min(1) < EDGE_TOL


def cuts_in_doubt(v: np.ndarray, hist: np.ndarray, cuts: list[int], q: int) -> bool:
    """Whether rounding could move a value across a cut, or move a cut (a value near an edge where the
    cumulative count is within one of a quantile's target)."""
    E = dbf.HIST_EDGES
    if any(np.abs(v - E[c]).min() < EDGE_TOL for c in cuts):
        return True
    cum, targets = np.cumsum(hist), hist.sum() * np.arange(1, q) / q
    edges = [int(np.abs(x - E[:-1]).argmin()) for x in v[near_edge(v)]]
    return any(e == 0 or np.abs(cum[e - 1] - targets).min() <= 1 for e in edges)


def quantile_cuts(hist: np.ndarray, q: int) -> list[int]:
    total, cuts = int(hist.sum()), []
    for j in range(1, q):
        cum = 0
        for i, c in enumerate(hist):
            cum += c
            if cum >= total * j / q:
                if 0 < cum < total and i + 1 not in cuts:
                    cuts.append(i + 1)
                break
    return sorted(cuts)


class Brute:
    """Dense activations of every counted position (position 0 of each sequence left out). `encode`
    returns (activations, margin): how far each value is from the decision that makes it 0 or not (the
    value itself; an SAE's pre-activation), so rounding can only flip elements with margin < TOL."""

    def __init__(self, model, seqs, hooks, encode):
        self.full = []  # per sequence [T, F]
        rows, margins, docs, poss = [], [], [], []
        for d, (ids, _, _) in enumerate(seqs):
            acts = capture(model, [ids.tolist()], hooks)[0]  # one sequence per forward: no padding
            a, margin = encode(acts)
            self.full.append(np.asarray(a, np.float64))
            rows.append(self.full[-1][1:])
            margins.append(np.abs(margin[1:]))
            docs += [d] * (len(ids) - 1)
            poss += list(range(1, len(ids)))
        self.A = np.concatenate(rows)
        self.unsure = np.concatenate(margins) < TOL
        self.doc, self.pos = np.array(docs), np.array(poss)
        self.keys = np.array([splitmix_key(int(d), int(p)) for d, p in zip(self.doc, self.pos, strict=True)])


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def sae(tmp_path_factory, llama):
    rng = np.random.default_rng(3)
    w = random_weights(rng, D, 24)
    w["b_enc"] = w["b_enc"] - 0.2  # sparser: some features rarely fire
    folder = write_sae(tmp_path_factory.mktemp("sae") / "sae", v6_cfg("standard", D, 24, SAE_HOOK), w)
    return features.load(folder, llama, check=False), w


@pytest.fixture(scope="module")
def built(tmp_path_factory, llama, corpus, sae):
    out = tmp_path_factory.mktemp("db") / "features.db"
    build(llama, ["neurons:1", sae[0]], [corpus], out, **OPTS)
    return out


# --- the database against the brute force -------------------------------------------------------------------


def test_documents_and_manifest(built, llama, corpus):
    seqs = expected_sequences(llama.tokenizer, corpus)
    with sqlite3.connect(built) as conn:
        stored = conn.execute("SELECT tokens, n_tokens, path, part FROM documents ORDER BY doc").fetchall()
    assert len(stored) == len(seqs) > 8
    for (blob, n, path, part), (ids, want_path, want_part) in zip(stored, seqs, strict=True):
        np.testing.assert_array_equal(np.frombuffer(blob, "<i4"), ids)
        assert (n, path, part) == (len(ids), want_path, want_part)
    with dbf.FeatureDB(built) as db:
        m = db.manifest
        assert m["status"] == "complete" and m["format_version"] == dbf.FORMAT_VERSION
        assert m["tokens_run"] == sum(len(s[0]) for s in seqs)
        assert m["tokens"] == sum(len(s[0]) - 1 for s in seqs)  # position 0 is not counted
        assert m["corpus"]["documents"] == len(seqs)
        assert m["model"]["fingerprint"] == llama.fingerprint
        assert m["tokenizer"] == llama.fingerprint["tokenizer"]
        assert [s["name"] for s in db.sources] == ["neurons:1", "sae"]
        assert db.sources[1]["hooks"] == [SAE_HOOK] and db.sources[1]["n_features"] == 24
    with sqlite3.connect(built) as conn:
        assert conn.execute("SELECT COUNT(*) FROM state").fetchone()[0] == 0  # the checkpoint is gone


@pytest.fixture(scope="module")
def brutes(llama, corpus, sae):
    seqs = expected_sequences(llama.tokenizer, corpus)
    w = sae[1]

    def sae_encode(acts):
        x = acts[SAE_HOOK].astype(np.float64)
        z = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        return ref_encode("standard", acts[SAE_HOOK], w), z

    return {
        0: Brute(llama, seqs, [NEURON_HOOK], lambda a: (a[NEURON_HOOK], a[NEURON_HOOK])),
        1: Brute(llama, seqs, [SAE_HOOK], sae_encode),
    }


@pytest.mark.parametrize("source", [0, 1])
def test_statistics_and_histogram(built, brutes, source):
    bf = brutes[source]
    A = bf.A
    n, F = A.shape
    with dbf.FeatureDB(built) as db:
        doubts = exact = 0
        for f in range(F):
            got = db.feature(f, source)
            x = A[:, f]
            unsure = int(bf.unsure[:, f].sum())
            assert got["n"] == n
            assert abs(got["count"] - int((x > 0).sum())) <= unsure
            assert abs(got["count_neg"] - int((x < 0).sum())) <= unsure
            assert got["density"] == pytest.approx(got["count"] / n)
            assert got["sum"] == pytest.approx(x.sum(), abs=TOL * n)
            assert got["max"] == pytest.approx(x.max(), abs=TOL)
            assert got["min"] == pytest.approx(x.min(), abs=TOL)
            # the histogram over the fixed edges, of the activations > 0
            counts = np.zeros(len(dbf.HIST_EDGES) - 1, np.int64)
            edges = got["histogram"]["edges"]
            first = int(np.searchsorted(dbf.HIST_EDGES, edges[0])) if edges else 0
            counts[first : first + len(got["histogram"]["counts"])] = got["histogram"]["counts"]
            pos = x[x > 0]
            want = np.bincount(hist_bins(pos), minlength=len(counts))
            doubtful = int(near_edge(pos).sum()) + unsure  # values rounding could move to another bin
            assert np.abs(counts - want).sum() <= 2 * doubtful
            doubts += doubtful
            exact += doubtful == 0
        assert doubts < 0.02 * (A > 0).sum()  # few values are in doubt: the bound above is tight
        assert exact > 0


@pytest.mark.parametrize("source", [0, 1])
def test_top_examples_and_windows(built, brutes, source):
    bf, k, (left, right) = brutes[source], OPTS["k"], OPTS["context"]
    checked = 0
    with dbf.FeatureDB(built) as db:
        for f in range(bf.A.shape[1]):
            x = bf.A[:, f]
            order = np.lexsort((bf.pos, bf.doc, -x))
            order = order[x[order] > TOL]
            got = db.examples(f, "top", source)
            want = order[:k]
            assert abs(len(got) - len(want)) <= int(bf.unsure[:, f].sum())
            scores = x[order[: k + 1]]
            for rank, e in enumerate(got[: len(want)]):
                assert e["rank"] == rank and e["bin"] == 0
                assert e["score"] == pytest.approx(x[want[rank]], abs=TOL)
                gaps = np.abs(np.delete(scores, rank) - scores[rank])
                if gaps.size == 0 or gaps.min() > 2 * TOL:  # no near-tie: the same position
                    assert (e["doc"], e["pos"]) == (bf.doc[want[rank]], bf.pos[want[rank]])
                    checked += 1
                # the window: the feature's activations around pos, inside the counted part
                seq = bf.full[e["doc"]]
                start, end = max(1, e["pos"] - left), min(len(seq), e["pos"] + right + 1)
                assert (e["start"], len(e["acts"]), e["index"]) == (start, end - start, e["pos"] - start)
                np.testing.assert_allclose(e["acts"], seq[start:end, f], atol=TOL)
                assert e["token_ids"] == db.document(e["doc"])[start:end].tolist()
                assert e["acts"][e["index"]] == pytest.approx(e["score"])
    assert checked > 20


@pytest.mark.parametrize("source", [0, 1])
def test_quantile_bins_and_samples(built, brutes, source):
    """Quantile bins split each feature's activations > 0 at the final histogram's quantiles (exact
    counts); each shows the first per_bin members of the uniform sample (the sample_size smallest keys)."""
    bf = brutes[source]
    q, per_bin, M = OPTS["quantiles"], OPTS["per_bin"], OPTS["sample_size"]
    E = dbf.HIST_EDGES
    exact = 0
    with dbf.FeatureDB(built) as db:
        for f in range(bf.A.shape[1]):
            x = bf.A[:, f]
            pos_idx = np.flatnonzero(x > 0)
            if bf.unsure[:, f].any() or not len(pos_idx):
                continue  # the sample could differ by rounding: checked only where it cannot
            hist = np.bincount(hist_bins(x[pos_idx]), minlength=len(E) - 1)
            cuts = quantile_cuts(hist, q)
            if cuts_in_doubt(x[pos_idx], hist, cuts, q):
                continue
            bounds = [0, *cuts, len(hist)]
            got = db.feature(f, source)
            want_bins = []
            for b in range(len(bounds) - 1):
                lo = 0.0 if b == 0 else E[bounds[b]]
                hi = x.max() if b == len(bounds) - 2 else E[bounds[b + 1]]
                want_bins.append((b, lo, hi, int(hist[bounds[b] : bounds[b + 1]].sum())))
            got_bins = [(d["bin"], d["lo"], d["hi"], d["count"]) for d in got["quantile_bins"]]
            assert [(b[0], b[3]) for b in got_bins] == [(b[0], b[3]) for b in want_bins]  # exact counts
            np.testing.assert_allclose([b[1:3] for b in got_bins], [b[1:3] for b in want_bins], atol=TOL)
            assert sum(d["count"] for d in got["quantile_bins"]) == got["count"]
            keys = np.mod(bf.keys[pos_idx] + f * 0.6180339887498949, 1.0)
            sample = pos_idx[np.argsort(keys, kind="stable")][:M]
            taken = {b: [] for b in range(len(bounds) - 1)}
            for i in sample:
                b = sum(x[i] >= E[c] for c in cuts)
                if len(taken[b]) < per_bin:
                    taken[b].append(i)
            want = [(b, r, bf.doc[i], bf.pos[i]) for b, idx in taken.items() for r, i in enumerate(idx)]
            examples = got["examples"]["quantile"]
            assert [(e["bin"], e["rank"], e["doc"], e["pos"]) for e in examples] == want
            for e in examples:
                lo, hi = got["quantile_bins"][e["bin"]]["lo"], got["quantile_bins"][e["bin"]]["hi"]
                assert lo <= e["score"] <= hi
            exact += 1
    assert exact >= bf.A.shape[1] // 2


@pytest.mark.parametrize("source", [0, 1])
def test_correlations(built, brutes, source):
    A = brutes[source].A
    F = A.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        R = np.corrcoef(A.T)
    norms = np.linalg.norm(A, axis=0)
    C = (A.T @ A) / np.outer(norms, norms)
    checked = 0
    with dbf.FeatureDB(built) as db:
        for f in range(F):
            row = R[f].copy()
            row[f] = np.nan
            good = np.flatnonzero(~np.isnan(row))
            want = good[np.lexsort((good, -row[good]))]
            got = db.feature(f, source)["correlated"]
            assert len(got) == min(OPTS["n_correlated"], len(want))
            for rank, c in enumerate(got):
                assert c["pearson"] == pytest.approx(row[want[rank]], abs=TOL)
                assert c["cosine"] == pytest.approx(C[f, c["feature"]], abs=TOL)
                assert c["pearson"] == pytest.approx(row[c["feature"]], abs=TOL)
                others = np.delete(row[want[: len(got) + 1]], rank)
                if np.abs(others - row[want[rank]]).min() > 2 * TOL:
                    assert c["feature"] == want[rank]
                    checked += 1
    assert checked > F


def test_logits(built, llama, sae):
    """Top and bottom logits: the feature's residual direction times the final RMSNorm's gain, through
    the unembedding, centred over the vocabulary; neurons: the down projection's column."""
    hf = llama.hf
    gain = hf.model.norm.weight.detach().numpy().astype(np.float64)
    W_U = hf.lm_head.weight.detach().numpy().astype(np.float64)
    dirs = {
        0: hf.model.layers[1].mlp.down_proj.weight.detach().numpy().T.astype(np.float64),
        1: sae[1]["W_dec"].astype(np.float64),
    }
    with dbf.FeatureDB(built) as db:
        assert all(s["logits"] for s in db.sources)
        for source, d in dirs.items():
            L = (d * gain) @ W_U.T
            L -= L.mean(1, keepdims=True)
            for f in range(0, len(d), 7):
                got = db.feature(f, source)["logits"]
                top, bottom = np.argsort(-L[f], kind="stable")[:5], np.argsort(L[f], kind="stable")[:5]
                assert [t["token"] for t in got["top"]] == top.tolist()
                assert [t["token"] for t in got["bottom"]] == bottom.tolist()
                np.testing.assert_allclose([t["value"] for t in got["top"]], L[f, top], atol=1e-5)
                np.testing.assert_allclose([t["value"] for t in got["bottom"]], L[f, bottom], atol=1e-5)
                assert got["top"][0]["label"] == db.labels([top[0]])[0]
                hist = got["histogram"]
                assert sum(hist["counts"]) == L.shape[1] and len(hist["counts"]) == 50
                assert (hist["lo"], hist["hi"]) == pytest.approx((L[f].min(), L[f].max()), abs=1e-5)


# --- resuming, determinism ----------------------------------------------------------------------------------


KEYS = {"features": "1, 2", "quantile_bins": "1, 2, 3", "examples": "1, 2, 3, 4, 5", "logits": "1, 2",
        "correlations": "1, 2, 3"}  # fmt: skip


def all_rows(path):
    with sqlite3.connect(path) as conn:
        return {
            t: conn.execute(f"SELECT * FROM {t} ORDER BY {KEYS.get(t, '1')}").fetchall() for t in dbf.TABLES
        }


class Stop(Exception):
    pass


def test_resumed_build_equals_one_shot(tmp_path, built, llama, corpus, sae):
    out = tmp_path / "resumed.db"
    seen = []

    def crash(p):
        seen.append(p.batches)
        if p.batches == 5:
            raise Stop

    with pytest.raises(Stop):
        build(llama, ["neurons:1", sae[0]], [corpus], out, progress=crash, **OPTS)
    with sqlite3.connect(out) as conn:
        saved = json.loads(dict(conn.execute("SELECT key, value FROM state"))["progress"])
        assert saved["batches"] == 4  # the last checkpoint (every 2 batches); batch 5 was rolled back
        assert conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0] == saved["documents"]
    with pytest.raises(InvalidInput, match="has not finished"):
        dbf.FeatureDB(out)
    resumed = []
    build(llama, ["neurons:1", sae[0]], [corpus], out, progress=lambda p: resumed.append(p.batches), **OPTS)
    n_batches = -(-len(expected_sequences(llama.tokenizer, corpus)) // OPTS["batch_size"])
    assert resumed == list(range(5, n_batches + 1))  # from the checkpoint on, not from the start
    assert all_rows(out) == all_rows(built)  # every table, the manifest included: the same database
    # a finished build is returned as it is, without running the model
    again = []
    build(llama, ["neurons:1", sae[0]], [corpus], out, progress=lambda p: again.append(p), **OPTS)
    assert again == [] and all_rows(out) == all_rows(built)


def test_kill_9_then_resume(tmp_path, corpus, sae):
    """A real SIGKILL in the middle of a build (after a checkpoint, with uncommitted documents), then the
    same build in a fresh process: the result equals the uninterrupted build."""
    out = tmp_path / "killed.db"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import lmpeek
        from lmpeek import features
        from lmpeek.features.builder import build
        model = lmpeek.load("tiny:llama")
        sae = features.load({str(sae[0].folder)!r}, model, check=False)
        def kill(p):
            if sys.argv[1] == "kill" and p.batches == 7:
                os.kill(os.getpid(), signal.SIGKILL)
        build(model, ["neurons:1", sae], [{str(corpus)!r}], sys.argv[2], progress=kill, **{OPTS!r})
    """)
    # every build here in a fresh process on one thread: the uninterrupted one too (float sums of torch
    # and OpenBLAS round differently on 1 and 2 threads on some CPUs; equal bits are the claim)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole.db"
    done = subprocess.run([sys.executable, "-c", script, "full", str(whole)], env=env, capture_output=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    killed = subprocess.run([sys.executable, "-c", script, "kill", str(out)], env=env, capture_output=True,
                            timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    with sqlite3.connect(out) as conn:
        assert json.loads(dict(conn.execute("SELECT key, value FROM state"))["progress"])["batches"] == 6
    done = subprocess.run([sys.executable, "-c", script, "resume", str(out)], env=env, capture_output=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert all_rows(out) == all_rows(whole)


def test_token_budget_and_other_settings(tmp_path, llama, corpus):
    out = tmp_path / "budget.db"
    build(llama, "neurons:0", corpus, out, tokens=50, seq_len=SEQ_LEN, batch_size=2, k=3)
    with dbf.FeatureDB(out) as db:
        assert db.manifest["tokens_run"] == 50
        lengths = [len(db.document(d)) for d in range(db.manifest["corpus"]["documents"])]
        assert sum(lengths) == 50 and lengths[-1] == 50 - SEQ_LEN * 2  # the last sequence cut to fit
        assert db.manifest["tokens"] == 50 - len(lengths)
    with pytest.raises(InvalidInput, match="holds another build") as err:
        build(llama, "neurons:0", corpus, out, tokens=60, seq_len=SEQ_LEN, batch_size=2, k=3)
    assert "\n" not in str(err.value)
    build(llama, "neurons:0", corpus, out, tokens=60, seq_len=SEQ_LEN, batch_size=2, k=3, overwrite=True)
    with dbf.FeatureDB(out) as db:
        assert db.manifest["tokens_run"] == 60


def test_skip_first_false_counts_position_zero(tmp_path, llama):
    out = tmp_path / "first.db"
    text = "A short text about nothing in particular, read once."
    build(llama, "neurons:1", [text], out, skip_first=False, k=2)
    ids = llama.tokenizer(text, add_special_tokens=False)["input_ids"]
    x = capture(llama, [ids], [NEURON_HOOK])[0][NEURON_HOOK]
    with dbf.FeatureDB(out) as db:
        assert db.manifest["tokens"] == len(ids) and db.manifest["corpus"]["inputs"][0].startswith("text:")
        stats = db.features()
        np.testing.assert_allclose([s["max"] for s in stats], x.max(0), atol=TOL)
        assert any(s["max"] == pytest.approx(x[0, s["feature"]], abs=TOL) for s in stats)  # at position 0
        for s in stats[:20]:
            top = db.examples(s["feature"], "top")
            assert top[0]["start"] == max(0, top[0]["pos"] - 24)


# --- corpus readers and bad input ---------------------------------------------------------------------------


def test_reading_order_and_formats(tmp_path, corpus):
    got = [(d.path, d.text) for d in documents(corpus)]
    assert got == expected_documents(corpus)
    # single files, texts and Paths mixed; a str that names an existing file is a path
    mixed = list(documents([corpus / "b.md", str(corpus / "a.txt"), "a plain text"]))
    assert [d.path for d in mixed] == [str(corpus / "b.md"), str(corpus / "a.txt"), "<text 2>"]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": ["one", None, "", "three"], "n": [1, 2, 3, 4]}), tmp_path / "t.parquet")
    assert [(d.path, d.text) for d in documents(tmp_path / "t.parquet")] == [
        (f"{tmp_path / 't.parquet'}:0", "one"),
        (f"{tmp_path / 't.parquet'}:3", "three"),
    ]


def one_line(err):
    assert isinstance(err.value, InvalidInput) and "\n" not in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda p: [p / "missing"], "does not exist"),
        (lambda p: ["no/such/folder"], "does not exist"),
        (lambda p: [], "corpus is empty"),
        (lambda p: [(p / "empty").mkdir() or p / "empty"], "no text"),
        (lambda p: [(p / "blank.txt").write_text("  \n") and p / "blank.txt"], "no text"),
        (lambda p: [(p / "x.csv").write_text("a,b") and p / "x.csv"], "reads .txt"),
        (lambda p: [(p / "x.jsonl").write_text('{"body": "hi"}\n') and p / "x.jsonl"], 'no "text" string'),
        (lambda p: [(p / "y.jsonl").write_text("{not json\n") and p / "y.jsonl"], "is not JSON"),
        (lambda p: [(p / "z.txt").write_bytes(b"\xff\xfe bad") and p / "z.txt"], "not UTF-8"),
    ],
)
def test_bad_corpus(tmp_path, llama, setup, match):
    corpus = setup(tmp_path)
    with pytest.raises(InvalidInput, match=match) as err:
        build(llama, "neurons:0", corpus, tmp_path / "out.db")
    one_line(err)
    assert not (tmp_path / "out.db").exists()


def test_bad_parquet_column(tmp_path, llama):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"body": ["hi"]}), tmp_path / "t.parquet")
    with pytest.raises(InvalidInput, match='no "text" column') as err:
        build(llama, "neurons:0", tmp_path / "t.parquet", tmp_path / "out.db")
    one_line(err)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(sources=lambda text, idx: np.zeros((1, len(idx))), n_features=3), "from text"),
        (dict(sources=[]), "at least one"),
        (dict(sources="neurons:9"), "layers"),
        (dict(k=0), "k"),
        (dict(context=(1, 2, 3)), "context"),
        (dict(seq_len=1), "seq_len"),
        (dict(tokens=1), "tokens"),
    ],
)
def test_bad_settings(tmp_path, llama, kwargs, match):
    kwargs = {"sources": "neurons:0", **kwargs}
    sources = kwargs.pop("sources")
    if "n_features" in kwargs:
        sources = features.load(sources, n_features=kwargs.pop("n_features"))
    with pytest.raises(InvalidInput, match=match) as err:
        build(llama, sources, ["some text here"], tmp_path / "out.db", **kwargs)
    one_line(err)


def test_not_a_model(tmp_path):
    with pytest.raises(InvalidInput, match="lmpeek.load"):
        build("tiny:llama", "neurons:0", ["text"], tmp_path / "out.db")


def test_build_cli(tmp_path, corpus):
    from lmpeek.features import builder

    lines = []
    path = builder.build_cli("tiny:llama", ["neurons:0"], [str(corpus)], str(tmp_path / "cli.db"), tokens=40,
                             echo=lines.append)  # fmt: skip
    assert path.exists() and len(lines) == 1 and "neurons:0 (128 features) over" in lines[0]


def test_texts_that_are_not_file_names(tmp_path, llama):
    long_word = "x" * 5000  # too long for a file name: a text, not an error
    out = build(llama, "neurons:0", [long_word, "a\x00b c"], tmp_path / "t.db", seq_len=64, k=2)
    with dbf.FeatureDB(out) as db:
        assert [i.startswith("text:") for i in db.manifest["corpus"]["inputs"]] == [True, True]


def test_resume_refuses_a_changed_corpus(tmp_path, llama, corpus):
    folder = tmp_path / "c"
    shutil.copytree(corpus, folder)
    out = tmp_path / "r.db"

    def crash(p):
        if p.batches == 3:
            raise Stop

    with pytest.raises(Stop):
        build(llama, "neurons:0", folder, out, progress=crash, **OPTS)
    (folder / "a.txt").write_text("Something else entirely now stands in this file.")
    with pytest.raises(InvalidInput, match="corpus differs") as err:
        build(llama, "neurons:0", folder, out, **OPTS)
    one_line(err)


@pytest.mark.parametrize(
    ("hook", "extra"),
    [
        ("blocks.1.mlp.hook_post", {}),
        ("blocks.0.attn.hook_z", {"reshape_activations": "hook_z"}),
        ("blocks.0.attn.hook_z", {"metadata": {"hook_head_index": 2}}),
    ],
)
def test_directions_through_the_model(tmp_path, llama, hook, extra):
    """Where a feature writes: through the down projection (mlp.hook_post) or the attention output
    projection (hook_z, all heads or one head's slice), as the transposed weight matrices give it."""
    from lmpeek.features.builder import directions

    layer = llama.hf.model.layers[int(hook.split(".")[1])]
    head = extra.get("metadata", {}).get("hook_head_index")
    d_in = 128 if "mlp" in hook else (16 if head is not None else D)
    w = random_weights(np.random.default_rng(5), d_in, 8)
    fields = {k: v for k, v in extra.items() if k != "metadata"}
    cfg = v6_cfg(
        "standard", d_in, 8, hook, metadata={"hook_name": hook, **extra.get("metadata", {})}, **fields
    )
    src = features.load(write_sae(tmp_path / "s", cfg, w), llama, check=False)
    W = (layer.mlp.down_proj if "mlp" in hook else layer.self_attn.o_proj).weight.detach().numpy()
    if head is not None:
        W = W[:, head * 16 : (head + 1) * 16]
    np.testing.assert_allclose(directions(llama, src), w["W_dec"] @ W.T, atol=1e-5)
