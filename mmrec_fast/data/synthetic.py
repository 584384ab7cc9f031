"""Synthetic datasets with the structure of real ones: the embedded default when no data path is given.

Generative model (all from one seed):

* users and items have latent factors theta_u, phi_i ~ N(0, I_r) (r = ``latent_dim``);
* item popularity follows a power law: log-popularity pi_i = -``item_exponent`` * log(rank_i) over a random
  permutation of ranks;
* user activity follows a power law: n_u = ``min_user_degree`` + a Pareto-distributed share of the remaining
  interactions (capped at I / 4);
* user u picks n_u distinct items with probability proportional to exp(``affinity`` * theta_u . phi_i / sqrt(r)
  + pi_i), without replacement (Gumbel top-k);
* each modality m has features  f_i = phi_i A_m + ``feature_noise`` * eps_i  (A_m a random (r, d_m) map, eps ~ N),
  so features carry the item factors that drive the interactions, and a content model can learn from them;
* each user's interactions are split at random as MMRec's datasets are: 80 / 10 / 10 per user, n - 2 / 1 / 1 for
  users with fewer than 10 interactions.

So a collaborative model can beat popularity (the affinity term), popularity is a real baseline (the power law),
and the degrees are skewed as in the real graphs. Presets give real datasets' sizes (counts from the MMRec and
MMSSL papers; Baby as in ``../shared/data/baby``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .dataset import Dataset, Interactions

#: preset -> (users, items, interactions, {modality: feature dim})
PRESETS: dict[str, tuple[int, int, int, dict[str, int]]] = {
    "small": (2_000, 1_000, 24_000, {"image": 64, "text": 32}),
    "tiktok-like": (9_319, 6_710, 68_722, {"image": 128, "audio": 128, "text": 768}),
    "baby-like": (19_445, 7_050, 160_792, {"image": 4096, "text": 384}),
    "sports-like": (35_598, 18_357, 296_337, {"image": 4096, "text": 384}),
}
DEFAULT_PRESET = "tiktok-like"


def synthetic(
    preset: str = DEFAULT_PRESET,
    *,
    num_users: int | None = None,
    num_items: int | None = None,
    num_interactions: int | None = None,
    feature_dims: dict[str, int] | None = None,
    latent_dim: int = 16,
    affinity: float = 3.0,
    item_exponent: float = 0.8,
    user_exponent: float = 1.5,
    min_user_degree: int = 5,
    feature_noise: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """A synthetic :class:`Dataset` (see the module docstring for the model).

    Args:
        preset: "small" | "tiktok-like" | "baby-like" | "sports-like": the sizes and feature dims; any of
            ``num_users``, ``num_items``, ``num_interactions``, ``feature_dims`` overrides the preset's.
        feature_dims: modality -> feature dimension ({} for no features).
        latent_dim: r, the dimension of the latent factors.
        affinity: weight of the user-item affinity against popularity (0: pure popularity).
        item_exponent, user_exponent: power-law exponents of item popularity and of user activity (Pareto shape).
        min_user_degree: the fewest interactions of a user (>= 3, so that every user has valid and test items).
        feature_noise: standard deviation of the noise added to the features' signal (whose scale is ~1).
        seed: everything is a function of the arguments; the same arguments give the same dataset.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}; choose from {', '.join(PRESETS)}")
    users0, items0, inter0, dims0 = PRESETS[preset]
    num_users = users0 if num_users is None else int(num_users)
    num_items = items0 if num_items is None else int(num_items)
    num_interactions = inter0 if num_interactions is None else int(num_interactions)
    feature_dims = dict(dims0 if feature_dims is None else feature_dims)
    if min_user_degree < 3:
        raise ValueError(f"min_user_degree must be >= 3 (one train, one valid, one test item), got {min_user_degree}")
    cap = max(min_user_degree, num_items // 4)
    if num_users < 1 or num_items < 4 * min_user_degree:
        raise ValueError(f"need >= 1 user and >= {4 * min_user_degree} items, got {num_users} x {num_items}")
    if not num_users * min_user_degree <= num_interactions <= num_users * cap:
        raise ValueError(f"num_interactions must lie in [{num_users * min_user_degree}, {num_users * cap}] for "
                         f"{num_users} users, {num_items} items and min_user_degree={min_user_degree}; got {num_interactions}")  # fmt: skip

    rng = np.random.default_rng(seed)
    normal = lambda *shape: torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))  # noqa: E731
    degrees = _user_degrees(rng, num_users, num_interactions, min_user_degree, cap, user_exponent)
    user_factors, item_factors = normal(num_users, latent_dim), normal(num_items, latent_dim)
    log_popularity = -item_exponent * torch.log(torch.from_numpy(rng.permutation(num_items) + 1.0).to(torch.float32))
    users, items = _pick_items(user_factors, item_factors, log_popularity, degrees, affinity / math.sqrt(latent_dim), rng)
    labels = _split_labels(users, rng)

    features = {}
    for modality, dim in feature_dims.items():
        signal = item_factors @ (normal(latent_dim, dim) / math.sqrt(latent_dim))
        features[modality] = signal.add_(normal(num_items, dim), alpha=feature_noise)
    splits = [Interactions(users[labels == code], items[labels == code]) for code in range(3)]
    source = {
        "kind": "synthetic", "preset": preset, "num_users": num_users, "num_items": num_items,
        "num_interactions": num_interactions, "feature_dims": feature_dims, "latent_dim": latent_dim,
        "affinity": affinity, "item_exponent": item_exponent, "user_exponent": user_exponent,
        "min_user_degree": min_user_degree, "feature_noise": feature_noise, "seed": seed,
    }  # fmt: skip
    return Dataset(f"synthetic-{preset}", num_users, num_items, *splits, features=features, source=source)


def _user_degrees(rng, num_users, num_interactions, minimum, cap, exponent) -> np.ndarray:
    """(U,) int64 degrees >= minimum, <= cap, power-law distributed, summing to num_interactions."""
    extra_total = num_interactions - num_users * minimum
    weights = rng.pareto(exponent, num_users) + 1.0
    extra = np.minimum(np.floor(extra_total * weights / weights.sum()), cap - minimum).astype(np.int64)
    # hand out what rounding and the cap left over, one interaction per user, to users below the cap at random
    while (missing := extra_total - int(extra.sum())) > 0:
        open_users = np.flatnonzero(extra < cap - minimum)
        chosen = rng.choice(open_users, size=min(missing, open_users.size), replace=False)
        extra[chosen] += 1
    return extra + minimum


def _pick_items(user_factors, item_factors, log_popularity, degrees, scale, rng, chunk: int = 1024):
    """For each user u, degrees[u] distinct items by Gumbel top-k on scale * theta_u . phi_i + pi_i.

    Users are processed in chunks of similar degree (so each chunk's top-k is short), in float32.
    Returns (users, items), (E,) int64 each, grouped by user in order of increasing degree."""
    order = torch.from_numpy(np.argsort(degrees, kind="stable"))
    degrees_t = torch.from_numpy(degrees)
    item_factors_t = item_factors.T.contiguous()
    users_out, items_out = [], []
    for start in range(0, order.numel(), chunk):
        block = order[start:start + chunk]
        keys = torch.from_numpy(rng.random((block.numel(), item_factors_t.shape[1]), dtype=np.float32))
        keys.log_().neg_().log_().neg_()  # Gumbel(0, 1) noise; a 0 draw gives -inf, never picked
        keys.addmm_(user_factors[block], item_factors_t, alpha=scale).add_(log_popularity)
        block_degrees = degrees_t[block]
        top = torch.topk(keys, int(block_degrees.max()), dim=1).indices
        keep = torch.arange(top.shape[1]).unsqueeze(0) < block_degrees.unsqueeze(1)
        users_out.append(block.unsqueeze(1).expand_as(top)[keep])
        items_out.append(top[keep])
    return torch.cat(users_out), torch.cat(items_out)


def _split_labels(users: torch.Tensor, rng) -> torch.Tensor:
    """(E,) int64 x_labels 0/1/2: per user at random, 80/10/10 (n - 2 / 1 / 1 below 10 interactions)."""
    num = users.numel()
    order = np.lexsort((rng.random(num), users.numpy()))  # by user, random within a user
    sorted_users = users.numpy()[order]
    counts = np.bincount(sorted_users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(num) - starts[sorted_users]
    n = counts[sorted_users]
    held_out = np.where(n < 10, 1, np.round(0.1 * n)).astype(np.int64)  # valid and test each
    labels_sorted = np.where(rank < held_out, 2, np.where(rank < 2 * held_out, 1, 0))
    labels = np.empty(num, dtype=np.int64)
    labels[order] = labels_sorted
    return torch.from_numpy(labels)
