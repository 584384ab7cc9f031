"""End-to-end benchmarks on the real Amazon Baby graph (19,445 users, 7,050 items, 118,551 training pairs):

* one LightGCN training epoch (batch 2048, d = 64, 3 layers, Adam; 58 batches): the same code with
  ``backend="native"`` and with ``backend="reference"`` (only the propagate backend differs);
* full-ranking evaluation of all test users (top 50, training items excluded, Recall/NDCG/Precision/MAP at
  5/10/20/50): ``mmrec_fast.evaluate`` (through ``topk_scores``) against the dense-batch evaluator that models
  MMRec's approach (``dense_batch_evaluator.py``: per 4096-user batch a matmul, ``-1e10`` mask, ``torch.topk(50)``,
  then a per-user Python hit loop and numpy metrics), both given the same embeddings; their metrics are checked to
  agree first.
"""

from __future__ import annotations

import pytest
import torch

import mmrec_fast
from mmrec_fast.data import BPRSampler, load
from mmrec_fast.evaluate import evaluate
from mmrec_fast.models import LightGCN

from conftest import data_root
from dense_batch_evaluator import DenseBatchEvaluator

_cache: dict = {}


def baby():
    if "baby" not in _cache:
        root = data_root()
        if root is None or not (root / "baby" / "baby.inter").exists():
            pytest.skip("../shared/data/baby/baby.inter not present (set MMREC_FAST_DATA)")
        _cache["baby"] = load(root / "baby")
    return _cache["baby"]


def epoch_runner(backend: str):
    dataset = baby()
    torch.manual_seed(0)
    model = LightGCN(dataset, backend=backend)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sampler = BPRSampler(dataset.train, dataset.num_users, dataset.num_items, 2048, seed=0)
    epochs = iter(range(10**6))

    def one_epoch():
        for batch in sampler.epoch(next(epochs)):
            optimizer.zero_grad(set_to_none=True)
            model.calculate_loss(batch).backward()
            optimizer.step()

    return one_epoch


EPOCH_BACKENDS = ["mmrec_fast native-baby", "reference backend-baby"]  # "-": the ratio table splits labels there


@pytest.mark.parametrize("name", EPOCH_BACKENDS)
def test_lightgcn_epoch_baby(benchmark, name):
    if "native" in name and "cpu" not in mmrec_fast.available()["native"]:
        pytest.skip("the native extension is not available")
    benchmark.group = "LightGCN epoch, Baby train split, batch 2048, d 64, 3 layers"
    run = epoch_runner("native" if "native" in name else "reference")
    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)  # a reference epoch takes a minute or more here


def embeddings():
    if "embeddings" not in _cache:
        torch.manual_seed(0)
        model = LightGCN(baby())
        _cache["embeddings"] = model.embeddings()
    return _cache["embeddings"]


def test_evaluators_agree():
    users, items = embeddings()
    ours = evaluate((users, items), baby(), "test")
    theirs = DenseBatchEvaluator(baby(), "test")(users, items)
    assert ours.keys() == theirs.keys()
    for name in ours:  # the dense-batch evaluator rounds to 4 decimals, as MMRec
        assert abs(ours[name] - theirs[name]) <= 6e-5, (name, ours[name], theirs[name])


@pytest.mark.parametrize("name", ["mmrec_fast evaluate (topk_scores)-baby", "dense batch evaluator (MMRec's approach)-baby"])
def test_evaluate_all_baby_users(benchmark, name):
    benchmark.group = "evaluate all Baby test users: top 50, train excluded, 4 metrics x 4 cut-offs"
    users, items = embeddings()
    if name.startswith("mmrec_fast"):
        benchmark.pedantic(lambda: evaluate((users, items), baby(), "test"), rounds=3, iterations=1, warmup_rounds=1)
    else:
        evaluator = DenseBatchEvaluator(baby(), "test")
        benchmark.pedantic(lambda: evaluator(users, items), rounds=3, iterations=1, warmup_rounds=1)
