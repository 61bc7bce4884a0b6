"""Accuracy of CenterNet detection and keypoints: dense training exported, against the baseline.

Per task and seed, every arm starts from the same random weights (the seed sets them, the
synthetic data and the batch order) and trains with the same schedule on the same batches:

- ``a``: the baseline, trained at the backbone's own stride (32) for N steps;
- ``a_long`` (optional, ``--a-long``): the same for N times the measured dense / original
  training time per step (equal training compute);
- ``b``: the same start converted with ``to_dense`` (output stride 8), trained for N steps;
- ``c``: ``b`` exported with ``to_original``: ``a``'s architecture and test cost;
- ``b_peak`` / ``c_peak``: the ablation. ``b`` with size and offset regressed only at each
  object's peak cell of the dense map (``reach=None, lattice=1``), so no cell of the original
  lattice is taught what the exported model must predict there; ``c_peak`` is its export.

Every arm is scored by the task's own ``evaluate`` (COCO box mAP by torchmetrics/pycocotools
for detection; COCO keypoint AP by pycocotools and PCK for keypoints), the exports through
the dense task's ``evaluate(network=exported)`` as the export callback does. Paired bootstrap
intervals over test images come from the same pycocotools evaluation: its per-image matches
are kept and re-accumulated (pycocotools' own ``accumulate``) on resampled image sets, the
same sets for every arm of a seed.

    python -m benchmarks.accuracy_centernet [--quick] [--out DIR] [--task detection|keypoints|both]
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import copy
import io
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import numpy as np
import torch
from pycocotools import cocoeval
from torch import Tensor

from benchmarks import _common as C
from benchmarks._accuracy_stats import interval_verdict, paired_intervals, resample_weights
from benchmarks.accuracy import _quiet, fit
from dense_lightning.data import SyntheticDetectionDataModule, SyntheticKeypointsDataModule
from dense_lightning.equivalent import to_original, verify_equivalence
from dense_lightning.equivalent.cells import CellGeometry, eval_mode
from dense_lightning.metrics import keypoint_ap
from dense_lightning.ops import encode_detection_targets
from dense_lightning.tasks import KeypointEstimationTask, ObjectDetectionTask
from dense_lightning.tasks.centernet import CenterNetTask

ARMS = ("a", "a_long", "b", "c", "b_peak", "c_peak")
COMPARISONS = (("c", "a"), ("c", "c_peak"), ("c", "a_long"), ("b", "a"))
EXPORTED_FROM = {"c": "b", "c_peak": "b_peak"}
PROFILES: dict[str, dict[str, Any]] = {
    # 2 CPU cores, about 25 minutes for both tasks: resnet10t at 96 px, 3 seeds per task,
    # two (task, seed) runs at a time; the equal-compute baseline would cost a third more.
    "cpu": dict(backbone="resnet10t", image_size=96, batch_size=8, steps=240, seeds=[0, 1, 2],
                num_test=128, jobs=2, bootstrap=1000, cost_repeats=3, a_long=False),
    # Seconds, for the tests.
    "quick": dict(backbone="test_resnet", image_size=64, batch_size=2, steps=2, seeds=[0, 1],
                  num_test=4, jobs=1, bootstrap=50, cost_repeats=1, a_long=True),
}  # fmt: skip


class _PeakOnly:
    """Mixin: size/offset (and keypoint displacements) regressed at the dense peak cell only."""

    def centre_targets(
        self, outputs: dict[str, Tensor], batch: dict[str, Any]
    ) -> tuple[CellGeometry, dict[str, Tensor]]:
        """:meth:`CenterNetTask.centre_targets` with ``reach=None`` and ``lattice=1``."""
        heat = outputs["heatmap"]
        geometry = self.geometry(batch["image"], heat)  # type: ignore[attr-defined]
        targets = encode_detection_targets(
            batch["boxes"], batch["labels"], heat.shape[1], tuple(heat.shape[-2:]), geometry
        )
        return geometry, targets


class PeakOnlyDetection(_PeakOnly, ObjectDetectionTask):
    """:class:`ObjectDetectionTask` trained with peak-cell regression only (the ablation)."""


class PeakOnlyKeypoints(_PeakOnly, KeypointEstimationTask):
    """:class:`KeypointEstimationTask` trained with peak-cell regression only (the ablation)."""


# Per task: classes (baseline, ablation), data module, the task's own metrics (headline first;
# the second is reported beside it), the task's extra arguments and the output file stem.
TASKS: dict[str, dict[str, Any]] = {
    "detection": dict(task=(ObjectDetectionTask, PeakOnlyDetection),
                      data=SyntheticDetectionDataModule, metrics=("map", "map_50"),
                      kwargs=dict(num_classes=3, max_detections=100),
                      stem="accuracy_detection"),
    "keypoints": dict(task=(KeypointEstimationTask, PeakOnlyKeypoints),
                      data=SyntheticKeypointsDataModule, metrics=("keypoint_ap", "pck"),
                      kwargs=dict(num_keypoints=13, num_classes=1, max_detections=20),
                      stem="accuracy_keypoints"),
}  # fmt: skip


def new_task(
    name: str, args: argparse.Namespace, output_stride: int | None, peak: bool = False
) -> CenterNetTask:
    """A task of ``name`` with the benchmark's settings (random weights)."""
    spec = TASKS[name]
    return spec["task"][peak](
        backbone=args.backbone, pretrained=False, output_stride=output_stride, head_channels=64,
        lr=args.lr, scheduler="cosine", warmup_steps=args.warmup, **spec["kwargs"],
    )  # fmt: skip


def like(task: CenterNetTask, name: str, args: argparse.Namespace, **kw: Any) -> CenterNetTask:
    """A task of the given structure holding ``task``'s tensors (dense or not: same keys)."""
    out = new_task(name, args, **kw)
    out.load_state_dict(task.state_dict(), strict=True)
    return out


def new_data(name: str, args: argparse.Namespace, seed: int) -> Any:
    """The synthetic data; its seed follows the run seed (train and test images change)."""
    return TASKS[name]["data"](
        image_size=args.image_size, num_train=16384, num_val=2, num_test=args.num_test,
        batch_size=args.batch_size, num_workers=0, seed=seed,
    )  # fmt: skip


def time_ratio(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Training time per step, dense / original, on one batch (interleaved rounds)."""
    data = new_data(name, args, 0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    batch["image"] = batch["image"].to(device)
    steps = {}
    for key, os_ in (("original", None), ("dense", args.output_stride)):
        torch.manual_seed(0)
        task = new_task(name, args, os_).to(device).train()
        optimizer = torch.optim.AdamW(task.parameters(), lr=args.lr)

        def step(task: Any = task, optimizer: Any = optimizer) -> None:
            optimizer.zero_grad()
            task.compute_loss(task(batch["image"]), batch).backward()
            optimizer.step()

        steps[key] = step
    times = C.interleaved(steps, device, repeats=args.ratio_repeats, clock=args.clock)
    ratio = times["dense"]["median"] / times["original"]["median"]
    return {"ratio": ratio, "seconds_per_step": {k: v["median"] for k, v in times.items()}}


@contextlib.contextmanager
def recording_cocoeval() -> Iterator[list[cocoeval.COCOeval]]:
    """Record every ``COCOeval`` the metrics create (torchmetrics' mAP and ``KeypointAP``)."""
    made: list[cocoeval.COCOeval] = []

    class Recorder(cocoeval.COCOeval):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    # torchmetrics imports COCOeval from pycocotools at compute time; KeypointAP at import.
    with (
        mock.patch.object(cocoeval, "COCOeval", Recorder),
        mock.patch.object(keypoint_ap, "COCOeval", Recorder),
    ):
        yield made


def resampled_ap(evaluator: cocoeval.COCOeval | None, weights: Tensor) -> np.ndarray:
    """``[replicates, 2]`` AP and AP@0.5 of ``evaluator``'s matches on resampled image sets.

    ``weights[r, i]`` copies of image ``i`` (in ``params.imgIds`` order) form replicate ``r``.
    Per-image matching does not depend on the other images, so pycocotools' ``accumulate``
    over the copied per-image records is the metric of the resampled set. Only the summary
    COCO reports as AP (all areas, the largest detection count) is accumulated.
    """
    if evaluator is None:  # no detections at all: the metric is 0 on every image set
        return np.zeros((len(weights), 2))
    pe = evaluator._paramsEval
    images, areas = len(pe.imgIds), len(pe.areaRng)
    cats = len(pe.catIds) if pe.useCats else 1
    params = copy.copy(pe)
    params.areaRng, params.areaRngLbl, params.maxDets = pe.areaRng[:1], ["all"], pe.maxDets[-1:]
    out = copy.copy(evaluator)
    out.params = out._paramsEval = params
    iou50 = int(np.argmin(np.abs(pe.iouThrs - 0.5)))
    values = np.zeros((len(weights), 2))
    for r, counts in enumerate(weights.long().tolist()):
        picks = [i for i, n in enumerate(counts) for _ in range(n)]
        params.imgIds = list(range(len(picks)))
        # "all" is the first area range; records are laid out [category][area][image].
        out.evalImgs = [
            evaluator.evalImgs[k * areas * images + i] for k in range(cats) for i in picks
        ]
        with contextlib.redirect_stdout(io.StringIO()):
            out.accumulate()
        precision = out.eval["precision"][..., 0, -1]  # [iou, recall, category]
        for j, p in enumerate((precision, precision[iou50])):
            p = p[p > -1]
            values[r, j] = p.mean() if p.size else -1.0
    return values


@torch.no_grad()
def pck_counts(task: CenterNetTask, network: torch.nn.Module, loader: Any) -> dict[int, Tensor]:
    """Per test image: ``(correct, labelled)`` keypoints of the task's own PCK metric."""
    counts = {}
    with eval_mode(task, network):
        for batch in loader:
            batch = task.transfer_batch_to_device(batch, task.device, 0)
            preds = task.decode(task.run(network, batch["image"]), batch["image"])
            for pred, target in zip(preds, task.targets_of(batch), strict=True):
                metric = task.make_metrics(sync_on_compute=False)["pck"]
                metric.update([pred], [target])
                counts[int(target["image_id"])] = torch.stack(
                    [metric.correct.sum(), metric.total.sum()]
                ).double()
    return counts


def score(
    name: str, task: CenterNetTask, network: torch.nn.Module, loader: Any, weights: Tensor
) -> dict[str, Any]:
    """The task's metrics of ``network`` on ``loader`` and their bootstrap replicates."""
    with recording_cocoeval() as made:
        values = task.evaluate(loader, network)
    evaluator = made[-1] if made else None
    replicates = resampled_ap(evaluator, weights)
    identity = resampled_ap(evaluator, torch.ones(1, weights.shape[1]))[0]
    headline, second = TASKS[name]["metrics"]
    reps = {headline: replicates[:, 0]}
    if name == "keypoints":
        counts = pck_counts(task, network, loader)
        per_image = torch.stack([counts[i] for i in sorted(counts)])  # imgIds are sorted ids
        summed = weights @ per_image
        reps[second] = (summed[:, 0] / summed[:, 1].clamp(min=1)).numpy()
    else:
        reps[second] = replicates[:, 1]
    return {
        "metrics": values,
        "replicates": {k: torch.as_tensor(v, dtype=torch.float64) for k, v in reps.items()},
        # The re-accumulation on the whole set reproduces the task's number (a self-check).
        "resample_error": abs(float(identity[0]) - values[headline]),
    }


def test_cost(tasks: dict[str, Any], images: Tensor, args: argparse.Namespace) -> dict:
    """MACs and time per image of each network (raw maps; decoding is the same for all)."""
    calls = {k: (lambda t=t: t(images)) for k, t in tasks.items()}
    with torch.no_grad():
        macs = {k: C.macs(call) / len(images) for k, call in calls.items()}
        times = C.interleaved(calls, images.device, repeats=args.cost_repeats, clock=args.clock)
    return {k: {"macs": macs[k], "seconds": times[k]["median"] / len(images)} for k in calls}


def arms_of(args: argparse.Namespace) -> tuple[str, ...]:
    """The arms this run trains and scores."""
    return tuple(arm for arm in ARMS if args.a_long or arm != "a_long")


def run_seed(name: str, args: argparse.Namespace, seed: int, a_long: int) -> dict[str, Any]:
    """Train a, a_long, b and b_peak for one seed; export c and c_peak; score all arms."""
    _quiet()
    cpu = time.process_time()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(seed)
    init = new_task(name, args, None)
    data = new_data(name, args, seed)
    tasks, training = {}, {}
    for arm, os_, steps, peak in (("a", None, args.steps, False), ("a_long", None, a_long, False),
                                  ("b", args.output_stride, args.steps, False),
                                  ("b_peak", args.output_stride, args.steps, True)):  # fmt: skip
        if arm not in arms_of(args):
            continue
        tasks[arm] = like(init, name, args, output_stride=os_, peak=peak)
        training[arm] = fit(tasks[arm], data, steps, seed, args)
    data.setup("test")
    loader = data.test_dataloader()
    weights = resample_weights(args.num_test, args.bootstrap, torch.Generator().manual_seed(seed))
    scored, exports = {}, {}
    for arm in arms_of(args):
        # An export is scored by its dense task, as the export callback scores it.
        task = tasks[EXPORTED_FROM.get(arm, arm)].to(device)
        network = task.model
        if arm in EXPORTED_FROM:
            network = exports[arm] = to_original(task.model).to(device)
        scored[arm] = score(name, task, network, loader, weights)
    images = next(iter(loader))["image"][: args.cost_batch].to(device)
    for task in tasks.values():
        task.eval()
    with torch.no_grad():
        check = verify_equivalence(exports["c"], tasks["b"].model, images, check_phases=False)
        cells = {k: list(tasks[k](images[:1])["heatmap"].shape[-2:]) for k in ("a", "b")}
    return {
        "task": name,
        "seed": seed,
        "training": training,
        "metrics": {arm: s["metrics"] for arm, s in scored.items()},
        "replicates": {arm: s["replicates"] for arm, s in scored.items()},
        "resample_max_error": max(s["resample_error"] for s in scored.values()),
        "cost": test_cost({"a": tasks["a"], "b": tasks["b"]}, images, args),
        "cells": cells,
        "export_max_rel_error": check.max_rel_error,
        "cpu_s": time.process_time() - cpu,
    }


def summarise(name: str, runs: list[dict]) -> dict[str, Any]:
    """Per arm: metrics per seed and mean; per comparison: bootstrap intervals and verdict."""
    runs = sorted(runs, key=lambda r: r["seed"])
    headline, second = TASKS[name]["metrics"]
    present = [arm for arm in ARMS if arm in runs[0]["metrics"]]
    arms = {
        arm: {
            m: {"per_seed": (v := [r["metrics"][arm][m] for r in runs]), "mean": statistics.mean(v)}
            for m in runs[0]["metrics"][arm]
        }
        for arm in present
    }
    comparisons = {}
    for first, other in COMPARISONS:
        if first not in arms or other not in arms:
            continue
        result: dict[str, Any] = {}
        for m in (headline, second):
            result[m] = paired_intervals(
                [r["replicates"][first][m] for r in runs],
                [r["replicates"][other][m] for r in runs],
                arms[first][m]["per_seed"],
                arms[other][m]["per_seed"],
            )
        result["verdict"] = interval_verdict(result[headline]["ci_images"])
        result["seeds_won"] = sum(d > 0 for d in result[headline]["per_seed"])
        comparisons[f"{first}-{other}"] = result
    return {"seeds": [r["seed"] for r in runs], "metric": headline, "arms": arms,
            "comparisons": comparisons}  # fmt: skip


LABELS = {
    "a": "(a) baseline, original stride",
    "a_long": "(a') baseline, equal compute",
    "b": "(b) dense",
    "c": "(c) (b) exported to the original stride",
    "b_peak": "(b-peak) dense, peak-cell regression only",
    "c_peak": "(c-peak) (b-peak) exported",
}
CLAIMS = {
    "c-a": "(c) beats (a) at (a)'s test cost",
    "c-c_peak": "(c) beats (c-peak): training the original lattice's cells matters",
    "c-a_long": "(c) beats (a') (equal training compute)",
    "b-a": "(b) beats (a)",
}
VERDICTS = {"holds": "**holds**", "reversed": "**reversed**",
            "inconclusive": "inconclusive (interval includes 0)"}  # fmt: skip
NAMES = {"map": "box mAP", "map_50": "box AP@0.5", "keypoint_ap": "keypoint AP", "pck": "PCK@0.2"}


def _ci(values: list[float]) -> str:
    return f"[{values[0]:+.4f}, {values[1]:+.4f}]"


def _arm_row(payload: dict[str, Any], arm: str) -> list[str]:
    headline, second = TASKS[payload["task"]]["metrics"]
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
    headline, second = TASKS[payload["task"]]["metrics"]
    c = payload["summary"]["comparisons"][key]
    m, s = c[headline], c[second]
    return [CLAIMS[key], f"{m['diff']:+.4f}", _ci(m["ci_images"]), _ci(m["ci_hierarchical"]),
            f"{s['diff']:+.4f}", _ci(s["ci_images"]), f"{c['seeds_won']}/{len(m['per_seed'])}",
            VERDICTS[c["verdict"]]]  # fmt: skip


def markdown(payload: dict[str, Any]) -> str:
    """The report of one task."""
    s, m, name = payload["settings"], payload["machine"], payload["task"]
    headline, second = (NAMES[k] for k in TASKS[name]["metrics"])
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
        f"`{s['backbone']}` from random weights + CenterNet head, dense output stride "
        f"{s['output_stride']}, batch {s['batch_size']}, AdamW lr {s['lr']}, cosine schedule "
        f"with {s['warmup']} warm-up steps, seeds {s['seeds']} (the seed sets the "
        f"initialisation, the batch order and the data: train and {s['num_test']} test images).",
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
        f"(c) is (b)'s network at the original stride: its raw maps equal (b)'s on the lattice "
        f"(largest relative error {max(r['export_max_rel_error'] for r in runs):.1e}); the "
        f"original heatmap has {runs[0]['cells']['a']} cells, the dense one "
        f"{runs[0]['cells']['b']}. (b) and (c) regress size and offset at every cell within "
        "half an original stride of a centre and at the original lattice's nearest cell; "
        "(b-peak) and (c-peak) only at the dense peak cell, so (c-peak) decodes sizes and "
        "offsets at cells that were never taught them.",
    ]
    return "\n".join(lines)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--task", choices=("detection", "keypoints", "both"), default="both")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="training steps of a, b and b_peak")
    p.add_argument("--backbone", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-test", type=int, default=None)
    p.add_argument("--jobs", type=int, default=None, help="runs in parallel processes")
    p.add_argument("--output-stride", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap replicates")
    p.add_argument("--cost-batch", type=int, default=8)
    p.add_argument(
        "--a-long",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the equal-compute baseline too (default: quick yes, cpu no)",
    )
    args = p.parse_args(argv)
    args.profile = "quick" if args.quick else "cpu"
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.warmup = min(20, args.steps // 10)
    args.ratio_repeats = args.repeats or (1 if args.quick else 6)
    args.tasks = list(TASKS) if args.task == "both" else [args.task]
    return args


def _payload(name: str, args: argparse.Namespace, record: dict, extra: dict,
             runs: list[dict]) -> dict[str, Any]:  # fmt: skip
    settings = {key: getattr(args, key) for key in (
        "profile", "backbone", "image_size", "batch_size", "steps", "seeds", "num_test",
        "output_stride", "lr", "warmup", "bootstrap", "jobs", "threads", "a_long")}  # fmt: skip
    record = {**record, "load_average_now": list(os.getloadavg())}
    kept = [{k: v for k, v in r.items() if k != "replicates"} for r in runs]
    payload = {"benchmark": "accuracy_centernet", "task": name, "machine": record,
               "settings": settings, **extra, "complete": len(runs) == len(args.seeds),
               "runs": sorted(kept, key=lambda r: r["seed"])}  # fmt: skip
    if runs:
        payload["summary"] = summarise(name, runs)
    return payload


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the benchmark; return each task's payload (also written as JSON and Markdown)."""
    args = _arguments(argv)
    _quiet()
    device = C.prepare(args)
    record = C.machine(device, args)
    wall, cpu = time.perf_counter(), time.process_time()
    extra, runs = {}, {name: [] for name in args.tasks}
    for name in args.tasks:
        ratio = time_ratio(name, args, device)
        a_long = max(args.steps, round(args.steps * ratio["ratio"]))
        extra[name] = {"time_ratio": ratio, "a_long_steps": a_long}
    payloads: dict[str, dict[str, Any]] = {}

    def save(name: str) -> None:
        worker_cpu = sum(r["cpu_s"] for rs in runs.values() for r in rs)
        record.update(wall_seconds=time.perf_counter() - wall,
                      cpu_seconds=time.process_time() - cpu + worker_cpu)  # fmt: skip
        payloads[name] = _payload(name, args, record, extra[name], runs[name])
        C.write(args.out, TASKS[name]["stem"], payloads[name], markdown(payloads[name]))

    jobs = [(name, seed) for seed in args.seeds for name in args.tasks]
    if args.jobs > 1:
        context = multiprocessing.get_context("spawn")
        with futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            pending = [pool.submit(run_seed, n, args, s, extra[n]["a_long_steps"]) for n, s in jobs]
            for done in futures.as_completed(pending):
                result = done.result()
                runs[result["task"]].append(result)
                save(result["task"])
    else:
        for name, seed in jobs:
            runs[name].append(run_seed(name, args, seed, extra[name]["a_long_steps"]))
            save(name)
    for name in args.tasks:  # the final record: every task's file carries the whole run's time
        save(name)
    return payloads


if __name__ == "__main__":
    main()
