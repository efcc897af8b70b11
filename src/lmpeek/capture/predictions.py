"""What the model predicted: top-k, entropy, per-token loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

# rows of logits per chunk: 512 x 49,152 float32 is 100 MB, so a 4,096-token trace holds that instead
# of the 0.8 GB [T, V] logits. Each chunk streams the whole unembedding (113 MB here) through the cache
# again: 2,048 tokens of the default model took 1.45 s in 256-row chunks, 1.26 s in 512, 1.16 s in 1,024
CHUNK = 512
# rows per pass of the softmax statistics inside a chunk: 16 x 49,152 float32 is 3 MB
_ROWS = 16


@dataclass(frozen=True)
class NextToken:
    """Per-position prediction statistics for T positions.

    topk_ids, topk_probs: [T, k]; entropy, loss, true_prob: [T] (nats). loss/true_prob refer to
    the actual next token and are NaN at the last position (there is no next token).
    """

    topk_ids: np.ndarray
    topk_probs: np.ndarray
    entropy: np.ndarray
    loss: np.ndarray
    true_prob: np.ndarray


def next_token_stats(logits: torch.Tensor | np.ndarray, token_ids, k: int, chunk: int = CHUNK) -> NextToken:
    """logits [T, V] for positions 0..T-1, token_ids [T] the input ids (position t predicts t+1)."""
    logits = torch.as_tensor(logits)
    return chunked_next_token_stats(lambda a, b: logits[a:b], logits.shape[0], token_ids, k, chunk)


def chunked_next_token_stats(
    logits_of: Callable[[int, int], torch.Tensor], T: int, token_ids, k: int, chunk: int = CHUNK
) -> NextToken:
    """`next_token_stats` from `logits_of(a, b)` -> logits [b - a, V] of rows a..b-1, asked for one
    chunk of rows at a time: the caller can compute each chunk's logits on demand (the model's head on
    that chunk of final hidden states), so [T, V] never exists at once.

    Computed without materialising log-probabilities: with m = max z, e = exp(z - m), s = sum e:
    log Z = m + log s, H = log s - sum(e * (z - m)) / s, loss = log Z - z[next]. The final scalars are
    float64, which keeps entropy within ~1e-6 nats of a float64 reference over a 49k vocabulary.
    """
    ids = torch.as_tensor(np.asarray(token_ids), dtype=torch.long)
    # per block of rows, on the logits' device (one copy to the host at the end, no sync per block)
    parts: dict[str, list[torch.Tensor]] = {
        "top_z": [],
        "top_ids": [],
        "target": [],
        "log_z": [],
        "entropy": [],
    }
    for a in range(0, T, chunk):
        b = min(T, a + chunk)
        raw = logits_of(a, b)
        tz, ti = raw.topk(min(k, raw.shape[-1]), dim=-1)  # [rows, k]; softmax keeps the order
        parts["top_z"].append(tz.double())
        parts["top_ids"].append(ti)
        nxt = ids[a + 1 : b + 1].to(raw.device)  # the row b-1 of the last chunk has no next token
        parts["target"].append(raw[: len(nxt)].gather(1, nxt[:, None])[:, 0].double())
        for r in range(0, b - a, _ROWS):
            # a few rows at a time: their temporaries stay in cache through the five passes below
            # (6x faster here than the same passes over the 256-row chunk)
            z = raw[r : r + _ROWS].float()  # may be the caller's own tensor: nothing writes into it
            m = z.amax(-1, keepdim=True)
            zc = (z - m).clamp_min_(-1e30)  # a -inf logit (masked token) would make e * zc = 0 * -inf = NaN
            e = zc.exp()
            s = e.sum(-1).double()
            log_s = s.log()
            parts["log_z"].append(m[:, 0].double() + log_s)
            parts["entropy"].append(log_s - (e * zc).sum(-1).double() / s)
        del raw
    if T == 0:
        empty = np.zeros(0, np.float32)
        return NextToken(np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32), empty, empty, empty)
    top_z, top_ids, target, log_z, entropy = (torch.cat(v).cpu() for v in parts.values())
    target = torch.cat([target, torch.full((T - len(target),), float("nan"), dtype=torch.float64)])
    loss = log_z - target  # NaN at the last position: it has no next token
    return NextToken(
        topk_ids=top_ids.numpy().astype(np.int64),
        topk_probs=(top_z - log_z[:, None]).exp().numpy().astype(np.float32),
        entropy=entropy.numpy().astype(np.float32),
        loss=loss.numpy().astype(np.float32),
        true_prob=np.exp(-loss.numpy()).astype(np.float32),
    )
