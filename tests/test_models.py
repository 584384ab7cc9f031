"""The model interface every model keeps (each model in MODELS): its Config (defaults, parsing, checks, round trip),
named losses that sum to calculate_loss, embeddings and full_sort_predict shapes, bitwise-reproducible training
steps on several threads, and graphs that follow the module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest
import torch

from mmrec_fast.data import SAMPLERS, synthetic
from mmrec_fast.models import MODELS, ConfigError, ModelConfig, build, model_class, option
from mmrec_fast.train import TrainConfig, seed_everything


@pytest.fixture(scope="module")
def dataset():
    return synthetic("small", num_users=300, num_items=120, num_interactions=4000,
                     feature_dims={"image": 16, "audio": 8, "text": 12}, seed=5)  # fmt: skip


def first_batch(model, dataset, batch_size):
    sampler = SAMPLERS[model.batch_kind](dataset.train, dataset.num_users, dataset.num_items, batch_size, seed=1)
    return next(sampler.epoch(0))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_interface(dataset, name):
    seed_everything(0)
    model = build(name, dataset)
    assert type(model) is model_class(name) and model.name == name and model.summary
    batch = first_batch(model, dataset, 64)
    assert batch.shape == (SAMPLERS[model.batch_kind].rows, 64)
    torch.manual_seed(1)  # the same draws for both calls (MENTOR's noise views and dropout are random)
    terms = model.losses(batch)
    assert terms and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    torch.manual_seed(1)
    torch.testing.assert_close(model.calculate_loss(batch), sum(terms.values()), rtol=0, atol=0)
    users, items = model.embeddings()
    assert users.shape[0] == dataset.num_users and items.shape == (dataset.num_items, users.shape[1])
    assert not users.requires_grad and not items.requires_grad
    assert model.full_sort_predict(torch.tensor([0, 7, 2])).shape == (3, dataset.num_items)
    described = model.describe()
    assert described["name"] == name and described["config"] == model.config.to_dict()
    assert described["parameters"] == sum(p.numel() for p in model.parameters())
    assert set(model.train_defaults()) <= {f for f in TrainConfig.__dataclass_fields__}
    TrainConfig.for_model(model)  # the defaults are a valid TrainConfig


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_config_round_trip_and_text(name):
    cls = model_class(name)
    config = cls.Config()
    assert cls.Config.from_dict(config.to_dict()) == config
    for field in cls.Config.describe():
        assert field["help"] and field["name"] in config.to_dict() and field["default"] == getattr(config, field["name"])
    assert config.parse({"dim": "32"}).dim == 32 and config.dim == 64  # configs are immutable; parse makes a copy
    with pytest.raises(ConfigError, match=f"{cls.__name__}.Config has no hyperparameter 'dimension'"):
        config.parse({"dimension": "32"})
    with pytest.raises(ConfigError, match="has no hyperparameter 'bogus'"):
        cls.Config.from_dict({**config.to_dict(), "bogus": 1})


def test_field_types_parse_and_check():
    @dataclass(frozen=True)
    class Config(ModelConfig):
        rate: float = option(0.1, "a rate", minimum=0.0, maximum=1.0)
        temperature: float = option(0.2, "positive", above=0.0)
        count: int = option(3, "a count", minimum=1)
        flag: bool = option(False, "a flag")
        kind: Literal["a", "b+c"] = option("a", "a choice")
        names: tuple[str, ...] | None = option(None, "names")

    config = Config().parse({"rate": "1e-2", "count": "7", "flag": "yes", "kind": "B+C", "names": "x, y", "temperature": "2"})
    assert config == Config(rate=0.01, temperature=2.0, count=7, flag=True, kind="b+c", names=("x", "y"))
    assert Config().parse({"names": "none"}).names is None and Config(count=2).rate == 0.1
    assert isinstance(Config(rate=1).rate, float)
    for changes, message in [
        ({"rate": "1.5"}, "rate must be <= 1.0, got 1.5"),
        ({"rate": "-1"}, "rate must be >= 0.0, got -1.0"),
        ({"temperature": "0"}, "temperature must be > 0.0, got 0.0"),
        ({"count": "2.5"}, "count must be an integer, got '2.5'"),
        ({"flag": "maybe"}, "flag must be true or false, got 'maybe'"),
        ({"kind": "d"}, "kind must be one of 'a', 'b\\+c'; got 'd'"),
        ({"rate": "fast"}, "rate must be a number, got 'fast'"),
        ({"rate": "inf"}, "rate must be a finite number, got inf"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Config().parse(changes)
    with pytest.raises(ConfigError, match="count must be an integer, got True"):
        Config(count=True)
    with pytest.raises(ConfigError, match="names must be a tuple of str, got 'x'"):
        Config(names="x")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_steps_are_bitwise_reproducible_on_several_threads(dataset, name):
    # a (2048, 64) gather has enough elements for torch to accumulate x[index]'s backward with atomic adds on two
    # threads; the models' index_select gathers add in order
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runs = []
        for _ in range(2):
            seed_everything(3)
            model = build(name, dataset)
            optimizers = model.optimizers(TrainConfig.for_model(model))
            sampler = SAMPLERS[model.batch_kind](dataset.train, dataset.num_users, dataset.num_items, 2048, seed=2)
            for batch in sampler.epoch(0):
                model.training_step(batch, optimizers)
            runs.append([p.detach().clone() for p in model.parameters()])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_double_precision_and_graphs_follow_the_module(dataset, name):
    seed_everything(0)
    model = build(name, dataset).double()
    assert all(p.dtype == torch.float64 for p in model.parameters())
    terms = model.losses(first_batch(model, dataset, 32))
    assert all(t.dtype == torch.float64 for t in terms.values())
    if torch.cuda.is_available():
        model = model.float().to("cuda")
        assert all(g.device.type == "cuda" for g in model._graphs.values())
        terms = model.losses(first_batch(model, dataset, 32).cuda())
        assert all(t.device.type == "cuda" for t in terms.values())


def test_unknown_model_and_config_type(dataset):
    with pytest.raises(ValueError, match="unknown model 'mmgcn'; available: freedom, lightgcn, mentor, mmssl, slmrec"):
        build("mmgcn", dataset)
    with pytest.raises(TypeError, match="LightGCN: config must be a LightGCN.Config, got Config"):
        build("lightgcn", dataset, model_class("slmrec").Config())
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        build("lightgcn", dataset, backend="cuda")
