"""The size of MMSSL's +1e-8 inside the contrastive loss's log, on a trained model (a checkpoint) and its data.

MMSSL computes -log(p + 1e-8) where the exact InfoNCE is -log p (``main.py`` L244). The model reproduces it exactly
(``log_eps``; the row loss l of :func:`mmrec_fast.info_nce` becomes l - log1p(1e-8 e^l)); this measures what the
difference is worth: over one epoch of MMSSL's batches (training mode, no update) it prints, per modality, the mean
row loss l, the mean and largest |log1p(1e-8 e^l)| (the change of a row's loss) and the smallest gradient factor
p / (p + 1e-8) = 1 / (1 + 1e-8 e^l) (how much the +1e-8 shrinks a row's gradient), and the change of the "cl" term.

    python benchmarks/mmssl_log_eps.py --checkpoint /work/runs/mmssl/tiktok_persistent/best.pt [--batches N]
"""

from __future__ import annotations

import argparse
import sys

import torch


def measure(model, dataset, batch_size: int, batches: int | None = None, seed: int = 0) -> dict:
    from mmrec_fast.data import UserSampler
    from mmrec_fast.models.base import rows
    from mmrec_fast.models.mmssl import log_eps_shift

    sampler = UserSampler(dataset.train, dataset.num_users, dataset.num_items, batch_size, seed=seed)
    model.train()
    found = {m: [] for m in model.modalities}
    with torch.no_grad():
        for index, batch in enumerate(sampler.epoch(0)):
            if batches is not None and index >= batches:
                break
            out = model.propagate_all()
            users = batch[0]
            final = rows(out["users"], users)
            for modality, view in zip(model.modalities, out["user_views"]):
                found[modality].append(model.contrastive_rows(rows(view, users), final).double())
    eps = model.config.log_eps if model.config.log_eps > 0 else 1e-8
    result = {}
    for modality, parts in found.items():
        losses = torch.cat(parts)
        shift = log_eps_shift(losses, eps)
        result[modality] = {"rows": losses.numel(), "mean_row_loss": losses.mean().item(), "mean_shift": shift.mean().item(),
                            "max_shift": shift.max().item(), "min_gradient_factor": (1 / (1 + eps * torch.exp(losses))).min().item()}  # fmt: skip
    result["cl_term_change"] = model.config.cl_rate * sum(r["mean_shift"] for r in result.values())
    return result


def main(argv=None) -> int:
    from mmrec_fast import data
    from mmrec_fast.train import load_checkpoint, model_from_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--batches", type=int, help="only the first N batches of the epoch")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    state = load_checkpoint(args.checkpoint)
    dataset = data.from_source(state["dataset_source"])
    model, _ = model_from_checkpoint(args.checkpoint, dataset, state=state)
    result = measure(model, dataset, state["config"]["batch_size"], args.batches)  # the run's batches
    for name, value in result.items():
        print(name, value)
    return 0


if __name__ == "__main__":
    sys.exit(main())
