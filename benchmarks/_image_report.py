"""Statistics and the Markdown report of the image-level benchmark (``benchmarks.accuracy_image``).

Every arm is scored per test image (classification: 1 when its class is right, 0 when not;
regression: the absolute error), so a metric is a mean over images and a bootstrap replicate
is the same mean with the images resampled; every arm of a seed is resampled with the same
images (paired). A comparison's difference is the improvement: accuracy gained, or mean
absolute error removed.
"""

from __future__ import annotations

import statistics
from typing import Any

from torch import Tensor

from benchmarks import _common as C
from benchmarks._accuracy_stats import interval_verdict, paired_intervals

#: Per task: the metric's name, whether higher is better, and the task's title.
TASKS: dict[str, tuple[str, bool, str]] = {
    "classification": ("accuracy", True, "image classification"),
    "regression": ("MAE", False, "image regression"),
}
ARMS = ("base", "base_tta", "dense_p0", "dense_mean", "exported")
LABELS = {
    "base": "(a) baseline, original stride",
    "base_tta": "(a-tta) (a) on k x k shifted inputs, averaged",
    "dense_p0": "(b) dense, phase 0",
    "dense_mean": "(b-mean) dense, mean over the k x k phases",
    "exported": "(c) (b) exported to the original stride",
}
# first's improvement over second; a claim holds when the interval over images lies above 0.
CLAIMS = {
    "exported-base": "(c) beats (a) at (a)'s test cost",
    "dense_mean-base": "(b-mean) beats (a)",
    "dense_mean-base_tta": "(b-mean) beats (a-tta), the k x k-pass ensemble",
    "base_tta-base": "(a-tta) beats (a): the shifted-input ensemble alone",
}
VERDICTS = {"holds": "**holds**", "reversed": "**reversed**",
            "inconclusive": "inconclusive (interval includes 0)"}  # fmt: skip
# The network whose cost an arm pays at test time.
COST_OF = {"base": "base", "base_tta": "base_tta", "dense_p0": "dense", "dense_mean": "dense",
           "exported": "base"}  # fmt: skip


def replicates(scores: Tensor, weights: Tensor) -> Tensor:
    """The metric of every bootstrap replicate: ``weights[r, i]`` copies of image ``i``."""
    return (weights @ scores.double()) / weights.sum(1)


def summarise(
    task: str, runs: list[dict[str, Any]], reps: dict[int, dict[str, Tensor]]
) -> dict[str, Any]:
    """Per arm: the metric per seed and mean; per claim: paired intervals and verdict.

    Args:
        task: ``classification`` or ``regression`` (which way is better).
        runs: the runs of one start (each with ``seed`` and ``metric`` per arm).
        reps: per seed, each arm's ``[replicates]`` bootstrap metric.
    """
    higher = TASKS[task][1]
    runs = sorted(runs, key=lambda r: r["seed"])
    arms = {
        arm: {"per_seed": (v := [r["metric"][arm] for r in runs]), "mean": statistics.mean(v)}
        for arm in ARMS
    }
    comparisons = {}
    for key in CLAIMS:
        first, second = key.split("-")
        better, worse = (first, second) if higher else (second, first)
        result = paired_intervals(
            [reps[r["seed"]][better] for r in runs],
            [reps[r["seed"]][worse] for r in runs],
            arms[better]["per_seed"],
            arms[worse]["per_seed"],
        )
        result["verdict"] = interval_verdict(result["ci_images"])
        result["seeds_won"] = sum(d > 0 for d in result["per_seed"])
        comparisons[key] = result
    return {"seeds": [r["seed"] for r in runs], "arms": arms, "comparisons": comparisons}


def _ci(values: list[float]) -> str:
    return f"[{values[0]:+.4f}, {values[1]:+.4f}]"


def _arm_row(start: dict[str, Any], arm: str) -> list[str]:
    runs, v = start["runs"], start["summary"]["arms"][arm]
    trained = "base" if arm.startswith("base") else "dense"
    steps = runs[0]["training"][trained]["steps"]
    cpu = statistics.mean(r["training"][trained]["cpu_s"] for r in runs)
    cost = [r["cost"][COST_OF[arm]] for r in runs]
    relative = statistics.median(c["seconds"] / r["cost"]["base"]["seconds"]
                                 for c, r in zip(cost, runs, strict=True))  # fmt: skip
    return [LABELS[arm], f"{v['mean']:.4f}", ", ".join(f"{x:.3f}" for x in v["per_seed"]),
            str(steps), f"{cpu:.0f}", f"{cost[0]['macs'] / 1e9:.3f}",
            f"{1e3 * statistics.median(c['seconds'] for c in cost):.2f}",
            f"{relative:.2f}"]  # fmt: skip


def _claim_row(start: dict[str, Any], key: str) -> list[str]:
    c = start["summary"]["comparisons"][key]
    return [CLAIMS[key], f"{c['diff']:+.4f}", _ci(c["ci_images"]), _ci(c["ci_hierarchical"]),
            f"{c['seeds_won']}/{len(c['per_seed'])}", VERDICTS[c["verdict"]]]  # fmt: skip


def start_section(start: dict[str, Any], task: str) -> list[str]:
    """The tables of one start (ImageNet or scratch)."""
    metric, higher, _ = TASKS[task]
    lines = [f"## {start['title']}", ""]
    if "summary" not in start:
        return [*lines, "No seed finished.", ""]
    runs = start["runs"]
    low, high = start["radius" if task == "classification" else "regression_radius"]
    lines += [
        f"`{start['backbone']}` ({start['origin']}), {start['image_size']} px images, "
        f"circumradius {low:g}-{high:g} of the side, {start['steps']} training steps per arm, "
        f"lr {start['lr']:g}; seeds {start['summary']['seeds']}.",
        "",
        C.table(
            [
                "arm",
                f"{metric} (mean over seeds)",
                "per seed",
                "train steps",
                "train CPU s",
                "test GMACs / image",
                "test ms / image",
                "test time / one pass",
            ],
            [_arm_row(start, arm) for arm in ARMS],
        ),
        "",
        C.table(
            [
                f"claim ({metric})",
                "improvement" if higher else "MAE removed",
                "95% CI (images)",
                "95% CI (seeds and images)",
                "seeds won",
                "verdict",
            ],
            [_claim_row(start, key) for key in CLAIMS],
        ),
        "",
        f"(c) equals (b)'s phase 0: largest relative output error "
        f"{max(r['export_max_rel_error'] for r in runs):.1e} (asserted below 1e-4). "
        f"(a)'s weights run densely give phases within "
        f"{max(r['tta_phase_max_abs'] for r in runs):.2g} (largest absolute difference of the "
        "raw outputs) "
        "of (a) on the shifted inputs: the dense phases are the shifted views, up to the "
        "border, which the shifted input pads and the dense phase reads.",
        "",
    ]
    return lines


def markdown(payload: dict[str, Any]) -> str:
    """The whole report of one task."""
    s, m, task = payload["settings"], payload["machine"], payload["task"]
    metric, higher, title = TASKS[task]
    k = s["k"]
    what = (
        f"labelled by the shape's type ({s['num_classes']} types)"
        if task == "classification"
        else "the target the shape's circumradius in percent of the image side, L1 loss on "
        "the target normalised by its mean and standard deviation"
    )
    lines = [
        f"# Accuracy ({title}): dense training, exported, against the baseline and its "
        "shifted-input ensemble",
        "",
        C.machine_line(m),
        f"Whole run (both tasks share the processes): {m['wall_seconds'] / 60:.1f} min wall, "
        f"{m['cpu_seconds'] / 60:.1f} min CPU; load average at the end "
        f"{[round(v, 1) for v in m['load_average_now']]}.",
        "",
        f"Synthetic one-shape images, {what}; the settings of each start below; "
        f"{s['num_test']} test images, batch {s['batch_size']}, AdamW, cosine schedule with a "
        "10% warm-up (at most 20 steps). The seed sets the output layer's initialisation (and, "
        "from scratch, every weight), the batch order and the data (train and test images); "
        f"both trained arms of a seed see the same batches. Dense output stride "
        f"{s['output_stride']}: k = {k}, so the dense network gives {k * k} outputs per image "
        "(the k x k phases), phase 0 being the original network's. (a-tta) runs (a) on the "
        f"image shifted by (i, j) x {s['output_stride']} px for every phase (i, j), the "
        "trailing side padded with zeros (the mean colour), and averages the outputs as "
        "(b-mean) averages its phases.",
        "",
    ]
    if not payload["complete"]:
        done = f"{payload['finished']} of {payload['planned']}"
        lines += [f"**Incomplete**: {done} runs (start, seed) finished.", ""]
    for start in payload["starts"].values():
        lines += start_section(start, task)
    better = "higher" if higher else "lower"
    lines += [
        f"Intervals: paired bootstrap ({s['bootstrap']} replicates) of the mean over seeds of "
        f"the improvement ({better} {metric} is better), resampling test images (the same "
        'images for every arm of a seed); "seeds and images" resamples the seeds too. A claim '
        "holds when the interval over images lies above 0, and is reversed when it lies "
        "below. Test cost: MACs counted by torch's flop counter, time the median of "
        f"interleaved rounds ({m['clock']} clock, batch {s['cost_batch']}); the last column "
        "divides by one original pass.",
    ]
    return "\n".join(lines)
