"""End-to-end benchmarks of every model (``mmrec_fast.models.MODELS``): time per training epoch and per full-ranking
evaluation, the same code with ``backend="native"`` and ``backend="reference"`` in the same run, and the peak
extra tensor memory of a training epoch.

Datasets:

* ``tiktok``: the real TikTok data (``../shared/data/tiktok``: 9,308 users, 6,710 items, 59,541 training pairs,
  image 128-d + audio 128-d); skipped when absent;
* ``baby-sized``: synthetic, the size of Amazon Baby with its feature shapes (19,445 users, 7,050 items, ~139k
  training pairs, image 4,096-d, text 384-d).

Each model trains with its own ``train_defaults()`` (SLMRec: batch 2048, Adam lr 0.01; LightGCN: batch 2048,
Adam lr 1e-3). The evaluation is that of the trainer (all valid users, top 50, training items excluded, 4 metrics
x 4 cut-offs), with ``topk_scores`` on the same backend as the model.

``pytest benchmarks/bench_models.py`` (or ``mmrec-fast bench models``) runs the cases one after the other (rounds
of one case, then the next); ``python benchmarks/bench_models.py [--rounds N] [--dataset D] [--model M]`` runs the
native and reference epochs interleaved (native, reference, native, ...), which a machine whose speed drifts needs
for a fair ratio, and prints their medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import DEVICE, data_root, peak_tensor_memory  # noqa: E402

import mmrec_fast  # noqa: E402
from mmrec_fast.data import load, synthetic  # noqa: E402
from mmrec_fast.models import MODELS  # noqa: E402
from mmrec_fast.train import TrainConfig, Trainer, seed_everything  # noqa: E402

#: the synthetic Baby-sized dataset: 184,500 interactions split 80/10/10 per user give ~139k training pairs
BABY_SIZED = dict(preset="baby-like", num_interactions=184_500, feature_dims={"image": 4096, "text": 384})
DATASETS = ("tiktok", "baby-sized")
LABELS = {"native": "mmrec_fast native", "reference": "reference backend"}
_cache: dict = {}


def dataset(name: str):
    if name not in _cache:
        if name == "tiktok":
            root = data_root()
            if root is None or not (root / "tiktok").is_dir():
                pytest.skip("../shared/data/tiktok not present (set MMREC_FAST_DATA)")
            _cache[name] = load(root / "tiktok")
        else:
            _cache[name] = synthetic(**BABY_SIZED)
    return _cache[name]


def trainer(dataset_name: str, model_name: str, backend: str) -> Trainer:
    """A trainer of model_name on the dataset with every op on ``backend`` (model and evaluation), seeded."""
    key = (dataset_name, model_name, backend)
    if key not in _cache:
        data = dataset(dataset_name)
        cls = MODELS[model_name]
        seed_everything(0)
        model = cls(data, backend=backend)
        config = TrainConfig.for_model(cls, eval_backend=backend, device=DEVICE, progress=False, verbose=False)
        _cache[key] = [Trainer(model, data, config), 0]
    return _cache[key]


def next_epoch(dataset_name: str, model_name: str, backend: str) -> float:
    """Train one more epoch; its seconds."""
    entry = trainer(dataset_name, model_name, backend)
    trainer_, epoch = entry
    entry[1] += 1
    start = time.perf_counter()
    trainer_.train_epoch(epoch)
    return time.perf_counter() - start


def check_backend(backend: str) -> None:
    if backend == "native" and DEVICE not in mmrec_fast.available()["native"]:
        pytest.skip("the native extension is not available")


@pytest.mark.parametrize("dataset_name", DATASETS)
@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("backend", list(LABELS), ids=list(LABELS.values()))  # first in the id: the ratio table's label
def test_training_epoch(benchmark, dataset_name, model_name, backend):
    check_backend(backend)
    benchmark.group = f"{model_name}: one training epoch, {dataset_name}"
    next_epoch(dataset_name, model_name, backend)  # warm-up (allocations, the graph's kernel arguments)
    start, peak = peak_tensor_memory(lambda: next_epoch(dataset_name, model_name, backend))
    benchmark.extra_info["peak_extra_mb"] = (peak - start) / 2**20
    rounds = 3 if backend == "native" else 2  # a reference epoch on the Baby-sized data takes minutes here
    benchmark.pedantic(lambda: next_epoch(dataset_name, model_name, backend), rounds=rounds, iterations=1)


@pytest.mark.parametrize("dataset_name", DATASETS)
@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("backend", list(LABELS), ids=list(LABELS.values()))  # first in the id: the ratio table's label
def test_full_evaluation(benchmark, dataset_name, model_name, backend):
    check_backend(backend)
    benchmark.group = f"{model_name}: full-ranking evaluation of the valid users, {dataset_name}"
    trainer_, _ = trainer(dataset_name, model_name, backend)
    benchmark.pedantic(lambda: trainer_.evaluate("valid"), rounds=3, iterations=1, warmup_rounds=1)


def interleaved(dataset_name: str, model_name: str, rounds: int) -> dict[str, list[float]]:
    """Epoch seconds of native and reference, alternating, after one warm-up epoch each."""
    times: dict[str, list[float]] = {"native": [], "reference": []}
    for backend in times:
        next_epoch(dataset_name, model_name, backend)
    for _ in range(rounds):
        for backend in times:
            times[backend].append(next_epoch(dataset_name, model_name, backend))
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="native and reference training epochs, interleaved")
    parser.add_argument("--dataset", choices=DATASETS, action="append")
    parser.add_argument("--model", choices=sorted(MODELS), action="append")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--flush-denormal", action="store_true",
                        help="torch.set_flush_denormal(True) for both backends: subnormal floats (the exps of "
                        "unnormalised logits, as in SLMRec's FAC task) slow plain PyTorch's CPU ops many times")  # fmt: skip
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        print("this CPU cannot flush subnormals; --flush-denormal has no effect")
    from mmrec_fast.train import machine

    print(f"machine: {machine(DEVICE)}; torch {torch.__version__}; flush denormal: {args.flush_denormal}")
    for dataset_name in args.dataset or DATASETS:
        for model_name in args.model or sorted(MODELS):
            times = interleaved(dataset_name, model_name, args.rounds)
            native, ref = statistics.median(times["native"]), statistics.median(times["reference"])
            print(f"{model_name} epoch, {dataset_name}: native median {native:.2f} s {[round(t, 2) for t in times['native']]}, "
                  f"reference median {ref:.2f} s {[round(t, 2) for t in times['reference']]}: {ref / native:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
