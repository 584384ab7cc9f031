"""mmrec_fast.distributed on 2 CPU processes with gloo: each op against the single-process op on the concatenated
rows (values and gradients, float64 and float32, uneven shards, a rank with no rows).

Each test spawns the ranks once and runs all of its cases inside them: every rank builds the full inputs from the
same seed, takes its shard, runs the distributed op, and compares with the single-process op that it also runs on
the full inputs. A failed comparison on any rank fails the test (torch.multiprocessing re-raises it)."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mmrec_fast as mf
from mmrec_fast import distributed

WORLD = 2
#: Row counts of rank 0 and rank 1: even, uneven, and a rank without rows (on either side).
SHARDS = [(6, 6), (9, 4), (0, 11), (7, 0)]


def _worker(rank: int, init_file: str, check, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        check(rank, *args)
        dist.barrier()
    except Exception:
        traceback.print_exc()  # the first failure, before the other rank's "connection closed" hides it
        raise
    finally:
        dist.destroy_process_group()


def run_ranks(tmp_path, check, *args) -> None:
    """check(rank, *args) on WORLD gloo processes."""
    mp.spawn(_worker, args=(str(tmp_path / "init"), check, args), nprocs=WORLD, join=True)


def _rows(counts, rank) -> slice:
    return slice(sum(counts[:rank]), sum(counts[: rank + 1]))


def _sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


INFO_NCE_CASES = [
    dict(),
    dict(symmetric=True),
    dict(intra_view_negatives=True),
    dict(symmetric=True, intra_view_negatives=True),
    dict(normalize=False),
]


def _check_info_nce(rank, dtype, backend):
    # float32: the row losses are log-sum-exps of logits up to ~50 (raw dot products / 0.3), minus the positive
    # logit: a few ulps of 50 are ~1e-5 whatever the loss's own size.
    tolerance = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=5e-5)
    old_tile = distributed.TILE_BYTES
    distributed.TILE_BYTES = 300  # tiles of a few columns (and a ragged last one) on these small batches
    try:
        for counts in SHARDS:
            for flags in INFO_NCE_CASES:
                generator = torch.Generator().manual_seed(sum(counts) + len(flags))
                batch, d = sum(counts), 7
                a = torch.randn(batch, d, generator=generator, dtype=torch.float64).to(dtype)
                b = (a + 0.5 * torch.randn(batch, d, generator=generator, dtype=torch.float64)).to(dtype)
                b[3] = a[2]  # a repeated row: a false negative with a tie
                mine = _rows(counts, rank)
                for reduction in ("sum", "mean", "none"):
                    t_single = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
                    full_a, full_b = a.clone().requires_grad_(), b.clone().requires_grad_()
                    want = mf.info_nce(full_a, full_b, t_single, reduction=reduction, **flags)
                    want.sum().backward()

                    t_local = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
                    local_a = a[mine].clone().requires_grad_()
                    local_b = b[mine].clone().requires_grad_()
                    got = distributed.info_nce(local_a, local_b, t_local, reduction=reduction, backend=backend, **flags)
                    got.sum().backward()
                    what = f"rank {rank} shards {counts} {flags} {reduction} {dtype} {backend}"
                    if reduction == "none":
                        torch.testing.assert_close(got, want[mine], **tolerance, msg=lambda m: f"{what}\n{m}")
                    else:
                        torch.testing.assert_close(_sum_over_ranks(got), want.detach(), **tolerance, msg=lambda m: f"{what}\n{m}")
                    torch.testing.assert_close(local_a.grad, full_a.grad[mine], **tolerance, msg=lambda m: f"{what}\n{m}")
                    torch.testing.assert_close(local_b.grad, full_b.grad[mine], **tolerance, msg=lambda m: f"{what}\n{m}")
                    torch.testing.assert_close(_sum_over_ranks(t_local.grad), t_single.grad, **tolerance, msg=lambda m: f"{what}\n{m}")
    finally:
        distributed.TILE_BYTES = old_tile


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_info_nce_equals_single_process(tmp_path, dtype):
    run_ranks(tmp_path, _check_info_nce, dtype, None)


def test_info_nce_reference_block_equals_single_process(tmp_path):
    run_ranks(tmp_path, _check_info_nce, torch.float64, "reference")


def _check_knn(rank):
    for counts in [(20, 17), (0, 23), (30, 1)]:
        generator = torch.Generator().manual_seed(sum(counts))
        n = sum(counts)
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            x = torch.randn(n, 9, generator=generator).to(dtype)
            x[5] = x[1]  # identical rows: ties broken by the lower index
            x[7] = 0  # a zero row: similarity 0 to everything
            mine = _rows(counts, rank)
            for exclude_self in (False, True):
                want = mf.knn(x, 4, exclude_self=exclude_self)
                got = distributed.knn(x[mine], 4, exclude_self=exclude_self)
                what = f"rank {rank} {counts} {dtype} exclude_self={exclude_self}"
                assert torch.equal(got[1], want[1][mine]), what
                assert torch.equal(got[0], want[0][mine]), what
    for n in (31, 2):
        generator = torch.Generator().manual_seed(n)
        # nonnegative features: cosine edge weights >= 0, as "rw" needs
        features = [torch.rand(n, 16, generator=generator), torch.rand(n, 5, generator=generator)]
        for options in (dict(k=2, weights=[0.1, 0.9]), dict(k=1, include_self=False, edge_weight="cosine", norm="rw")):
            want = mf.knn_graph(features, **options)
            got = distributed.knn_graph(features, **options)
            for field in ("rowptr", "col", "values", "left", "right"):
                mine, theirs = getattr(got, field), getattr(want, field)
                same = mine is None and theirs is None or mine is not None and theirs is not None and torch.equal(mine, theirs)
                assert same, (n, options, field)


def test_knn_and_knn_graph_equal_single_process(tmp_path):
    run_ranks(tmp_path, _check_knn)


def _check_evaluate(rank):
    dataset = mf.data.synthetic("small", num_users=150, num_items=60, num_interactions=1600, feature_dims={}, seed=3)
    generator = torch.Generator().manual_seed(0)
    users, items = torch.randn(dataset.num_users, 8, generator=generator), torch.randn(60, 8, generator=generator)
    for batch_size in (16, 37, 4096):  # 10, 5 and 1 batches: even, uneven, a rank without a batch
        for split in ("valid", "test"):
            want = mf.evaluate.evaluate((users, items), dataset, split, batch_size=batch_size, ks=(5, 20))
            got = distributed.evaluate((users, items), dataset, split, batch_size=batch_size, ks=(5, 20))
            assert got == want, (rank, batch_size, split, got, want)


def test_evaluate_equals_single_process(tmp_path):
    run_ranks(tmp_path, _check_evaluate)


def test_single_process_needs_no_process_group():
    torch.manual_seed(0)
    a, b = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
    assert distributed.world() == (0, 1)
    assert distributed.shard(10) == slice(0, 10)
    torch.testing.assert_close(distributed.info_nce(a, b, 0.2), mf.info_nce(a, b, 0.2), rtol=1e-12, atol=0)
    got, want = distributed.knn(a, 3), mf.knn(a, 3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_info_nce_rejects_what_it_cannot_do():
    a = torch.randn(4, 3)
    with pytest.raises(mf.backends.BackendUnavailable, match="no kernel for a rank's"):
        distributed.info_nce(a, a, 0.2, backend="native")
    with pytest.raises(ValueError, match="empty on every rank"):
        distributed.info_nce(a[:0], a[:0], 0.2)
    with pytest.raises(ValueError, match="reduction"):
        distributed.info_nce(a, a, 0.2, reduction="avg")
    with pytest.raises(ValueError, match="temperature"):
        distributed.info_nce(a, a, 0.0)


def _train_lightgcn(epochs: int, out_dir=None, resume=None, batch_size: int = 301):
    """LightGCN on a tiny synthetic dataset through the Trainer (data parallel when a process group is up);
    301 rows a batch: the shards are uneven (151 + 150) and the last batch is odd too."""
    from mmrec_fast.models import LightGCN
    from mmrec_fast.train import TrainConfig, Trainer, seed_everything

    dataset = mf.data.synthetic("small", num_users=90, num_items=70, num_interactions=1300, feature_dims={}, seed=5)
    seed_everything(0)
    model = LightGCN(dataset)
    config = TrainConfig.for_model(LightGCN, epochs=epochs, batch_size=batch_size, progress=False, verbose=False,
                                   out_dir=out_dir)  # fmt: skip
    trainer = Trainer(model, dataset, config)
    if resume is not None:
        trainer.resume(resume)
    record = trainer.fit()
    return record, {name: value.detach().clone() for name, value in model.state_dict().items()}


def _same_run(got, want, what, parameter_atol: float = 1e-6):
    got_record, got_state = got
    want_record, want_state = want
    assert len(got_record["epochs"]) == len(want_record["epochs"]), what
    for mine, theirs in zip(got_record["epochs"], want_record["epochs"]):
        for name in theirs["losses"]:
            assert abs(mine["losses"][name] - theirs["losses"][name]) <= 1e-6 * abs(theirs["losses"][name]) + 1e-9, (
                what, mine["epoch"], name, mine["losses"][name], theirs["losses"][name])
        assert mine["valid"] == pytest.approx(theirs["valid"], abs=1e-12), (what, mine["epoch"])
    for name, value in want_state.items():
        torch.testing.assert_close(got_state[name], value, rtol=1e-5, atol=parameter_atol,
                                   msg=lambda m: f"{what} {name}\n{m}")  # fmt: skip


def _check_data_parallel_training(rank, want_4, out_dir):
    _same_run(_train_lightgcn(4), want_4, f"rank {rank}: 2-rank training")
    _train_lightgcn(2, out_dir=out_dir)  # rank 0 writes last.pt; every rank resumes from it
    dist.barrier()
    if rank == 0:
        assert (Path(out_dir) / "last.pt").exists() and (Path(out_dir) / "run.json").exists()
    _same_run(_train_lightgcn(4, resume=str(Path(out_dir) / "last.pt")), want_4, f"rank {rank}: resumed at epoch 2")
    if rank == 0:
        record = json.loads((Path(out_dir) / "run.json").read_text())
        assert record["data_parallel"] == {"world_size": WORLD, "process_group_backend": "gloo"}


def test_data_parallel_lightgcn_trains_as_one_process(tmp_path):
    """2 ranks on the same global batches: the same epoch losses, validation metrics and parameters as one process
    (up to float32 summation order), and a resumed 2-rank run continues exactly."""
    want = _train_lightgcn(4)
    run_ranks(tmp_path, _check_data_parallel_training, want, str(tmp_path / "run"))


def _train_slmrec(epochs: int, ssl_task: str, batch_size: int = 101):
    """SLMRec (in-batch InfoNCE) on tiny synthetic data: 101 rows a batch, so the shards are 51 + 50 and the last
    batch (of the training pairs) is smaller."""
    from mmrec_fast.models import SLMRec
    from mmrec_fast.train import TrainConfig, Trainer, seed_everything

    dataset = mf.data.synthetic("small", num_users=50, num_items=60, num_interactions=250,
                                feature_dims={"image": 6, "audio": 5}, seed=5)  # fmt: skip
    seed_everything(0)
    model = SLMRec(dataset, SLMRec.Config(ssl_task=ssl_task, dim=8))
    config = TrainConfig.for_model(SLMRec, epochs=epochs, batch_size=batch_size, progress=False, verbose=False)
    record = Trainer(model, dataset, config).fit()
    return record, {name: value.detach().clone() for name, value in model.state_dict().items()}


def _check_slmrec_and_mmssl(rank, want_by_task):
    from mmrec_fast.models import MMSSL
    from mmrec_fast.train import Trainer

    for ssl_task, want in want_by_task.items():
        # Parameters to 1e-3: Adam turns a gradient that is zero up to rounding (FAC's head biases) into steps of
        # up to lr = 1e-3; one process on the native and on the reference backend differ there by 1.2e-4.
        _same_run(_train_slmrec(2, ssl_task), want, f"rank {rank}: 2-rank SLMRec ({ssl_task}), negatives gathered",
                  parameter_atol=1e-3)
    dataset = mf.data.synthetic("small", num_users=40, num_items=30, num_interactions=250, seed=5)
    with pytest.raises(ValueError, match="its own training_step"):
        Trainer(MMSSL(dataset), dataset)


def test_data_parallel_slmrec_gathers_its_negatives(tmp_path):
    """SLMRec's InfoNCE terms (the main one, FAC's and the two-view one) over the gathered global batch: 2 ranks
    train as one process (float32: the gathered block's tiles and the fused kernel sum in different orders)."""
    want = {task: _train_slmrec(2, task) for task in ("fac", "fd")}
    run_ranks(tmp_path, _check_slmrec_and_mmssl, want)


def test_torchrun_command_line_matches_one_process(tmp_path):
    """README's launch command, end to end: 2 ranks under torchrun give one process's epoch losses and metrics."""
    import subprocess
    import sys

    common = ["train", "--model", "lightgcn", "--synthetic", "small", "--epochs", "2", "--batch-size", "999",
              "--threads", "1", "--no-progress"]  # fmt: skip
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "mmrec_fast"]
    for command, out in ((launch, "ddp"), ([sys.executable, "-m", "mmrec_fast"], "one")):
        done = subprocess.run(command + common + ["--out", str(tmp_path / out)], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    ddp, one = (json.loads((tmp_path / out / "run.json").read_text()) for out in ("ddp", "one"))
    assert ddp["data_parallel"]["world_size"] == 2 and "data_parallel" not in one
    for mine, theirs in zip(ddp["epochs"], one["epochs"], strict=True):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-6)
        assert mine["valid"] == pytest.approx(theirs["valid"], abs=1e-12)
    assert ddp["test"] == pytest.approx(one["test"], abs=1e-12)
