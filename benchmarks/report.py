"""The benchmark report: a pytest-benchmark JSON record (``mmrec-fast bench OP ... --json run.json``) turned into a
Markdown page with charts, and the one rule that pairs mmrec_fast's cases with their baselines (the ratio table at
the end of a benchmark run uses it too).

    mmrec-fast bench report run.json [--out DIR]      (or: python benchmarks/report.py run.json [--out DIR])

writes ``DIR/report.md`` (default: beside the JSON, named after it) with the machine, each group's medians and
speed-ups, and two charts: ``<name>-speedup.png`` (the speed-up of each mmrec_fast case over each baseline of its
group, log scale, 1x marked) and, where the cases recorded it, ``<name>-memory.png`` (peak extra memory). Charts need
matplotlib (the ``bench`` extra); without it the page is written with the tables only and says so.

Pairing rule: a case is mmrec_fast's when its parameter label starts with ``mmrec_fast``; every other case of the
same benchmark group is a baseline; the speed-up is median(baseline) / median(mmrec_fast case).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

OURS_PREFIX = "mmrec_fast"
#: extra_info keys of peak memory, with how to print them (here and in the ratio table at the end of a run)
MEMORY_FORMATS = {"peak_extra_nd": "{:.2f} x (n x d)", "peak_extra_mb": "{:.1f} MB", "peak_rss_mb": "RSS {:.1f} MB"}


@dataclass
class Case:
    label: str  # the parameter label, e.g. "mmrec_fast native-baby"
    median: float  # seconds
    extra: dict = field(default_factory=dict)

    @property
    def ours(self) -> bool:
        return self.label.startswith(OURS_PREFIX)

    @property
    def short(self) -> str:
        """The label before its first "-" (the implementation, without the input's name)."""
        return self.label.split("-")[0]


def case_label(name: str) -> str:
    """"test_x[mmrec_fast native-baby]" -> "mmrec_fast native-baby" (the name itself without parameters)."""
    return name.split("[", 1)[-1].rstrip("]")


def speedups(cases: list[Case]) -> list[tuple[Case, Case, float]]:
    """(mmrec_fast case, baseline, median(baseline) / median(ours)) for every pair of one group."""
    ours = [c for c in cases if c.ours]
    return [(o, b, b.median / o.median) for b in cases if not b.ours for o in ours if o.median > 0]


def load_record(path: Path) -> tuple[dict[str, list[Case]], dict]:
    """{group: [Case]}, machine_info (with the record's datetime) of a pytest-benchmark JSON file."""
    record = json.loads(Path(path).read_text())
    groups: dict[str, list[Case]] = {}
    for bench in record.get("benchmarks", []):
        groups.setdefault(bench.get("group") or "", []).append(
            Case(case_label(bench["name"]), bench["stats"]["median"], bench.get("extra_info") or {}))
    return groups, {**record.get("machine_info", {}), "datetime": record.get("datetime", "")}


def machine_line(machine_info: dict) -> str:
    """mmrec_fast's own machine description when the run recorded it, else pytest-benchmark's CPU and node."""
    if machine_info.get("mmrec_fast"):
        return machine_info["mmrec_fast"]
    cpu = machine_info.get("cpu", {})
    return f"{cpu.get('brand_raw', 'unknown CPU')}, {cpu.get('count', '?')} cores; node {machine_info.get('node', '?')}"


def memory_text(case: Case) -> str:
    """The case's recorded peak memories, e.g. "12.5 MB" ("" when it recorded none)."""
    return ", ".join(form.format(case.extra[key]) for key, form in MEMORY_FORMATS.items() if key in case.extra)


def write_report(json_path: Path, out: Path | None = None) -> Path:
    """Writes the Markdown page (and the charts when matplotlib is there); returns the page's path."""
    json_path = Path(json_path)
    groups, machine_info = load_record(json_path)
    if not groups:
        raise ValueError(f"{json_path}: no benchmarks in this record")
    out = Path(out) if out is not None else json_path.parent
    out.mkdir(parents=True, exist_ok=True)
    stem = json_path.stem
    lines = [f"# Benchmark report: {stem}", "", f"Machine: {machine_line(machine_info)}.",
             f"Record: `{json_path.name}` ({machine_info.get('datetime', '') or 'no date recorded'}); speed-up = median of the "
             "baseline / median of the mmrec_fast case, in the same run; > 1 means mmrec_fast is faster.", ""]  # fmt: skip
    charts = _charts(groups, out, stem)
    if charts is None:
        lines += ["(Charts not drawn: matplotlib is not installed; `pip install matplotlib`.)", ""]
    else:
        lines += [f"![speed-up]({name})" for name in charts] + [""]
    for group, cases in groups.items():
        lines += [f"## {group or '(no group)'}", "", "| case | median | peak memory | speed-up of mmrec_fast |", "|---|---|---|---|"]
        pairs = speedups(cases)
        for case in sorted(cases, key=lambda c: c.median):
            ratio = "; ".join(f"{o.short}: {r:.2f}x" for o, b, r in pairs if b is case)
            lines.append(f"| {case.label} | {_seconds(case.median)} | {memory_text(case) or '—'} | {ratio or '—'} |")
        lines.append("")
    page = out / f"{stem}-report.md"
    page.write_text("\n".join(lines))
    return page


def _seconds(value: float) -> str:
    return f"{value * 1e3:.2f} ms" if value < 1 else f"{value:.2f} s"


def _charts(groups: dict[str, list[Case]], out: Path, stem: str) -> list[str] | None:
    """The speed-up chart (and the memory chart where any case recorded memory); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [(f"{group}\n{o.short} vs {b.short}", r) for group, cases in groups.items() for o, b, r in speedups(cases)]
    names = []
    if rows:
        fig, ax = plt.subplots(figsize=(13, 0.45 * len(rows) + 1.2))
        labels, values = zip(*rows)
        colours = ["tab:green" if v >= 1 else "tab:red" for v in values]
        ax.barh(range(len(rows)), values, color=colours)
        ax.set_yticks(range(len(rows)), labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", linewidth=0.8)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.2f}x", va="center", fontsize=6)
        ax.set_xlabel("speed-up of mmrec_fast (median of baseline / median of mmrec_fast), log scale")
        ax.set_xlim(min(values + (1.0,)) / 1.5, max(values + (1.0,)) * 3)
        fig.tight_layout()
        names.append(f"{stem}-speedup.png")
        fig.savefig(out / names[-1], dpi=130)
        plt.close(fig)
    memory = [(f"{group}\n{c.label}", c.extra["peak_extra_mb"]) for group, cases in groups.items() for c in cases
              if "peak_extra_mb" in c.extra]  # fmt: skip
    if memory:
        fig, ax = plt.subplots(figsize=(13, 0.35 * len(memory) + 1.2))
        labels, values = zip(*memory)
        ax.barh(range(len(memory)), [max(v, 1e-3) for v in values], color="tab:blue")
        ax.set_yticks(range(len(memory)), labels, fontsize=6)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("peak extra tensor memory (MB), log scale")
        fig.tight_layout()
        names.append(f"{stem}-memory.png")
        fig.savefig(out / names[-1], dpi=130)
        plt.close(fig)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmrec-fast bench report", description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a pytest-benchmark JSON record (mmrec-fast bench ... --json PATH)")
    parser.add_argument("--out", type=Path, help="folder of the page and charts (default: the JSON's folder)")
    args = parser.parse_args(argv)
    if not args.json.is_file():
        print(f"mmrec-fast bench report: error: {args.json}: no such file", file=sys.stderr)
        return 2
    try:
        page = write_report(args.json, args.out)
    except (ValueError, KeyError, json.JSONDecodeError) as error:
        print(f"mmrec-fast bench report: error: {args.json}: not a pytest-benchmark record ({error})", file=sys.stderr)
        return 2
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
