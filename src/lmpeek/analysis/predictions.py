"""What the model predicted: top-k, entropy, per-token loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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


def next_token_stats(logits: torch.Tensor | np.ndarray, token_ids, k: int) -> NextToken:
    """logits [T, V] for positions 0..T-1, token_ids [T] the input ids (position t predicts t+1)."""
    logits = torch.as_tensor(logits)
    ids = torch.as_tensor(np.asarray(token_ids), dtype=torch.long, device=logits.device)
    logp = torch.log_softmax(logits.float(), dim=-1)  # [T, V]
    k = min(k, logp.shape[-1])
    top_logp, top_ids = logp.topk(k, dim=-1)  # [T, k]
    probs = logp.exp()
    # p * log p is 0 * -inf (NaN) for tokens a model masks with -inf logits; their term is 0
    entropy = -torch.where(probs > 0, probs * logp, 0.0).sum(-1)  # [T]
    T = logp.shape[0]
    loss = torch.full((T,), float("nan"))
    if T > 1:
        loss[:-1] = -logp[:-1].gather(1, ids[1:, None])[:, 0].cpu()
    return NextToken(
        topk_ids=top_ids.cpu().numpy().astype(np.int64),
        topk_probs=top_logp.exp().cpu().numpy().astype(np.float32),
        entropy=entropy.cpu().numpy().astype(np.float32),
        loss=loss.numpy().astype(np.float32),
        true_prob=np.exp(-loss.numpy()).astype(np.float32),
    )
