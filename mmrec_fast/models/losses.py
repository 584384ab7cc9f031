"""Loss pieces the models share, each written once.

All take batch rows and return a 0-dim tensor; B is the batch size (the number of rows of the first argument).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def bpr(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """mean_b -log sigmoid(pos_b - neg_b) (natural log; LightGCN, FREEDOM, MMSSL).  scores: (B,)."""
    return F.softplus(negative_scores - positive_scores).mean()


def bpr_log2(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> torch.Tensor:
    """mean_b -log2 sigmoid(pos_b - neg_b): MENTOR's BPR, in base 2 (= :func:`bpr` / ln 2).  scores: (B,)."""
    return F.softplus(negative_scores - positive_scores).mean() / math.log(2.0)


def l2_squared(*embeddings: torch.Tensor) -> torch.Tensor:
    """sum_t |E_t|_F^2 / (2 B), B = rows of the first: the L2 penalty on a batch's embeddings of the LightGCN
    authors (``decay * l2``) and MMSSL.  embeddings: (B_t, d) each."""
    total = embeddings[0].square().sum()
    for embedding in embeddings[1:]:
        total = total + embedding.square().sum()
    return total / (2 * embeddings[0].shape[0])


def l2_norms(*embeddings: torch.Tensor) -> torch.Tensor:
    """sum_t |E_t|_F / B, B = rows of the last: MMRec's ``EmbLoss`` (unsquared Frobenius norms).  embeddings:
    (B_t, d) each."""
    total = torch.linalg.vector_norm(embeddings[0])
    for embedding in embeddings[1:]:
        total = total + torch.linalg.vector_norm(embedding)
    return total / embeddings[-1].shape[0]
