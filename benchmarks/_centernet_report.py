"""The Markdown report of the CenterNet accuracy benchmark (``benchmarks.accuracy_centernet``)."""

from __future__ import annotations

import statistics
from typing import Any

from benchmarks import _common as C

ARMS = ("a", "a_long", "b", "c", "b_lattice", "c_lattice", "b_peak", "c_peak")
EXPORTED_FROM = {"c": "b", "c_lattice": "b_lattice", "c_peak": "b_peak"}
# Per task: the headline metric, then the one reported beside it.
METRICS = {"detection": ("map", "map_50"), "keypoints": ("keypoint_ap", "pck")}


LABELS = {
    "a": "(a) baseline, original stride",
    "a_long": "(a') baseline, equal compute",
    "b": "(b) dense, no lattice term",
    "c": "(c) (b) exported to the original stride",
    "b_lattice": "(b-lattice) dense + the exported network's loss",
    "c_lattice": "(c-lattice) (b-lattice) exported",
    "b_peak": "(b-peak) dense, peak-cell regression only",
    "c_peak": "(c-peak) (b-peak) exported",
}
CLAIMS = {
    "c_lattice-a_long": "(c-lattice) beats (a') (equal training compute)",
    "c_lattice-a": "(c-lattice) beats (a) at (a)'s test cost",
    "c_lattice-c": "(c-lattice) beats (c): the lattice term helps the export",
    "b_lattice-b": "(b-lattice) beats (b): the lattice term helps the dense model",
    "c-a": "(c) beats (a) at (a)'s test cost",
    "c-c_peak": "(c) beats (c-peak): training the original lattice's cells matters",
    "c-a_long": "(c) beats (a') (equal training compute)",
    "b-a": "(b) beats (a)",
}
VERDICTS = {"holds": "**holds**", "reversed": "**reversed**",
            "inconclusive": "inconclusive (interval includes 0)"}  # fmt: skip
NAMES = {"map": "box mAP", "map_50": "box AP@0.5", "keypoint_ap": "keypoint AP", "pck": "PCK@0.2"}


def _start(payload: dict[str, Any]) -> str:
    pre = payload.get("pretraining") or {}
    if not pre.get("steps"):
        return "from random weights"
    return (
        f"pretrained {pre['steps']} steps at the original stride on synthetic segmentation of "
        "three other shapes (the segmentation benchmark's synthetic start)"
    )


def _ci(values: list[float]) -> str:
    return f"[{values[0]:+.4f}, {values[1]:+.4f}]"


def _arm_row(payload: dict[str, Any], arm: str) -> list[str]:
    headline, second = METRICS[payload["task"]]
    runs, v = payload["runs"], payload["summary"]["arms"][arm]
    trained = EXPORTED_FROM.get(arm, arm)
    steps = runs[0]["training"][trained]["steps"]
    cpu = statistics.mean(r["training"][trained]["cpu_s"] for r in runs)
    cost = [r["cost"]["b" if arm.startswith("b") else "a"] for r in runs]
    return [LABELS[arm], f"{v[headline]['mean']:.4f}",
            ", ".join(f"{x:.3f}" for x in v[headline]["per_seed"]), f"{v[second]['mean']:.4f}",
            str(steps), f"{cpu:.0f}", f"{cost[0]['macs'] / 1e9:.3f}",
            f"{1e3 * statistics.median(c['seconds'] for c in cost):.1f}"]  # fmt: skip


def _claim_row(payload: dict[str, Any], key: str) -> list[str]:
    headline, second = METRICS[payload["task"]]
    c = payload["summary"]["comparisons"][key]
    m, s = c[headline], c[second]
    return [CLAIMS[key], f"{m['diff']:+.4f}", _ci(m["ci_images"]), _ci(m["ci_hierarchical"]),
            f"{s['diff']:+.4f}", _ci(s["ci_images"]), f"{c['seeds_won']}/{len(m['per_seed'])}",
            VERDICTS[c["verdict"]]]  # fmt: skip


def markdown(payload: dict[str, Any]) -> str:
    """The report of one task."""
    s, m, name = payload["settings"], payload["machine"], payload["task"]
    headline, second = (NAMES[k] for k in METRICS[name])
    ratio = payload["time_ratio"]
    lines = [
        f"# Accuracy ({name}): dense training, exported, against training at the original stride",
        "",
        C.machine_line(m),
        f"Whole run (both tasks share the processes): {m['wall_seconds'] / 60:.1f} min wall, "
        f"{m['cpu_seconds'] / 60:.1f} min CPU; load average at the end "
        f"{[round(v, 1) for v in m['load_average_now']]}.",
        "",
        f"CenterNet {name} on the built-in synthetic data ({s['image_size']} px), "
        f"`{s['backbone']}` {_start(payload)} + CenterNet head, dense output stride "
        f"{s['output_stride']}, batch {s['batch_size']}, AdamW lr {s['lr']}, cosine schedule "
        f"with {s['warmup']} warm-up steps, seeds {s['seeds']} (the seed sets the "
        f"initialisation, the batch order and the data: train and {s['num_test']} test images). "
        f"(b-lattice) adds the exported network's own loss with `lattice_loss_weight="
        f"{s.get('lattice_weight', 1.0):g}`; (b) trains without it.",
        f"Training cost: one dense step costs {ratio['ratio']:.2f}x an original one "
        f"({1e3 * ratio['seconds_per_step']['dense']:.0f} vs "
        f"{1e3 * ratio['seconds_per_step']['original']:.0f} ms, {m['clock']} clock); "
        + (
            f"the equal-compute baseline (a') trains {payload['a_long_steps']} steps against "
            f"{s['steps']}."
            if s["a_long"]
            else f"an equal-compute baseline ({payload['a_long_steps']} steps) was not run "
            "(`--a-long`), so (a) and (b) differ in training compute as well."
        ),
        "",
    ]
    if not payload["complete"]:
        done = sorted(r["seed"] for r in payload["runs"])
        lines += [f"**Incomplete**: seeds {done} of {s['seeds']} finished.", ""]
    if "summary" not in payload:
        return "\n".join(lines)
    runs = payload["runs"]
    lines += [
        C.table(
            [
                "arm",
                f"{headline} (mean over seeds)",
                f"{headline} per seed",
                second,
                "train steps",
                "train CPU s",
                "test GMACs / image",
                "test ms / image",
            ],
            [_arm_row(payload, arm) for arm in ARMS if arm in payload["summary"]["arms"]],
        ),
        "",
        C.table(
            [
                f"claim ({headline})",
                "Δ",
                "95% CI (images)",
                "95% CI (seeds and images)",
                f"Δ {second}",
                "95% CI (images)",
                "seeds won",
                "verdict",
            ],
            [_claim_row(payload, k) for k in CLAIMS if k in payload["summary"]["comparisons"]],
        ),
        "",
        "Every number is the task's own `evaluate` (the exports through the dense task's "
        "`evaluate(network=exported)`); a detector that finds nothing scores 0, the floor. "
        f"Intervals: paired bootstrap ({s['bootstrap']} replicates) of the mean over seeds of "
        "the difference, re-accumulating pycocotools' per-image matches on resampled test "
        'images (the same images for every arm); "seeds and images" resamples the seeds too. '
        f"A claim holds when the {headline} interval over images lies above 0. Re-accumulating "
        f"the whole test set reproduces the task's number to "
        f"{max(r['resample_max_error'] for r in runs):.1e}.",
        "",
        f"(c) is (b)'s network at the original stride, (c-lattice) (b-lattice)'s: their raw maps "
        "equal the dense ones on the lattice "
        f"(largest relative error {max(r['export_max_rel_error'] for r in runs):.1e}); the "
        f"original heatmap has {runs[0]['cells']['a']} cells, the dense one "
        f"{runs[0]['cells']['b']}. (b) and (c) regress size and offset at every cell within "
        "half an original stride of a centre and at the original lattice's nearest cell; "
        "(b-peak) and (c-peak), when run, only at the dense peak cell, so (c-peak) decodes "
        "sizes and offsets at cells that were never taught them. (b-lattice) also scores the "
        "dense maps' lattice subsample as the exported model's maps, with targets encoded "
        "for them, in the same pass.",
    ]
    return "\n".join(lines)
