"""The analysis functions, the trace schema and the views are plain numpy: importing them must not import
torch (the notebook widget, the HTML export and a reader of stored traces should not pay torch's import
to draw numbers)."""

from __future__ import annotations

import subprocess
import sys

import pytest

TORCH_FREE = ["lmpeek.analysis", "lmpeek.analysis.activations", "lmpeek.analysis.attention",
              "lmpeek.analysis.lens", "lmpeek.analysis.neurons", "lmpeek.analysis.scales",
              "lmpeek.analysis.metrics", "lmpeek.schema",
              "lmpeek.views", "lmpeek.views.export", "lmpeek.views.widget", "lmpeek.views.asgi",
              "lmpeek.store", "lmpeek.store.traces", "lmpeek.models.fingerprint",
              "lmpeek.features", "lmpeek.features.sources", "lmpeek.features.points"]  # fmt: skip


@pytest.mark.parametrize("module", TORCH_FREE)
def test_importing_leaves_torch_out(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} imported torch"
