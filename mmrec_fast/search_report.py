"""The report of a search (:func:`mmrec_fast.search.search`): ``report.md`` with the protocol, every trial, the chosen
setting and its seed runs' test metrics as mean ± sd [min, max], and two charts (matplotlib): the validation score
of each trial, and of each value of each hyperparameter."""

from __future__ import annotations

from pathlib import Path

from .search import setting_label, summary_text

#: the test metrics the report's table shows first (all of them are in summary.json)
HEADLINE = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def write_report(summary: dict, out_dir) -> list[str]:
    """Write ``<out_dir>/report.md`` (and the charts, where matplotlib is installed); returns lines saying what was
    written."""
    out = Path(out_dir)
    metric = summary["valid_metric"]
    chosen = summary["chosen"]
    charts, said = _charts(summary, out)
    lines = [f"# Search: {summary['model']} on {summary['dataset'].get('path', summary['dataset'])}", ""]
    lines += [f"Protocol: every setting trained with seed {chosen['search_seed']} and early stopping on valid {metric}; "
              f"the setting with the highest valid {metric} among the completed trials is chosen (ties: the earlier "
              "trial); only the chosen setting is evaluated on test, once per seed. No trial was evaluated on test.",
              "", f"Sampler: {summary['sampler']}; fixed: "
              + (setting_label(summary["assignments"]) or "nothing") + "; training overrides: "
              + (", ".join(f"{k}={v}" for k, v in summary["train_overrides"].items()) or "none") + ".", ""]  # fmt: skip
    lines += ["## Trials", "", f"| # | setting | state | valid {metric} | best epoch / epochs | s |", "|---|---|---|---|---|---|"]
    for t in summary["trials"]:
        score = f"{t['valid']:.4f}" if t["valid"] is not None else (t.get("error") or "")
        mark = " **chosen**" if t["number"] == chosen["trial"] else ""
        epochs = f"{t['best_epoch']} / {t['epochs_run']}" if t.get("epochs_run") is not None else ""
        seconds = f"{t['seconds']:.0f}" if t.get("seconds") is not None else ""
        lines.append(f"| {t['number']} | {setting_label(t['setting'])}{mark} | {t['state']} | {score} | {epochs} | {seconds} |")
    lines += ["", f"## Chosen: {setting_label(chosen['setting'])}", "",
              f"Trial {chosen['trial']}, valid {metric} {chosen['valid']:.4f}; {chosen['trials_completed']} trial(s) "
              f"completed, {chosen['trials_failed']} failed. Test metrics over seeds {', '.join(map(str, summary['seeds']))} "
              "(mean ± sample sd [min, max]):", "", "```"]  # fmt: skip
    names = tuple(name for name in HEADLINE if name in summary["test"]) or tuple(summary["test"])
    lines += [summary_text(summary["test"], names), "```", ""]
    titles = {"search_trials.png": f"valid {metric} per trial", "search_parameters.png": f"valid {metric} per hyperparameter value"}
    lines += [f"![{titles[name]}]({name})" for name in charts] + ([""] if charts else [])
    (out / "report.md").write_text("\n".join(lines))
    return [f"report: {out / 'report.md'}"] + said


def _charts(summary: dict, out: Path) -> tuple[list[str], list[str]]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], ["charts not drawn: matplotlib is not installed (pip install matplotlib)"]
    metric, chosen = summary["valid_metric"], summary["chosen"]["trial"]
    done = [t for t in summary["trials"] if t["valid"] is not None]
    figure, axes = plt.subplots(figsize=(6, 3.2))
    axes.plot([t["number"] for t in done], [t["valid"] for t in done], "o-", color="tab:blue", label="trial")
    axes.plot([t["number"] for t in done if t["number"] == chosen], [t["valid"] for t in done if t["number"] == chosen],
              "*", color="tab:red", markersize=14, label="chosen")  # fmt: skip
    axes.set(xlabel="trial", ylabel=f"valid {metric}", title=f"{summary['model']}: validation score per trial")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out / "search_trials.png", dpi=110)
    plt.close(figure)
    names = list(summary["grid"])
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for panel, name in zip(axes[0], names):
        values = summary["grid"][name]
        for t in done:
            x = values.index(t["setting"][name])
            panel.plot(x, t["valid"], "*" if t["number"] == chosen else "o", color="tab:red" if t["number"] == chosen else "tab:blue",
                       markersize=12 if t["number"] == chosen else 6)  # fmt: skip
        panel.set_xticks(range(len(values)), values)
        panel.set(xlabel=name, ylabel=f"valid {metric}")
    figure.suptitle(f"{summary['model']}: validation score per hyperparameter value (star: chosen)")
    figure.tight_layout()
    figure.savefig(out / "search_parameters.png", dpi=110)
    plt.close(figure)
    return ["search_trials.png", "search_parameters.png"], [f"charts: {out / 'search_trials.png'}, {out / 'search_parameters.png'}"]
