"""Table and plot for :mod:`benchmarks.accuracy`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks._common import machine_line, table


def headers(metric: str, others: list[str]) -> list[str]:
    """Column names of the table."""
    return ["model", f"{metric} mean ± std", "min-max", *(f"{o} mean" for o in others),
            "GMACs / image", "CPU ms / image", "train s"]  # fmt: skip


LABELS = {
    "a_baseline": "(a) baseline, original stride",
    "b_dense": "(b) dense, same init and budget",
    "c_exported": "(c) (b) inverse-transferred",
}


def markdown(payload: dict[str, Any]) -> str:
    """The a/b/c table with spread, costs and the verdict on the claim."""
    s, summary, runs = payload["settings"], payload["summary"], payload["runs"]
    metric = s["metric"]
    others = [name for name in runs[0]["scores"]["a_baseline"] if name != metric]
    rows = []
    for key, label in LABELS.items():
        v = summary[key]
        train = [r["train_seconds"].get(key) for r in runs if key in r["train_seconds"]]
        other = [sum(r["scores"][key][o] for r in runs) / len(runs) for o in others]
        rows.append([
            label, f"{v['mean']:.4f} ± {v['std']:.4f}", f"{v['min']:.4f}-{v['max']:.4f}",
            *(f"{o:.4f}" for o in other), f"{v['macs_per_image'] / 1e9:.3f}",
            f"{v['cpu_ms_per_image']:.1f}",
            f"{sum(train) / len(train):.0f}" if train else "(none: same weights as b)",
        ])  # fmt: skip
    diff = summary["c_minus_a"]
    holds = diff["mean"] > 0 and diff["wins"] == len(diff["per_seed"])
    verdict = (
        "**holds** on every seed" if holds else
        "**does not hold** here" if diff["mean"] <= 0 else
        "holds on average, **not on every seed**"
    )  # fmt: skip
    per_seed = ", ".join(f"{d:+.4f}" for d in diff["per_seed"])
    lines = [
        f"# Accuracy: {s['task']} ({metric}), a vs b vs c",
        "",
        machine_line(payload["machine"]),
        f"Whole run: {payload['machine']['wall_seconds'] / 60:.1f} min wall, "
        f"{payload['machine']['cpu_seconds'] / 60:.1f} min of CPU time.",
        "",
        f"Backbone `{s['task_kwargs']['backbone']}`, dense output stride {s['output_stride']}, "
        f"{s['steps']} steps, seeds {s['seeds']}; task settings `{s['task_kwargs']}`, data "
        f"`{s['data_kwargs']}`. Test-time cost per image includes the task's forward "
        "(bilinear upsampling for segmentation); MACs from torch.utils.flop_counter.",
        "",
        table(headers(metric, others), rows),
        "",
        f"Claim: (c) beats (a) at (a)'s test-time cost. (c) - (a) = {diff['mean']:+.4f} ± "
        f"{diff['std']:.4f} (per seed: {per_seed}; {diff['wins']}/{len(diff['per_seed'])} "
        f"wins): the claim {verdict}.",
    ]
    return "\n".join(lines)


def plot(payload: dict[str, Any], path: Path) -> None:
    """Metric (mean, min-max) against test-time MACs per image for a, b and c."""
    summary, metric = payload["summary"], payload["settings"]["metric"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for key, label in LABELS.items():
        v = summary[key]
        err = [[v["mean"] - v["min"]], [v["max"] - v["mean"]]]
        ax.errorbar(v["macs_per_image"] / 1e9, v["mean"], yerr=err, fmt="o", capsize=4,
                    label=label)  # fmt: skip
    for run in payload["runs"]:
        xs = [summary[k]["macs_per_image"] / 1e9 for k in LABELS]
        ys = [run["scores"][k][metric] for k in LABELS]
        ax.scatter(xs, ys, s=8, color="grey", alpha=0.6, zorder=0)
    ax.set_xscale("log")
    ax.set_xlabel("test-time GMACs per image")
    ax.set_ylabel(metric)
    ax.set_title(f"{payload['settings']['task']}: mean and range over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
