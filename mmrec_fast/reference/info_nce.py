"""Reference InfoNCE with in-batch negatives: the specification of ``info_nce``, in plain PyTorch.

Short and obviously right: it materialises the (B, B) logit matrices and takes ``logsumexp`` of each row.
Any dtype, any device, autograd through plain PyTorch (including the temperature when it is a tensor).
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F


def info_nce_rows(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: Union[float, torch.Tensor],
    normalize: bool = True,
    symmetric: bool = False,
    intra_view_negatives: bool = False,
) -> torch.Tensor:
    """Per-row InfoNCE losses.  a, b: (B, d), row i of a and b a positive pair -> (B,) in a's dtype.

    loss_i = -log( exp(s_ii / t) / (sum_j exp(s_ij / t) + [intra] sum_{j != i} exp(s(a_i, a_j) / t)) ),
    s_ij = a_i . b_j (rows L2-normalised by F.normalize first when ``normalize``); ``symmetric`` averages it with
    the same loss with a and b swapped.
    """
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)

    def one_way(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = x @ y.T / temperature  # (B, B), the positives on the diagonal
        denominator = logits
        if intra_view_negatives:  # GRACE / MMSSL: the other rows of the same view are negatives too
            intra = x @ x.T / temperature
            intra = intra.masked_fill(torch.eye(len(x), dtype=torch.bool, device=x.device), float("-inf"))
            denominator = torch.cat([logits, intra], dim=1)  # (B, 2B)
        return torch.logsumexp(denominator, dim=1) - logits.diagonal()

    loss = one_way(a, b)
    if symmetric:
        loss = (loss + one_way(b, a)) / 2
    return loss


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    temperature: Union[float, torch.Tensor] = 0.2,
    normalize: bool = True,
    symmetric: bool = False,
    intra_view_negatives: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """InfoNCE over in-batch negatives, reduced: "mean" | "sum" -> 0-dim, "none" -> (B,)."""
    loss = info_nce_rows(a, b, temperature, normalize, symmetric, intra_view_negatives)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
