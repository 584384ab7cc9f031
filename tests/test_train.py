"""The trainer: exact resume (one optimizer or several), early stopping with best-model restore, the run record with
each loss term, the model's training defaults and the caller's overrides, checkpoints and their refusals, the
epoch hooks and both batch kinds."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

from mmrec_fast.data import synthetic
from mmrec_fast.evaluate import evaluate
from mmrec_fast.models import LightGCN, ModelConfig, Recommender, option
from mmrec_fast.train import TrainConfig, Trainer, load_checkpoint, model_from_checkpoint, seed_everything


@pytest.fixture(scope="module")
def dataset():
    return synthetic("small", num_users=200, num_items=100, num_interactions=2400, feature_dims={}, seed=3)


def quiet(**overrides) -> TrainConfig:
    settings = dict(batch_size=256, lr=5e-3, ks=(5, 20), progress=False, verbose=False)
    settings.update(overrides)
    return TrainConfig(**settings)


class DropoutMF(Recommender):
    """Matrix factorisation with randomness of its own (dropout draws from torch's global RNG, and numpy's / Python's
    generators are consumed too), to check that resuming restores every RNG; it records its hooks' calls."""

    name = "dropout_mf"

    @dataclass(frozen=True)
    class Config(ModelConfig):
        dim: int = option(8, "embedding size", minimum=1)

    def __init__(self, dataset, config=None, **changes):
        super().__init__(dataset, config, **changes)
        self.users = torch.nn.Parameter(torch.randn(self.num_users, self.config.dim) * 0.1)
        self.items = torch.nn.Parameter(torch.randn(self.num_items, self.config.dim) * 0.1)
        self.calls = []

    def losses(self, batch):
        import random

        import numpy as np

        scale = 1.0 + 1e-3 * (random.random() + np.random.rand())
        u = torch.nn.functional.dropout(self.users[batch[0]], 0.3, self.training) * scale
        bpr = torch.nn.functional.softplus((u * self.items[batch[2]]).sum(1) - (u * self.items[batch[1]]).sum(1)).mean()
        return {"bpr": bpr, "l2": 1e-3 * u.square().mean()}

    def embeddings(self):
        return self.users.detach(), self.items.detach()

    def pre_epoch(self, epoch):
        self.calls.append(("pre", epoch, self.training))

    def post_epoch(self, epoch):
        self.calls.append(("post", epoch, self.training))


class TwoOptimizers(DropoutMF):
    """Users and items on optimizers of their own, items stepped every other batch (as a model with a
    discriminator would override training_step)."""

    name = "two_optimizers"
    batch_kind = "pairs"

    def __init__(self, dataset, config=None, **changes):
        super().__init__(dataset, config, **changes)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))  # in the state: resumes with the model

    def losses(self, batch):
        u, i = self.users[batch[0]], self.items[batch[1]]
        return {"pull": -torch.nn.functional.logsigmoid((u * i).sum(1)).mean(), "spread": (u @ i.T).square().mean() * 1e-2}

    def optimizers(self, train_config):
        return {"users": torch.optim.Adam([self.users], lr=train_config.lr),
                "items": torch.optim.SGD([self.items], lr=10 * train_config.lr, momentum=0.9)}  # fmt: skip

    def training_step(self, batch, optimizers):
        for optimizer in optimizers.values():
            optimizer.zero_grad()
        terms = self.losses(batch)
        sum(terms.values()).backward()
        optimizers["users"].step()
        self.steps += 1
        if int(self.steps) % 2 == 0:
            optimizers["items"].step()
        return {name: float(value.detach()) for name, value in terms.items()}


MODELS = {"lightgcn": lambda d: LightGCN(d, dim=16), "dropout_mf": DropoutMF, "two_optimizers": TwoOptimizers}


@pytest.mark.parametrize("model_kind", sorted(MODELS))
def test_resume_gives_the_same_next_epoch_as_an_uninterrupted_run(dataset, tmp_path, model_kind):
    def make(seed):
        seed_everything(seed)
        return MODELS[model_kind](dataset)

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
    assert [e["losses"] for e in record["epochs"]] == [e["losses"] for e in straight.history]  # bitwise, epoch 2 included
    assert record["epochs"][2]["valid"] == straight.history[2]["valid"]
    assert record["resumed_from"].endswith("last.pt")
    for mine, theirs in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(mine, theirs)


def test_the_hooks_and_the_batch_kinds(dataset):
    seed_everything(0)
    model = DropoutMF(dataset)
    trainer = Trainer(model, dataset, quiet(epochs=2))
    trainer.fit()
    assert model.calls == [("pre", 0, True), ("post", 0, True), ("pre", 1, True), ("post", 1, True)]
    assert next(trainer.sampler.epoch(0)).shape == (3, 256)
    pairs = Trainer(TwoOptimizers(dataset), dataset, quiet(epochs=1))
    assert next(pairs.sampler.epoch(0)).shape == (2, 256)
    assert set(pairs.optimizers) == {"users", "items"}


def test_early_stopping_restores_the_best_model(dataset, tmp_path):
    seed_everything(0)
    model = LightGCN(dataset, dim=16)
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
    assert best_checkpoint["epoch"] == best and "optimizer_states" not in best_checkpoint
    for name, tensor in best_checkpoint["model_state"].items():
        assert torch.equal(tensor, model.state_dict()[name])
    rebuilt, _ = model_from_checkpoint(tmp_path / "best.pt", dataset)
    assert rebuilt.config == model.config and evaluate(rebuilt, dataset, "test", ks=(5, 20)) == record["test"]
    with pytest.raises(ValueError, match="a best-model checkpoint cannot resume training"):
        trainer.resume(tmp_path / "best.pt")


def test_the_run_record(dataset, tmp_path):
    seed_everything(0)
    overrides = {"epochs": 2, "eval_every": 2, "batch_size": 256, "ks": (5, 20)}
    config = TrainConfig.for_model(LightGCN, **overrides, progress=False, verbose=False, out_dir=str(tmp_path))
    Trainer(LightGCN(dataset, dim=16), dataset, config, overrides=overrides).fit()
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["format"] == "mmrec_fast.run/2" and record["finished"]
    assert record["config"]["epochs"] == 2 and record["config"]["ks"] == [5, 20]
    assert record["overrides"] == {"epochs": 2, "eval_every": 2, "batch_size": 256, "ks": [5, 20]}
    assert record["train_defaults"] == {}
    assert record["model"] == {"name": "lightgcn", "config": {"dim": 16, "num_layers": 3, "reg_weight": 1e-4, "init": "normal",
                                                              "l2": "squared"},
                               "modalities": [], "backend": None, "parameters": 300 * 16}  # fmt: skip
    assert record["dataset"]["users"] == 200 and record["dataset"]["source"]["kind"] == "synthetic"
    assert [sorted(e) for e in record["epochs"]] == [
        ["epoch", "interactions_per_second", "loss", "losses", "train_seconds"],
        ["best", "epoch", "eval_seconds", "interactions_per_second", "loss", "losses", "train_seconds", "valid"],
    ]
    for entry in record["epochs"]:
        assert sorted(entry["losses"]) == ["bpr", "l2"]
        assert entry["loss"] == pytest.approx(sum(entry["losses"].values()), rel=1e-12)
        assert 0 < entry["losses"]["l2"] < entry["losses"]["bpr"]
    assert set(record["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in (5, 20)}
    environment = record["environment"]
    assert {"mmrec_fast", "torch", "numpy", "python", "machine", "backends"} <= set(environment)
    assert set(environment["backends"]) == {"propagate", "topk_scores"}  # LightGCN's ops and evaluation's
    assert record["mean_epoch_seconds"] > 0 and record["best_epoch"] == 1


def test_the_model_training_defaults_apply_unless_overridden():
    class Picky(DropoutMF):
        @classmethod
        def train_defaults(cls):
            return {"lr": 1e-4, "valid_metric": "recall@10", "patience": 7, "optimizer": "adamw"}

    config = TrainConfig.for_model(Picky, lr=3e-3)
    assert (config.lr, config.valid_metric, config.patience, config.optimizer, config.batch_size) == (3e-3, "recall@10", 7, "adamw", 2048)
    with pytest.raises(ValueError, match="TrainConfig has no field 'learning_rate'"):
        TrainConfig.for_model(Picky, learning_rate=1.0)


def test_fused_optimizer_is_a_training_option(dataset):
    """fused_optimizer builds torch's fused Adam / AdamW (every optimizer of a model), the same update up to
    rounding; off, the for-each form as before (bitwise the published runs)."""
    from mmrec_fast.models import FREEDOM, MMSSL

    def train_once(fused):
        seed_everything(0)
        trainer = Trainer(LightGCN(dataset, dim=16), dataset, quiet(epochs=1, fused_optimizer=fused))
        assert all(o.defaults.get("fused") is (True if fused else None) for o in trainer.optimizers.values())
        trainer.fit()
        return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])

    plain, fused = train_once(False), train_once(True)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    assert FREEDOM.train_defaults()["fused_optimizer"] and MMSSL.train_defaults()["fused_optimizer"]
    assert not TrainConfig().fused_optimizer


def test_a_nan_loss_stops_training_before_any_update(dataset):
    class Diverging(DropoutMF):
        def losses(self, batch):
            terms = super().losses(batch)
            return {**terms, "bpr": terms["bpr"] * float("nan")}

    seed_everything(0)
    model = Diverging(dataset)
    before = model.users.detach().clone()
    with pytest.raises(FloatingPointError, match=r"the loss is nan \(bpr nan, l2 .*\) at epoch 0, batch 0"):
        Trainer(model, dataset, quiet(epochs=1)).fit()
    assert torch.equal(model.users, before)


def test_bad_configuration(dataset):
    with pytest.raises(ValueError, match="valid_metric 'ndcg@10' is not computed"):
        TrainConfig(ks=(5, 20), valid_metric="ndcg@10")
    with pytest.raises(ValueError, match="optimizer must be one of"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="negatives must be one of"):
        TrainConfig(negatives="popular")
    with pytest.raises(ValueError, match="patience must be >= 1"):
        TrainConfig(patience=0)
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(TypeError, match="Trainer trains a mmrec_fast.models.Recommender, got Linear"):
        Trainer(torch.nn.Linear(2, 2), dataset)
    other = synthetic("small", num_users=100, num_items=100, num_interactions=1200, feature_dims={}, seed=3)
    with pytest.raises(ValueError, match="built for 100 users x 100 items, the dataset has 200 x 100"):
        Trainer(DropoutMF(other), dataset)


def test_checkpoint_errors(dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable mmrec_fast checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an mmrec_fast checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "mmrec_fast.checkpoint/2", "model_name": "lightgcn"}, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="damaged checkpoint: no 'model_config'"):
        load_checkpoint(tmp_path / "damaged.pt")
    torch.save({"format": "mmrec_fast.checkpoint/2", "model": dataset}, tmp_path / "pickled.pt")  # a Python object
    with pytest.raises(ValueError, match=r"not a readable mmrec_fast checkpoint \(it holds Python objects"):
        load_checkpoint(tmp_path / "pickled.pt")


def test_resume_refuses_what_does_not_fit(dataset, tmp_path):
    seed_everything(0)
    Trainer(LightGCN(dataset, dim=16), dataset, quiet(epochs=1, out_dir=str(tmp_path))).fit()
    last = tmp_path / "last.pt"
    other = synthetic("small", num_users=200, num_items=100, num_interactions=2400, feature_dims={}, seed=4)
    with pytest.raises(ValueError, match="last.pt: trained on .*'seed': 3.*not on this dataset"):
        Trainer(LightGCN(other, dim=16), other, quiet(epochs=2)).resume(last)
    with pytest.raises(ValueError, match="last.pt: the checkpoint's lightgcn has dim=16, this one dim=8"):
        Trainer(LightGCN(dataset, dim=8), dataset, quiet(epochs=2)).resume(last)
    with pytest.raises(ValueError, match="last.pt: a lightgcn checkpoint, but this trainer trains dropout_mf"):
        Trainer(DropoutMF(dataset), dataset, quiet(epochs=2)).resume(last)
    state = torch.load(last, weights_only=True)
    state["model_state"]["embedding"] = torch.zeros(5, 16)
    torch.save(state, tmp_path / "shapes.pt")
    with pytest.raises(ValueError, match=r"embedding has shape \(5, 16\) in the checkpoint but \(300, 16\)"):
        Trainer(LightGCN(dataset, dim=16), dataset, quiet(epochs=2)).resume(tmp_path / "shapes.pt")
    del state["model_state"]["embedding"]
    torch.save(state, tmp_path / "keys.pt")
    with pytest.raises(ValueError, match=r"model state does not fit this LightGCN \(no 'embedding'\)"):
        model_from_checkpoint(tmp_path / "keys.pt", dataset)
