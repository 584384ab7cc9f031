"""mmrec_fast.distributed at 1 and 2 ranks (gloo on this CPU; NCCL where the ranks have GPUs), 1 torch thread a
rank, against the single-process op on one thread, with the communication per call computed from the shapes.

Cases (float32):
  * info_nce forward + backward, SLMRec's form (normalised, one-way, mean), B 8,192 global rows, d 64: the
    gathered op (each rank its B / W rows against all B columns, column-tiled); the single-process baseline is the
    fused native op on the whole batch.
  * knn_graph, Baby's image features (7,050 x 4,096), k 10: each rank the top-k of its rows among all rows
    (topk_scores on the replicated normalised features, every score of its rows: n^2 d / W multiply-adds a rank),
    the neighbours gathered; the single-process baseline is the native knn, whose symmetric schedule computes
    half of X X^T (n^2 d / 2), so two ranks do the work of one process between them.

`python benchmarks/bench_distributed.py [--out FILE]` prints (and writes) the table; as a pytest file
(`mmrec-fast bench distributed`) one case runs the same measurement and prints it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mmrec_fast  # noqa: E402
from mmrec_fast import distributed  # noqa: E402

from conftest import machine_description  # noqa: E402

REPEATS = 5
INFO_NCE = dict(batch=8192, d=64, temperature=0.2)
KNN = dict(n=7050, d=4096, k=10)


def _inputs():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(INFO_NCE["batch"], INFO_NCE["d"], generator=generator)
    b = a + 0.5 * torch.randn(INFO_NCE["batch"], INFO_NCE["d"], generator=generator)
    features = torch.randn(KNN["n"], KNN["d"], generator=generator)
    return a, b, features


def _median_seconds(run, synchronise) -> float:
    run()  # warm-up
    times = []
    for _ in range(REPEATS):
        synchronise()
        start = time.perf_counter()
        run()
        synchronise()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _info_nce_step(a, b):
    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    return a, b


def _rank_worker(rank: int, world_size: int, init_file: str, results) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    a, b, features = _inputs()
    rows = distributed.shard(a.shape[0])

    def gathered_info_nce():
        x, y = _info_nce_step(a[rows], b[rows])
        distributed.info_nce(x, y, INFO_NCE["temperature"]).backward()

    def sharded_knn_graph():
        distributed.knn_graph(features, KNN["k"])

    timings = {"info_nce": _median_seconds(gathered_info_nce, dist.barrier),
               "knn_graph": _median_seconds(sharded_knn_graph, dist.barrier)}  # fmt: skip
    if rank == 0:
        results.update(timings)
    dist.barrier()
    dist.destroy_process_group()


def _ranks(world_size: int) -> dict:
    with tempfile.TemporaryDirectory() as folder, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_worker, args=(world_size, str(Path(folder) / "init"), results), nprocs=world_size, join=True)
        return dict(results)


def _single_process() -> dict:
    torch.set_num_threads(1)
    a, b, features = _inputs()

    def fused_info_nce():
        x, y = _info_nce_step(a, b)
        mmrec_fast.info_nce(x, y, INFO_NCE["temperature"]).backward()

    return {"info_nce": _median_seconds(fused_info_nce, lambda: None),
            "knn_graph": _median_seconds(lambda: mmrec_fast.knn_graph(features, KNN["k"]), lambda: None)}  # fmt: skip


def communication(world_size: int) -> dict[str, str]:
    """Bytes each rank sends or receives per call, from the shapes (float32 values, int64 indices)."""
    batch, d = INFO_NCE["batch"], INFO_NCE["d"]
    n, k = KNN["n"], KNN["k"]
    if world_size == 1:
        return {"info_nce": "0", "knn_graph": "0"}
    gather = (batch - batch // world_size) * d * 4  # the other ranks' rows of b
    reduce = 2 * (world_size - 1) / world_size * batch * d * 4  # a ring all-reduce of the (B, d) gradient of b
    neighbours = (n - n // world_size) * k * (4 + 8)
    return {"info_nce": f"{gather / 2**20:.1f} MiB gathered + {reduce / 2**20:.1f} MiB all-reduced",
            "knn_graph": f"{neighbours / 2**20:.2f} MiB of neighbours gathered (features replicated, not sent)"}  # fmt: skip


def measure() -> str:
    one = _single_process()
    by_world = {w: _ranks(w) for w in (1, 2)}
    lines = [f"# mmrec_fast.distributed on {machine_description()}; gloo, 1 torch thread a rank; median of {REPEATS}",
             f"# info_nce fwd+bwd B {INFO_NCE['batch']} d {INFO_NCE['d']}; knn_graph {KNN['n']} x {KNN['d']} k {KNN['k']}",
             f"{'case':<10} {'one process (native)':>21} {'1 rank':>9} {'2 ranks':>9} {'2 vs 1 rank':>12} "
             f"{'2 ranks vs one process':>23}  communication per rank (2 ranks)"]  # fmt: skip
    for case in ("info_nce", "knn_graph"):
        single, r1, r2 = one[case], by_world[1][case], by_world[2][case]
        lines.append(f"{case:<10} {single * 1e3:>18.1f} ms {r1 * 1e3:>6.1f} ms {r2 * 1e3:>6.1f} ms {r1 / r2:>11.2f}x "
                     f"{single / r2:>22.2f}x  {communication(2)[case]}")  # fmt: skip
    return "\n".join(lines)


def test_distributed_scaling():
    print("\n" + measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    table = measure()
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
