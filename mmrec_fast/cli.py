"""The mmrec-fast command line.

    mmrec-fast train --model NAME [--set NAME=VALUE ...] [--data DIR] [--epochs N] [--lr X] [--backend B] [--out DIR]
                                       train a model on a dataset directory (MMRec or MMSSL format) or, without
                                       --data, on the embedded synthetic dataset; training options left out take
                                       the model's defaults; print per-epoch lines, the test metrics and the time
                                       per epoch; --out keeps checkpoints and the run record
    mmrec-fast models                  every model with its hyperparameters (--set), defaults and training defaults
    mmrec-fast evaluate --checkpoint PATH [--split test|valid] [--data DIR] [--threads N]
                                       full-ranking metrics of a saved model
    mmrec-fast info                    versions, what was built, which backend runs each op on each device
    mmrec-fast bench [OP ...|all]      run the microbenchmarks (benchmarks/bench_<op>.py) and print the table of
                                       medians and speedups against the baselines run beside them (--json PATH
                                       keeps the record)
    mmrec-fast bench report PATH.json  a record as a Markdown page with charts of the speed-ups and peak memory
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ._build import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"


def available_benchmarks() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in BENCHMARKS.glob("bench_*.py"))


def cmd_info(args) -> int:
    import mmrec_fast

    print(json.dumps(mmrec_fast.info(), indent=2, default=str))
    return 0


def cmd_bench(args) -> int:
    if not BENCHMARKS.is_dir():
        print(f"mmrec-fast bench: the benchmarks folder {BENCHMARKS} is missing (run from a source checkout)", file=sys.stderr)
        return 2
    if args.ops[:1] == ["report"]:
        if len(args.ops) != 2:
            print("mmrec-fast bench report: error: give one pytest-benchmark JSON record (mmrec-fast bench OP --json PATH)",
                  file=sys.stderr)  # fmt: skip
            return 2
        sys.path.insert(0, str(BENCHMARKS))
        from report import main as report_main

        return report_main([args.ops[1]] + (["--out", args.out] if args.out else []))
    known = available_benchmarks()
    ops = known if args.ops in ([], ["all"]) else args.ops
    unknown = [op for op in ops if op not in known]
    if unknown:
        print(f"mmrec-fast bench: unknown benchmark {unknown[0]!r}; choose from {', '.join(known)} or all", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "pytest", *(str(BENCHMARKS / f"bench_{op}.py") for op in ops),
               "-p", "no:cacheprovider", "-q", "--benchmark-columns=min,median,max,rounds"]  # fmt: skip
    if args.json:
        command.append(f"--benchmark-json={args.json}")
    if args.keyword:
        command += ["-k", args.keyword]
    return subprocess.call(command, cwd=REPO_ROOT)


def _dataset(args):
    from . import data

    if args.data is None:
        return data.synthetic(args.synthetic, seed=args.data_seed)
    return data.load(args.data, format=args.format)


def _apply_threads(args) -> None:
    """--threads: torch's CPU threads for the rest of the command."""
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)


def _threads_and_dataset(args):
    """Apply --threads, load the dataset of --data (or the synthetic one) and print it with the loader's notes."""
    _apply_threads(args)
    dataset = _dataset(args)
    print(dataset, flush=True)
    for note in dataset.notes:
        print(f"note: {note}", flush=True)
    return dataset


def _metric_table(metrics: dict[str, float]) -> str:
    """Rows = metrics, columns = cut-offs, from {"recall@20": ...}."""
    names = list(dict.fromkeys(key.split("@")[0] for key in metrics))
    ks = list(dict.fromkeys(int(key.split("@")[1]) for key in metrics))
    lines = [f"{'':10}" + "".join(f"{'@' + str(k):>9}" for k in ks)]
    for name in names:
        lines.append(f"{name:10}" + "".join(f"{metrics.get(f'{name}@{k}', float('nan')):9.4f}" for k in ks))
    return "\n".join(lines)


def _assignments(texts: list[str]) -> dict[str, str]:
    """``--set name=value`` texts -> {name: value text}."""
    parsed = {}
    for assignment in texts:
        name, equals, value = assignment.partition("=")
        if not equals or not name.strip():
            raise ValueError(f"--set takes name=value, got {assignment!r}")
        parsed[name.strip()] = value
    return parsed


def _model_config(cls, assignments: list[str]):
    """The model's Config with the ``--set name=value`` assignments parsed into it."""
    return cls.Config().parse(_assignments(assignments))


def _run_spec(args, cls):
    """The :class:`~mmrec_fast.search.RunSpec` of a train --seeds or search command's arguments."""
    from .search import RunSpec

    _model_config(cls, args.set)  # a bad --set fails here, before any training
    overrides = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None and name != "seed"}
    device = _chosen_device(args)
    _check_eval_backend(overrides.get("eval_backend"), device)
    dataset = _threads_and_dataset(args)
    return RunSpec(cls, dataset, _assignments(args.set), overrides, backend=args.backend, device=device,
                   verbose=getattr(args, "verbose", True), progress=not args.no_progress)  # fmt: skip


def cmd_train_seeds(args, cls) -> int:
    from .search import summary_text, train_seeds
    from .train import TrainConfig

    if args.resume:
        raise ValueError("--seeds does not take --resume: run the same command with the same --out again and each "
                         "seed's run continues from its last.pt")  # fmt: skip
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    spec = _run_spec(args, cls)
    first = args.seed if args.seed is not None else TrainConfig.for_model(cls).seed
    seeds = list(range(first, first + args.seeds))
    print(f"training {cls.name} with seeds {', '.join(map(str, seeds))}" + (f" in {args.out}/seed_<s>/" if args.out else ""), flush=True)
    result = train_seeds(spec, seeds, args.out)
    print(f"\ntest metrics over {len(seeds)} seeds: mean ± sample sd [min, max]")
    print(summary_text(result["test"]))
    if args.out:
        print(f"summary: {Path(args.out) / 'seeds.json'}")
    return 0


def cmd_search(args) -> int:
    from . import models
    from .search import parse_grid, search

    cls = models.model_class(args.model)
    import importlib.util

    if importlib.util.find_spec("optuna") is None:
        raise ValueError("search runs on optuna, an optional dependency: pip install optuna (or pip install -e .[search])")
    if not args.out:
        raise ValueError("--out DIR is required: the search keeps its study, trials and report there")
    grid = parse_grid(cls, args.grid) if args.grid else None
    if grid is None and not cls.search_space:
        raise ValueError(f"{cls.name} has no authors' grid; give --grid name=value,value,...")
    spec = _run_spec(args, cls)
    summary = search(spec, args.out, grid=grid, sampler=args.sampler, trials=args.trials, seeds=args.seeds, seed=args.seed,
                     keep_checkpoints=args.keep_checkpoints)  # fmt: skip
    print(f"\n{cls.name}: chosen {', '.join(f'{k}={v}' for k, v in summary['chosen']['setting'].items())}; "
          f"test metrics over seeds {', '.join(map(str, summary['seeds']))} (mean ± sample sd [min, max]):")
    from .search import summary_text

    print(summary_text(summary["test"]))
    return 0


#: TrainConfig fields the train command sets from flags of the same name (None: the model's default or TrainConfig's)
TRAIN_FLAGS = ("epochs", "batch_size", "lr", "weight_decay", "optimizer", "fused_optimizer", "negatives", "valid_metric",
               "patience", "eval_every", "ks", "ndcg", "eval_batch_size", "eval_backend", "seed")  # fmt: skip


def cmd_train(args) -> int:
    from . import models
    from .train import TrainConfig, Trainer, seed_everything

    cls = models.model_class(args.model)
    device = _chosen_device(args)
    launched = _start_process_group(device)
    if args.seeds is not None:
        if launched:
            raise ValueError("--seeds trains the seeds one after another in one process; under torchrun give --seed")
        return cmd_train_seeds(args, cls)
    model_config = _model_config(cls, args.set)
    overrides = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None}
    if launched and device.startswith("cuda"):
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"  # one GPU per rank
    config = TrainConfig.for_model(cls, **overrides, device=device, out_dir=args.out, progress=not args.no_progress)
    _check_eval_backend(config.eval_backend, device)
    dataset = _threads_and_dataset(args)
    seed_everything(config.seed)
    model = cls(dataset, model_config, backend=args.backend)
    model.check_backend(device)
    trainer = Trainer(model, dataset, config, overrides=overrides)
    print(f"model: {model.name}" + (f" on {', '.join(model.modalities)}" if model.modalities else "")
          + f"; {', '.join(f'{k}={v}' for k, v in model.config.to_dict().items())}", flush=True)  # fmt: skip
    print(f"training: {', '.join(f'{k}={getattr(config, k)}' for k in TRAIN_FLAGS if k != 'ks')}, device={config.device}"
          + (f" (the model's defaults: {cls.train_defaults()})" if cls.train_defaults() else ""), flush=True)  # fmt: skip
    if args.resume:
        trainer.resume(args.resume)
        print(f"resumed from {args.resume} after epoch {trainer.epoch}", flush=True)
    record = trainer.fit()
    best = record["best_epoch"]
    which = f"best model (epoch {best}, by {config.valid_metric} on valid)" if best is not None else "final model"
    print(f"\ntest metrics of the {which}:")
    print(_metric_table(record["test"]))
    epochs = record["epochs"]
    evals = [e["eval_seconds"] for e in epochs if "eval_seconds" in e]
    if epochs:
        print(f"\ntime per epoch: {record['median_epoch_seconds']:.2f} s training (median of {len(epochs)} epochs, "
              f"{len(dataset.train) / record['median_epoch_seconds'] / 1e3:.1f}k interactions/s)"
              + (f", {sum(evals) / len(evals):.2f} s validation" if evals else "")
              + f"; test evaluation {record['test_seconds']:.2f} s")  # fmt: skip
    print(f"backends: {record['environment']['backends']}; {record['environment']['machine']}")
    if args.out:
        print(f"run record: {Path(args.out) / 'run.json'}; checkpoints: {Path(args.out) / 'last.pt'}, {Path(args.out) / 'best.pt'}")
    return 0


def _device(text: str) -> str:
    """``text`` if it names a device this torch can use, else a ValueError saying why (one line)."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise ValueError(f"--device {text}: this torch ({torch.__version__}) is a CPU build, without CUDA")
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: no CUDA device is visible")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: there are {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise ValueError(f"--device {text}: mmrec_fast runs on cpu and cuda devices")
    return text


def _check_eval_backend(backend: str | None, device: str) -> None:
    import torch

    from . import backends

    backends.resolve(backends.OPS["topk_scores"], torch.empty(0, device=device), backend)


def cmd_evaluate(args) -> int:
    from . import data
    from .evaluate import evaluate
    from .train import load_checkpoint, model_from_checkpoint

    _apply_threads(args)
    state = load_checkpoint(args.checkpoint)
    dataset = data.load(args.data, format=args.format) if args.data else data.from_source(state["dataset_source"])
    model, _ = model_from_checkpoint(args.checkpoint, dataset, state=state)
    _check_eval_backend(args.eval_backend, "cpu")
    config = state["config"]
    ks = args.ks or tuple(config["ks"])
    ndcg = args.ndcg or config["ndcg"]
    metrics = evaluate(model, dataset, args.split, ks=ks, ndcg=ndcg, backend=args.eval_backend,
                       batch_size=config["eval_batch_size"])  # fmt: skip
    print(f"{state['model_name']} (checkpoint of epoch {state['epoch']}) on {dataset.name}, {args.split} split, ndcg={ndcg}:")
    print(_metric_table(metrics))
    return 0


def cmd_models(args) -> int:
    from .models import MODELS

    for name, cls in sorted(MODELS.items()):
        print(f"{name}: {cls.summary}")
        batches = "BPR triples (users, positives, sampled negatives)" if cls.batch_kind == "bpr" else "positive pairs"
        print(f"  trains on {batches}" + (f"; item features: {', '.join(cls.supported_modalities)}"
                                          if cls.supported_modalities else "; no item features"))  # fmt: skip
        width = max(len(f["name"]) for f in cls.Config.describe())
        for field in cls.Config.describe():
            print(f"  --set {field['name']:<{width}}  {field['default']!r:<10} {field['help']} ({field['type']})")
        defaults = cls.train_defaults()
        if defaults:
            print("  training defaults: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in defaults.items()))
        if cls.search_space:
            print("  authors' grid (mmrec-fast search): " + " ".join(f"--grid {k}={','.join(v)}" for k, v in cls.search_space.items())
                  + f"  [{cls.search_space_source}]")  # fmt: skip
        elif cls.search_space_source:
            print(f"  authors' grid: {cls.search_space_source}")
        print()
    return 0


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 5,10,20,50, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"cut-offs must be >= 1, got {text!r}")
    return ks


def _add_data_arguments(parser) -> None:
    from .data import DEFAULT_PRESET, PRESETS

    parser.add_argument("--data", metavar="DIR", help="dataset directory: <name>.inter (MMRec) or train/val/test.json "
                        "(MMSSL) + image/text/audio_feat.npy; default: the synthetic dataset")  # fmt: skip
    parser.add_argument("--format", choices=("auto", "mmrec", "mmssl"), default="auto", help="format of --data (default: auto)")
    parser.add_argument("--synthetic", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                        help=f"synthetic preset used without --data (default: {DEFAULT_PRESET})")  # fmt: skip
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic dataset (default: 0)")


def _add_run_arguments(parser, out_help: str) -> None:
    """The options of a training run (train and search share them)."""
    from .backends import BACKENDS
    from .models import MODELS
    from .train import TrainConfig

    def default(name: str) -> str:
        value = TrainConfig.__dataclass_fields__[name].default
        return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)

    parser.add_argument("--model", required=True, choices=sorted(MODELS), help="the model to train")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a model hyperparameter (repeatable), e.g. --set ssl_alpha=0.05; mmrec-fast models lists them")  # fmt: skip
    _add_data_arguments(parser)
    parser.add_argument("--epochs", type=int, help=f"most epochs (default {default('epochs')}; early stopping usually ends sooner)")
    parser.add_argument("--batch-size", type=int, help=f"training batch size (default {default('batch_size')})")
    parser.add_argument("--lr", type=float, help=f"learning rate (default {default('lr')})")
    parser.add_argument("--weight-decay", type=float, help=f"the optimizer's weight decay (default {default('weight_decay')})")
    parser.add_argument("--optimizer", choices=("adam", "adamw"), help=f"optimizer (default {default('optimizer')})")
    parser.add_argument("--fused-optimizer", action=argparse.BooleanOptionalAction, default=None,
                        help="torch's fused Adam / AdamW, the same update in one pass per tensor (default: off; FREEDOM's "
                        "and MMSSL's training defaults: on)")  # fmt: skip
    parser.add_argument("--negatives", choices=("all", "train_items"),
                        help="BPR negatives drawn from all items, or from the items seen in training as MMRec "
                        f"(default {default('negatives')})")  # fmt: skip
    parser.add_argument("--valid-metric", help=f"early-stopping metric (default {default('valid_metric')})")
    parser.add_argument("--patience", type=int, help=f"validations without improvement before stopping (default {default('patience')})")
    parser.add_argument("--eval-every", type=int, help=f"epochs between validations (default {default('eval_every')})")
    parser.add_argument("--ks", type=_ks, help=f"cut-offs, comma-separated (default {default('ks')})")
    parser.add_argument("--ndcg", choices=("mmrec", "ngcf"), help=f"NDCG form, ngcf: MMSSL's (default {default('ndcg')})")
    parser.add_argument("--eval-batch-size", type=int, help=f"users ranked at once (default {default('eval_batch_size')})")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="backend of the model's ops (default: automatic)")
    parser.add_argument("--eval-backend", choices=BACKENDS, help="backend of topk_scores in evaluation (default: automatic)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available, else cpu)")
    parser.add_argument("--seed", type=int, help=f"seed of initialisation, batches and dropout (default {default('seed')})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", metavar="DIR", help=out_help)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmrec-fast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    from .backends import BACKENDS

    train = commands.add_parser("train", help="train a model and report its test metrics",
                                description="Train a model; every training option left out takes the model's "
                                "training default (mmrec-fast models lists them), else the default shown.")  # fmt: skip
    _add_run_arguments(train, "write last.pt, best.pt and run.json here (default: none are written)")
    train.add_argument("--seeds", type=int, metavar="N", help="train N seeds (--seed, --seed + 1, ...), one run each in "
                       "--out/seed_<s>/, and report each test metric's mean, sd and min-max (default: one run)")  # fmt: skip
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue the run of this last.pt")
    train.set_defaults(run=cmd_train)

    search = commands.add_parser("search", help="hyperparameter search: choose on validation, test once over seeds",
                                 description="Search a model's hyperparameters: every trial is a training run with early "
                                 "stopping on the valid metric and no test evaluation; the setting with the best valid "
                                 "score is then trained over --seeds seeds and only those runs are evaluated on test. "
                                 "Runs on optuna (pip install optuna); running the same command again continues the "
                                 "search in --out.")  # fmt: skip
    _add_run_arguments(search, "the search's folder (required): study (search.db), trials/, chosen/, summary.json, "
                       "report.md; the same command again continues the search there")
    search.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                        help="values of a hyperparameter (repeatable): a --set name or lr, weight_decay, batch_size, "
                        "optimizer, negatives (default: the model's authors' grid; mmrec-fast models lists it)")  # fmt: skip
    search.add_argument("--sampler", choices=("grid", "tpe"), default="grid",
                        help="grid: every setting once; tpe: optuna's TPE over the same values (default: grid)")  # fmt: skip
    search.add_argument("--trials", type=int, help="trials in all, failed ones included (default: the grid's size; tpe needs it)")
    search.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds of the chosen setting's test runs (default: 3)")
    search.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every finished trial's last.pt and best.pt (default: a finished trial keeps its run.json "
                        "only, the leading one its checkpoints until a better one finishes; the chosen setting's seed "
                        "runs keep theirs)")  # fmt: skip
    search.add_argument("--verbose", action="store_true", help="also print every epoch of every run")
    search.set_defaults(run=cmd_search, no_progress=True)

    evaluate = commands.add_parser("evaluate", help="evaluate a saved model")
    evaluate.add_argument("--checkpoint", required=True, metavar="PATH", help="best.pt or last.pt of a training run")
    evaluate.add_argument("--split", choices=("valid", "test"), default="test", help="split to rank (default: test)")
    evaluate.add_argument("--data", metavar="DIR", help="dataset directory (default: the one the checkpoint was trained on)")
    evaluate.add_argument("--format", choices=("auto", "mmrec", "mmssl"), default="auto", help="format of --data (default: auto)")
    evaluate.add_argument("--ks", type=_ks, default=None, help="cut-offs (default: those of the training run)")
    evaluate.add_argument("--ndcg", choices=("mmrec", "ngcf"), default=None, help="NDCG form, ngcf: MMSSL's (default: that of the training run)")
    evaluate.add_argument("--eval-backend", choices=BACKENDS, default=None, help="backend of topk_scores (default: automatic)")
    evaluate.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    evaluate.set_defaults(run=cmd_evaluate)

    models = commands.add_parser("models", help="list the models with their hyperparameters and training defaults")
    models.set_defaults(run=cmd_models)
    info = commands.add_parser("info", help="versions, build and backends")
    info.set_defaults(run=cmd_info)
    bench = commands.add_parser("bench", help="run microbenchmarks and print ratios against baselines")
    bench.add_argument("ops", nargs="*", metavar="OP", help=f"which benchmarks ({', '.join(available_benchmarks())}, or all; "
                                                          "default: all); or: report RUN.json, the Markdown page with charts of a "
                                                          "--json record")  # fmt: skip
    bench.add_argument("--out", metavar="DIR", help="bench report: folder of the page and charts (default: the record's)")
    bench.add_argument("--json", metavar="PATH", help="also write pytest-benchmark's JSON record to PATH")
    bench.add_argument("-k", dest="keyword", metavar="EXPR", help="only the cases matching this pytest -k expression")
    bench.set_defaults(run=cmd_bench)
    return parser


def _chosen_device(args) -> str:
    """--device, checked, or the default: cuda where there is one, else cpu."""
    return _device(args.device) if args.device else ("cuda" if _cuda() else "cpu")


def _start_process_group(device: str) -> bool:
    """Under torchrun (WORLD_SIZE set): join the process group (NCCL for CUDA devices, gloo on CPUs) and silence
    the standard output of every rank but 0. Returns whether it did."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    cuda = device.startswith("cuda")
    if cuda:
        import torch

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    if dist.get_rank() != 0:
        sys.stdout = open(os.devnull, "w")
    return True


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    from .backends import BackendUnavailable
    from .data import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (DataError, FileNotFoundError, ValueError, BackendUnavailable) as error:
        print(f"mmrec-fast {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
