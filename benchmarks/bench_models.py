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

MENTOR at Sports size (``sports-sized``: synthetic, 35,598 users, 18,357 items, ~256k training pairs, image 4,096-d,
text 384-d): the peak extra tensor memory of one training step on the native path, whose full-population InfoNCE
over all users and all items holds no U x U or I x I matrix, against the reference path's, which does (one fp32
U x U matrix is 4.7 GiB there). The reference step is not run at full size (it would need most of a 24 GB machine):
``python benchmarks/bench_models.py --mentor-sports-memory`` measures both paths on Sports-shaped data at 1/8, 1/4
and 1/2 of the size, fits the reference's peak as a + b s + c s^2 in the scale s (exact through the three points:
its U x U and I x I terms are quadratic) and extrapolates it to s = 1, and measures the native path at full size.

``pytest benchmarks/bench_models.py`` (or ``mmrec-fast bench models``) runs the cases one after the other (rounds
of one case, then the next); ``python benchmarks/bench_models.py [--rounds N] [--dataset D] [--model M]`` runs the
native and reference epochs interleaved (native, reference, native, ...), which a machine whose speed drifts needs
for a fair ratio, and prints their medians; ``--steps N`` times N training steps instead of whole epochs (a
MENTOR epoch on the Baby-sized data is 69 steps of several seconds each on the native path). ``--profile N`` splits
the time of N training steps into the model's profiler sections (MMSSL: propagation, similarity rows, discriminator,
contrastive loss, augmentation, optimizer), each with its backward, on both backends.
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
#: Amazon Sports' sizes (MMSSL / MMRec): 296,337 interactions split 80/10/10 per user give ~256k training pairs
SPORTS_SIZED = dict(preset="sports-like", num_users=35_598, num_items=18_357, num_interactions=296_337,
                    feature_dims={"image": 4096, "text": 384})  # fmt: skip
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


def next_steps(dataset_name: str, model_name: str, backend: str, steps: int) -> float:
    """Run ``steps`` more training steps (the trainer's batches, in epoch order, each epoch after its pre_epoch
    hook); their seconds."""
    entry = trainer(dataset_name, model_name, backend)
    trainer_ = entry[0]
    batches = _cache.setdefault(("batches", dataset_name, model_name, backend), [iter(())])
    trainer_.model.train()
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches[0], None)
        if batch is None:
            trainer_.model.pre_epoch(entry[1])
            batches[0] = iter(trainer_.sampler.epoch(entry[1], trainer_.device))
            entry[1] += 1
            batch = next(batches[0])
        trainer_.model.training_step(batch, trainer_.optimizers)
    return time.perf_counter() - start


def mentor_step_memory(scale: float, backends=("native", "reference")) -> dict:
    """Peak extra tensor memory (MiB) of one MENTOR training step (forward + backward, batch 2048) on Sports-shaped
    synthetic data scaled by ``scale`` (users, items and interactions), per backend; and the sizes."""
    from mmrec_fast.data import BPRSampler
    from mmrec_fast.models import MENTOR

    users, items, interactions = (round(SPORTS_SIZED[k] * scale) for k in ("num_users", "num_items", "num_interactions"))
    data = synthetic(**{**SPORTS_SIZED, "num_users": users, "num_items": items, "num_interactions": interactions})
    seed_everything(0)
    model = MENTOR(data, backend="native").to(DEVICE)  # (the reference kNN graph would build the I x I cosine matrix)
    batch = next(BPRSampler(data.train, users, items, 2048, seed=0, negatives="train_items").epoch(0, DEVICE))
    result = {"scale": scale, "users": users, "items": items, "train_pairs": len(data.train),
              "user_by_user_mib": users * users * 4 / 2**20, "item_by_item_mib": items * items * 4 / 2**20}  # fmt: skip
    for backend in backends:
        model.backend = backend

        def step():
            model.zero_grad(set_to_none=True)
            sum(model.losses(batch).values()).backward()

        started = time.perf_counter()
        start, peak = peak_tensor_memory(step)
        result[f"{backend}_peak_extra_mib"] = (peak - start) / 2**20
        result[f"{backend}_step_seconds"] = time.perf_counter() - started  # (with the profiler's overhead)
    return result


def mentor_sports_memory(log=print) -> dict:
    """The native path measured at full Sports size; the reference path measured at 1/8, 1/4, 1/2 and its peak
    extrapolated to full size by the exact quadratic through the three points (see the module docstring)."""
    import numpy as np

    small = [mentor_step_memory(scale) for scale in (0.125, 0.25, 0.5)]
    for row in small:
        log(f"  scale {row['scale']}: {row['users']} users, {row['items']} items: native {row['native_peak_extra_mib']:.0f} MiB, "
            f"reference {row['reference_peak_extra_mib']:.0f} MiB (U x U fp32 {row['user_by_user_mib']:.0f} MiB)")
    scales = np.array([row["scale"] for row in small])
    coefficients = np.polyfit(scales, [row["reference_peak_extra_mib"] for row in small], 2)
    full = mentor_step_memory(1.0, backends=("native",))
    full["reference_peak_extra_mib_extrapolated"] = float(np.polyval(coefficients, 1.0))
    full["reference_fit_mib"] = {"c": coefficients[0], "b": coefficients[1], "a": coefficients[2]}
    full["measured_below_full_size"] = small
    return full


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


def test_mentor_sports_sized_step_memory(benchmark):
    """MENTOR at Sports size, native path: one training step's peak extra memory (no U x U or I x I matrix), against
    the reference path's measured at a quarter of the size (its full-size need: ``--mentor-sports-memory``)."""
    check_backend("native")
    benchmark.group = "mentor: one training step at Sports size (peak extra memory in extra_info)"
    full = mentor_step_memory(1.0, backends=("native",))
    quarter = mentor_step_memory(0.25)
    benchmark.extra_info.update({"native_peak_extra_mib": full["native_peak_extra_mib"],
                                 "user_by_user_fp32_mib": full["user_by_user_mib"], "quarter_size": quarter})  # fmt: skip
    assert full["native_peak_extra_mib"] < full["user_by_user_mib"]
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def step_profile(dataset_name: str, model_name: str, backend: str, steps: int) -> dict[str, float]:
    """Seconds of ``steps`` training steps by section: the model's named profiler ranges (``<model>.<section>``,
    e.g. MMSSL's propagation, similarity_rows, discriminator, contrastive, augmentation, optimizer), each with the
    backward of what ran inside it (a backward node is matched to its forward op by autograd's sequence number);
    "other" is the rest of the steps' time (the loss terms outside any range, the batch's exclusion graph, Python).
    The steps run under torch's profiler, whose overhead is in every section; the shares are what it is for."""
    from torch.profiler import ProfilerActivity, profile

    prefix = f"{model_name}."
    next_steps(dataset_name, model_name, backend, 1)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        next_steps(dataset_name, model_name, backend, steps)
        total = time.perf_counter() - started
    events = prof.events()

    def section_of(event):
        while event is not None:
            if event.name.startswith(prefix):
                return event.name[len(prefix):]
            event = event.cpu_parent
        return None

    forward_section = {}  # autograd sequence number of a forward op -> its section
    seconds: dict[str, float] = {}
    for event in events:
        name = section_of(event)
        if event.name.startswith(prefix) and section_of(event.cpu_parent) is None:  # an outermost range
            seconds[name] = seconds.get(name, 0.0) + event.cpu_time_total / 1e6
        elif name is not None and event.sequence_nr >= 0 and not event.name.startswith("autograd::"):
            forward_section.setdefault(event.sequence_nr, name)
    for event in events:  # backward nodes outside every range (inside one they are that range's time already)
        if event.name.startswith("autograd::engine::evaluate_function") and section_of(event) is None:
            name = forward_section.get(event.sequence_nr)
            if name is not None:
                seconds[name] = seconds.get(name, 0.0) + event.cpu_time_total / 1e6
    seconds = dict(sorted(seconds.items(), key=lambda item: -item[1]))
    seconds["other"] = total - sum(seconds.values())
    seconds["total"] = total
    return seconds


def interleaved(dataset_name: str, model_name: str, rounds: int, steps: int | None = None) -> dict[str, list[float]]:
    """Epoch seconds (or the seconds of ``steps`` training steps) of native and reference, alternating, after one
    warm-up round each."""
    run = next_epoch if steps is None else (lambda *key: next_steps(*key, steps))
    times: dict[str, list[float]] = {"native": [], "reference": []}
    for backend in times:
        run(dataset_name, model_name, backend)
    for _ in range(rounds):
        for backend in times:
            times[backend].append(run(dataset_name, model_name, backend))
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="native and reference training epochs, interleaved")
    parser.add_argument("--dataset", choices=DATASETS, action="append")
    parser.add_argument("--model", choices=sorted(MODELS), action="append")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, help="time this many training steps a round instead of an epoch")
    parser.add_argument("--mentor-sports-memory", action="store_true",
                        help="MENTOR's peak step memory at Sports size, native vs reference (see the docstring)")
    parser.add_argument("--profile", type=int, metavar="STEPS",
                        help="instead: the time of STEPS training steps by the model's sections, native and reference")
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
    if args.mentor_sports_memory:
        import json

        print(json.dumps(mentor_sports_memory(), indent=1, default=float), flush=True)
        return 0
    if args.profile:
        for dataset_name in args.dataset or DATASETS:
            for model_name in args.model or ["mmssl"]:
                for backend in ("native", "reference"):
                    seconds = step_profile(dataset_name, model_name, backend, args.profile)
                    total = seconds.pop("total")
                    parts = ", ".join(f"{name} {value:.2f} s ({100 * value / total:.0f}%)" for name, value in seconds.items())
                    print(f"{model_name} {backend}, {dataset_name}: {args.profile} steps {total:.2f} s: {parts}", flush=True)
        return 0
    for dataset_name in args.dataset or DATASETS:
        for model_name in args.model or sorted(MODELS):
            times = interleaved(dataset_name, model_name, args.rounds, args.steps)
            native, ref = statistics.median(times["native"]), statistics.median(times["reference"])
            what = "epoch" if args.steps is None else f"{args.steps} steps"
            print(f"{model_name} {what}, {dataset_name}: native median {native:.2f} s {[round(t, 2) for t in times['native']]}, "
                  f"reference median {ref:.2f} s {[round(t, 2) for t in times['reference']]}: {ref / native:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
