"""Two threads using one model (a notebook cell's lmpeek.trace while the widget's Session generates on
its worker thread): each gets exactly what it would get alone."""

from __future__ import annotations

import threading
import warnings

import numpy as np

import lmpeek


def test_a_trace_during_a_generation_on_another_thread_is_unchanged():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = lmpeek.load("tiny:llama")
    text = "The capital of France is Paris, and the capital of Italy is Rome."
    alone = lmpeek.trace(model, text)
    steps_alone = [s.token_id for s in lmpeek.generate(model, "Once upon a time", max_new_tokens=40)]

    started, got, errors = threading.Event(), [], []

    def generate():
        try:
            for i, step in enumerate(lmpeek.generate(model, "Once upon a time", max_new_tokens=40)):
                got.append(step.token_id)
                if i == 1:
                    started.set()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
            started.set()

    thread = threading.Thread(target=generate)
    thread.start()
    started.wait(30)
    traces = [lmpeek.trace(model, text) for _ in range(3)]  # while the generation holds the model
    thread.join(60)
    assert not errors and got == steps_alone
    for t in traces:
        np.testing.assert_array_equal(t.topk_ids, alone.topk_ids)
        np.testing.assert_allclose(t.attn_entropy, alone.attn_entropy, rtol=1e-6)
        for k, v in alone.norms.items():
            np.testing.assert_allclose(t.norms[k], v, rtol=1e-6)
