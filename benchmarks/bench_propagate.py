"""Propagation microbenchmarks: 3 layers + mean, d = 64, float32, forward and forward + backward.

Graphs: the real Amazon Baby train graph (n = 26,495, nnz = 237,102) and a synthetic power-law bipartite graph of
200k nodes / 2M nonzeros. Baselines in the same run: torch COO ``sparse.mm`` per layer + stack + mean (the MMRec
path), the same with a torch CSR tensor (MKL) and with CSR ``spmm_reduce``, and scipy CSR (forward only).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mmrec_fast
from mmrec_fast import Graph

from conftest import (
    DEVICE, baby_train_interactions, benchmarked_backends, peak_tensor_memory, powerlaw_interactions, synchronize,
)  # fmt: skip

NUM_LAYERS, DIM = 3, 64
_graphs: dict[str, Graph] = {}


def graph_named(name: str) -> Graph:
    if name not in _graphs:
        if name == "baby":
            users, items, num_users, num_items = baby_train_interactions()
        else:  # 150k users + 50k items, 1M interactions -> 2M nonzeros in the symmetric adjacency
            users, items, num_users, num_items = powerlaw_interactions(150_000, 50_000, 1_000_000)
        _graphs[name] = Graph.bipartite(users, items, num_users, num_items, norm="sym").to(DEVICE)
    return _graphs[name]


def layers_then_mean(spmm):
    def run(x):
        layers = [x]
        for _ in range(NUM_LAYERS):
            layers.append(spmm(layers[-1]))
        return torch.stack(layers, dim=1).mean(dim=1)

    return run


def implementations(graph: Graph) -> dict:
    coo = graph.to_torch(torch.float32)  # MMRec builds a COO tensor once and calls torch.sparse.mm every layer
    csr = coo.to_sparse_csr()
    impls = {
        "torch COO sparse.mm (MMRec)": layers_then_mean(lambda h: torch.sparse.mm(coo, h)),
        "torch CSR": layers_then_mean(lambda h: csr @ h),
    }
    if DEVICE == "cpu":
        impls["torch CSR spmm_reduce"] = layers_then_mean(lambda h: torch.sparse.mm(csr, h, reduce="sum"))
    for backend in benchmarked_backends("propagate"):
        impls[f"mmrec_fast {backend}"] = (lambda b: lambda x: mmrec_fast.propagate(graph, x, NUM_LAYERS, "mean", backend=b))(backend)
    return impls


IMPL_NAMES = ["mmrec_fast native", "mmrec_fast triton", "torch COO sparse.mm (MMRec)", "torch CSR", "torch CSR spmm_reduce"]


def select(graph, name):
    impls = implementations(graph)
    if name not in impls:
        pytest.skip(f"{name} does not run on {DEVICE} here")
    return impls[name]


@pytest.mark.parametrize("graph_name", ["baby", "powerlaw-200k"])
@pytest.mark.parametrize("impl", IMPL_NAMES + ["scipy CSR"])
def test_forward(benchmark, graph_name, impl):
    graph = graph_named(graph_name)
    x = torch.randn(graph.shape[0], DIM, device=DEVICE)
    benchmark.group = f"propagate forward, {graph_name} (n={graph.shape[0]:,}, nnz={graph.nnz:,}), d={DIM}, L={NUM_LAYERS}, mean, {DEVICE}"
    if impl == "scipy CSR":
        if DEVICE != "cpu":
            pytest.skip("scipy runs on the CPU only")
        matrix = graph.to_scipy().astype(np.float32)
        xn = x.numpy()
        fn = layers_then_mean(lambda h: matrix @ h)
        run = lambda: np.mean(np.stack(fn_np(xn), 1), 1)  # noqa: E731

        def fn_np(h0):
            layers = [h0]
            for _ in range(NUM_LAYERS):
                layers.append(matrix @ layers[-1])
            return layers

        del fn
    else:
        fn = select(graph, impl)

        def run():
            out = fn(x)
            synchronize()
            return out

    rounds = 30 if graph_name == "baby" else 5
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=2)


@pytest.mark.parametrize("graph_name", ["baby", "powerlaw-200k"])
@pytest.mark.parametrize("impl", IMPL_NAMES)
def test_forward_backward(benchmark, graph_name, impl):
    graph = graph_named(graph_name)
    fn = select(graph, impl)
    n = graph.shape[0]
    x = torch.randn(n, DIM, device=DEVICE, requires_grad=True)
    upstream = torch.randn(n, DIM, device=DEVICE)
    benchmark.group = f"propagate forward+backward, {graph_name} (n={n:,}, nnz={graph.nnz:,}), d={DIM}, L={NUM_LAYERS}, mean, {DEVICE}"

    def run():
        out = fn(x)
        out.backward(upstream)
        synchronize()
        x.grad = None

    run()  # warm caches (graph conversions) before measuring memory
    start, peak = peak_tensor_memory(run)
    benchmark.extra_info["peak_extra_nd"] = (peak - start) / (n * DIM * 4)
    rounds = 20 if graph_name == "baby" else 3
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
