"""The frozen kNN semantic item graph that FREEDOM and MENTOR share (MMRec's ``get_knn_adj_mat`` +
``compute_normalized_laplacian``, fused over modalities), on :func:`mmrec_fast.knn_graph` (no I x I matrix).

Per modality m: the k most cosine-similar items of every item (itself a candidate), binary edges normalised with
the row sums on both sides, ``(k + 1e-7)^-1/2 (k + 1e-7)^-1/2``, so every edge is 1 / (k + 1e-7); then
S = sum_m w_m S_m, an edge found in several modalities getting the sum of its values.

Modality weights (:func:`modality_weights`): the authors' code knows image and text only, and fuses them as
``mm_image_weight * image + (1 - mm_image_weight) * text``; with one of them it uses that one alone. The rule here,
which gives exactly those two cases:

* one modality: weight 1;
* image and others: image ``mm_image_weight``, the others share ``1 - mm_image_weight`` equally (image + text:
  0.1 / 0.9 as the authors'; TikTok's image + audio: 0.1 / 0.9 with audio in text's place);
* two or more without image: equal weights.
"""

from __future__ import annotations

import torch

from ..graph import Graph
from ..ops import knn_graph


def modality_weights(modalities: tuple[str, ...], image_weight: float) -> list[float]:
    """The fusion weight of each modality of ``modalities`` (see the module docstring)."""
    if not modalities:
        raise ValueError("the kNN item graph needs at least one modality")
    if len(modalities) == 1:
        return [1.0]
    if "image" not in modalities:
        return [1.0 / len(modalities)] * len(modalities)
    rest = (1.0 - image_weight) / (len(modalities) - 1)
    return [image_weight if m == "image" else rest for m in modalities]


def knn_item_graph(features: list[torch.Tensor], modalities: tuple[str, ...], k: int, image_weight: float,
                   backend: str | None = None) -> Graph:  # fmt: skip
    """S = sum_m w_m S_m of the raw item features (one (I, d_m) tensor per modality, in ``modalities``' order)."""
    weights = modality_weights(modalities, image_weight)
    return knn_graph([f.detach() for f in features], k, weights=weights, edge_weight="binary", norm="sym", eps=1e-7,
                     include_self=True, backend=backend)  # fmt: skip
