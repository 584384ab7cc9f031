"""The trainer: exact resume, early stopping with best-model restore, the run record, checkpoints, and models with
only MMRec's interface."""

from __future__ import annotations

import json

import pytest
import torch

from mmrec_fast.data import synthetic
from mmrec_fast.evaluate import evaluate
from mmrec_fast.models import LightGCN
from mmrec_fast.train import TrainConfig, Trainer, load_checkpoint, seed_everything


@pytest.fixture(scope="module")
def dataset():
    return synthetic("small", num_users=200, num_items=100, num_interactions=2400, feature_dims={}, seed=3)


def quiet(**overrides) -> TrainConfig:
    settings = dict(batch_size=256, lr=5e-3, ks=(5, 20), progress=False, verbose=False)
    settings.update(overrides)
    return TrainConfig(**settings)


class DropoutMF(torch.nn.Module):
    """A model with only MMRec's interface and randomness of its own (dropout draws from torch's global RNG, and
    numpy's / Python's generators are consumed too), to check that resuming restores every RNG."""

    def __init__(self, num_users, num_items, dim=8):
        super().__init__()
        self.users = torch.nn.Parameter(torch.randn(num_users, dim) * 0.1)
        self.items = torch.nn.Parameter(torch.randn(num_items, dim) * 0.1)

    def calculate_loss(self, batch):
        import random

        import numpy as np

        scale = 1.0 + 1e-3 * (random.random() + np.random.rand())
        u = torch.nn.functional.dropout(self.users[batch[0]], 0.3, self.training) * scale
        return torch.nn.functional.softplus((u * self.items[batch[2]]).sum(1) - (u * self.items[batch[1]]).sum(1)).mean()

    def full_sort_predict(self, users):
        return self.users[users] @ self.items.T


@pytest.mark.parametrize("model_kind", ["lightgcn", "dropout_mf"])
def test_resume_gives_the_same_next_epoch_as_an_uninterrupted_run(dataset, tmp_path, model_kind):
    def make(seed):
        seed_everything(seed)
        if model_kind == "lightgcn":
            return LightGCN.from_dataset(dataset, dim=16)
        return DropoutMF(dataset.num_users, dataset.num_items)

    straight = Trainer(make(0), dataset, quiet(epochs=3))
    straight.fit()
    interrupted = Trainer(make(0), dataset, quiet(epochs=2, out_dir=str(tmp_path / "run")))
    interrupted.fit()
    seed_everything(123)  # the RNG states must come from the checkpoint, not from here
    torch.rand(7)
    resumed = Trainer(make(99), dataset, quiet(epochs=3, out_dir=str(tmp_path / "run")))
    resumed.resume(tmp_path / "run" / "last.pt")
    assert resumed.epoch == 1
    record = resumed.fit()
    assert [e["loss"] for e in record["epochs"]] == [e["loss"] for e in straight.history]  # bitwise, epoch 2 included
    assert record["epochs"][2]["valid"] == straight.history[2]["valid"]
    assert record["resumed_from"].endswith("last.pt")
    for mine, theirs in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(mine, theirs)


def test_early_stopping_restores_the_best_model(dataset, tmp_path):
    seed_everything(0)
    model = LightGCN.from_dataset(dataset, dim=16)
    # a learning rate this large makes validation recall fall after the first epochs
    trainer = Trainer(model, dataset, quiet(epochs=30, lr=0.5, patience=3, out_dir=str(tmp_path)))
    record = trainer.fit()
    assert record["stopped_early"] and record["epochs_run"] < 30
    best = record["best_epoch"]
    scores = [e["valid"]["recall@20"] for e in record["epochs"]]
    assert scores[best] == max(scores)
    assert record["epochs_run"] == best + 1 + 3  # three validations without improvement after the best
    assert evaluate(model, dataset, "valid", ks=(5, 20)) == record["best_valid"]  # the best model is back
    assert evaluate(model, dataset, "test", ks=(5, 20)) == record["test"]
    best_checkpoint = load_checkpoint(tmp_path / "best.pt")
    assert best_checkpoint["epoch"] == best and "optimizer_state" not in best_checkpoint
    for name, tensor in best_checkpoint["model_state"].items():
        assert torch.equal(tensor, model.state_dict()[name])
    with pytest.raises(ValueError, match="a best-model checkpoint cannot resume training"):
        trainer.resume(tmp_path / "best.pt")


def test_the_run_record(dataset, tmp_path):
    seed_everything(0)
    Trainer(LightGCN.from_dataset(dataset, dim=16), dataset, quiet(epochs=2, eval_every=2, out_dir=str(tmp_path))).fit()
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["format"] == "mmrec_fast.run/1" and record["finished"]
    assert record["config"]["epochs"] == 2 and record["config"]["ks"] == [5, 20]
    assert record["model"] == {"name": "lightgcn", "hyperparameters": {"dim": 16, "num_layers": 3, "reg_weight": 1e-4, "backend": None},
                               "parameters": 300 * 16}  # fmt: skip
    assert record["dataset"]["users"] == 200 and record["dataset"]["source"]["kind"] == "synthetic"
    assert [sorted(e) for e in record["epochs"]] == [
        ["epoch", "interactions_per_second", "loss", "train_seconds"],
        ["best", "epoch", "eval_seconds", "interactions_per_second", "loss", "train_seconds", "valid"],
    ]
    assert set(record["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in (5, 20)}
    environment = record["environment"]
    assert {"mmrec_fast", "torch", "numpy", "python", "machine", "backends"} <= set(environment)
    assert set(environment["backends"]) == {"propagate", "topk_scores"}
    assert record["mean_epoch_seconds"] > 0 and record["best_epoch"] == 1


def test_models_with_only_the_mmrec_interface_train(dataset):
    seed_everything(0)
    model = DropoutMF(dataset.num_users, dataset.num_items)
    record = Trainer(model, dataset, quiet(epochs=3, lr=2e-2)).fit()
    assert record["epochs"][-1]["loss"] < record["epochs"][0]["loss"]
    assert record["test"]["recall@20"] > 0


class Diverging(DropoutMF):
    def calculate_loss(self, batch):
        return super().calculate_loss(batch) * float("nan")


def test_a_nan_loss_stops_training(dataset):
    with pytest.raises(FloatingPointError, match="the loss is nan at epoch 0, batch 0"):
        Trainer(Diverging(dataset.num_users, dataset.num_items), dataset, quiet(epochs=1)).fit()


def test_bad_configuration():
    with pytest.raises(ValueError, match="valid_metric 'ndcg@10' is not computed"):
        TrainConfig(ks=(5, 20), valid_metric="ndcg@10")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="patience must be >= 1"):
        TrainConfig(patience=0)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable mmrec_fast checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an mmrec_fast checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_resume_refuses_another_dataset(dataset, tmp_path):
    seed_everything(0)
    Trainer(LightGCN.from_dataset(dataset, dim=16), dataset, quiet(epochs=1, out_dir=str(tmp_path))).fit()
    other = synthetic("small", num_users=200, num_items=100, num_interactions=2400, feature_dims={}, seed=4)
    trainer = Trainer(LightGCN.from_dataset(other, dim=16), other, quiet(epochs=2))
    with pytest.raises(ValueError, match="last.pt: trained on .*'seed': 3.*not on this dataset"):
        trainer.resume(tmp_path / "last.pt")
