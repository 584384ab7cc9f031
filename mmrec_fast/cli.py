"""The ``mmrec-fast`` command line.

    mmrec-fast info                    versions, what was built, which backend runs each op on each device
    mmrec-fast bench [OP ...|all]      run the microbenchmarks (benchmarks/bench_<op>.py) and print the table of
                                       medians and speedups against the baselines run beside them
"""

from __future__ import annotations

import argparse
import json
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmrec-fast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    info = commands.add_parser("info", help="versions, build and backends")
    info.set_defaults(run=cmd_info)
    bench = commands.add_parser("bench", help="run microbenchmarks and print ratios against baselines")
    bench.add_argument("ops", nargs="*", metavar="OP", help=f"which benchmarks ({', '.join(available_benchmarks())}, or all)")
    bench.add_argument("--json", metavar="PATH", help="also write pytest-benchmark's JSON record to PATH")
    bench.add_argument("-k", dest="keyword", metavar="EXPR", help="only the cases matching this pytest -k expression")
    bench.set_defaults(run=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
