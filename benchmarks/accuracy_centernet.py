"""Accuracy of CenterNet detection and keypoints: dense training exported, against the baseline.

Per task and seed, every arm starts from the same weights (a backbone pretrained at its own
stride on other shapes, as the segmentation benchmark's synthetic start, or random weights
with ``--pretrain-steps 0``; the seed sets the head, the synthetic data and the batch order)
and trains with the same schedule on the same batches:

- ``a``: the baseline, trained at the backbone's own stride (32) for N steps;
- ``a_long`` (optional, ``--a-long``): the same for N times the measured dense / original
  training time per step (equal training compute);
- ``b``: the same start converted with ``to_dense`` (output stride 8), trained for N steps
  without the lattice term (``lattice_loss_weight=0``);
- ``c``: ``b`` exported with ``to_original``: ``a``'s architecture and test cost;
- ``b_lattice`` / ``c_lattice``: ``b`` with the exported network's own loss added
  (``lattice_loss_weight``, default 1), and its export;
- ``b_peak`` / ``c_peak`` (optional, ``--peak``): the ablation. ``b`` with size and offset
  regressed only at each object's peak cell of the dense map (``reach=None, lattice=1``), so
  no cell of the original lattice is taught what the exported model must predict there;
  ``c_peak`` is its export.

Every arm is scored by the task's own ``evaluate`` (COCO box mAP by torchmetrics/pycocotools
for detection; COCO keypoint AP by pycocotools and PCK for keypoints), the exports through
the dense task's ``evaluate(network=exported)`` as the export callback does. Paired bootstrap
intervals over test images come from the same pycocotools evaluation: its per-image matches
are kept and re-accumulated (pycocotools' own ``accumulate``) on resampled image sets, the
same sets for every arm of a seed.

    python -m benchmarks.accuracy_centernet [--quick] [--out DIR] [--task detection|keypoints|both]
        [--device cuda]
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
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from pycocotools import cocoeval
from torch import Tensor

from benchmarks import _common as C
from benchmarks._accuracy_starts import synthetic as synthetic_start
from benchmarks._accuracy_stats import interval_verdict, paired_intervals, resample_weights
from benchmarks._centernet_report import ARMS, EXPORTED_FROM, METRICS, markdown
from benchmarks.accuracy import _quiet, fit
from benchmarks.accuracy import new_task as segmentation_task
from dense_lightning.data import SyntheticDetectionDataModule, SyntheticKeypointsDataModule
from dense_lightning.equivalent import to_original, verify_equivalence
from dense_lightning.equivalent.cells import CellGeometry, eval_mode
from dense_lightning.metrics import keypoint_ap
from dense_lightning.ops import encode_detection_targets
from dense_lightning.tasks import KeypointEstimationTask, ObjectDetectionTask
from dense_lightning.tasks.centernet import CenterNetTask

COMPARISONS = (("c_lattice", "a_long"), ("c_lattice", "a"), ("c_lattice", "c"),
               ("b_lattice", "b"), ("c", "a"), ("c", "a_long"), ("b", "a"),
               ("c", "c_peak"))  # fmt: skip
PROFILES: dict[str, dict[str, Any]] = {
    # 2 CPU cores: resnet10t at 128 px (a 4 x 4 heatmap at stride 32, objects 26-56 px
    # across) from the synthetic pretraining, 4 seeds, two runs at a time (about 35 CPU
    # minutes a core for both tasks).
    "cpu": dict(backbone="resnet10t", image_size=128, batch_size=8, steps=120,
                seeds=[0, 1, 2, 3], num_test=64, jobs=2, bootstrap=500, cost_repeats=3,
                a_long=True, peak=False, pretrain_steps=200, num_workers=0),
    # One GPU (not run here): resnet18 at 256 px (8 x 8 heatmap), 4 seeds, the ablation.
    "cuda": dict(backbone="resnet18", image_size=256, batch_size=16, steps=500,
                 seeds=[0, 1, 2, 3], num_test=256, jobs=1, bootstrap=1000, cost_repeats=10,
                 a_long=True, peak=True, pretrain_steps=1500, num_workers=6),
    # Seconds, for the tests.
    "quick": dict(backbone="test_resnet", image_size=64, batch_size=2, steps=2, seeds=[0, 1],
                  num_test=4, jobs=1, bootstrap=50, cost_repeats=1, a_long=True, peak=True,
                  pretrain_steps=2, num_workers=0),
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
                      data=SyntheticDetectionDataModule, metrics=METRICS["detection"],
                      kwargs=dict(num_classes=3, max_detections=100),
                      stem="accuracy_detection"),
    "keypoints": dict(task=(KeypointEstimationTask, PeakOnlyKeypoints),
                      data=SyntheticKeypointsDataModule, metrics=METRICS["keypoints"],
                      kwargs=dict(num_keypoints=13, num_classes=1, max_detections=20),
                      stem="accuracy_keypoints"),
}  # fmt: skip


def new_task(
    name: str,
    args: argparse.Namespace,
    output_stride: int | None,
    peak: bool = False,
    lattice: float = 0.0,
) -> CenterNetTask:
    """A task of ``name`` with the benchmark's settings (random weights)."""
    spec = TASKS[name]
    return spec["task"][peak](
        backbone=args.backbone, pretrained=False, output_stride=output_stride, head_channels=64,
        lr=args.lr, scheduler="cosine", warmup_steps=args.warmup,
        lattice_loss_weight=lattice, **spec["kwargs"],
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
        batch_size=args.batch_size, num_workers=args.num_workers, seed=seed,
    )  # fmt: skip


def time_ratio(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Training time per step, dense with the lattice term / original, on one batch."""
    data = new_data(name, args, 0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    batch["image"] = batch["image"].to(device)
    steps = {}
    for key, os_ in (("original", None), ("dense", args.output_stride)):
        torch.manual_seed(0)
        task = new_task(name, args, os_, lattice=args.lattice_weight).to(device).train()
        optimizer = torch.optim.AdamW(task.parameters(), lr=args.lr)

        def step(task: Any = task, optimizer: Any = optimizer) -> None:
            optimizer.zero_grad()
            task.step_loss(batch).total.backward()
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
    skip = set() if args.a_long else {"a_long"}
    skip |= set() if args.peak else {"b_peak", "c_peak"}
    return tuple(arm for arm in ARMS if arm not in skip)


def run_seed(
    name: str, args: argparse.Namespace, seed: int, a_long: int, backbone_path: str | None
) -> dict[str, Any]:
    """Train the arms of one task and seed, export the dense ones, score every arm."""
    _quiet()
    cpu = time.process_time()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(seed)
    init = new_task(name, args, None)
    if backbone_path is not None:
        init.model.backbone.load_state_dict(torch.load(backbone_path), strict=True)
    data = new_data(name, args, seed)
    tasks, training = {}, {}
    dense = args.output_stride
    for arm, os_, steps, peak, lattice in (
        ("a", None, args.steps, False, 0.0), ("a_long", None, a_long, False, 0.0),
        ("b", dense, args.steps, False, 0.0),
        ("b_lattice", dense, args.steps, False, args.lattice_weight),
        ("b_peak", dense, args.steps, True, 0.0),
    ):  # fmt: skip
        if arm not in arms_of(args):
            continue
        tasks[arm] = like(init, name, args, output_stride=os_, peak=peak, lattice=lattice)
        training[arm] = fit(tasks[arm], data, steps, seed, args)
        training[arm]["lattice_loss_weight"] = lattice
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
        errors = [
            verify_equivalence(
                exports[arm], tasks[EXPORTED_FROM[arm]].model, images, check_phases=False
            ).max_rel_error
            for arm in exports
        ]
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
        "export_max_rel_error": max(errors),
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
    p.add_argument("--lattice-weight", type=float, default=1.0, help="b_lattice's weight")
    p.add_argument(
        "--pretrain-steps",
        type=int,
        default=None,
        help="synthetic pretraining steps of the backbone; 0: random weights",
    )
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers")
    p.add_argument(
        "--peak",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the peak-cell ablation too (default: quick and cuda yes)",
    )
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap replicates")
    p.add_argument("--cost-batch", type=int, default=8)
    p.add_argument(
        "--a-long",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the equal-compute baseline too (default yes)",
    )
    args = p.parse_args(argv)
    args.profile = "quick" if args.quick else ("cuda" if args.device.startswith("cuda") else "cpu")
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
        "output_stride", "lr", "warmup", "bootstrap", "jobs", "threads", "a_long", "peak",
        "lattice_weight", "pretrain_steps")}  # fmt: skip
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
    # The backbone start every task shares: the segmentation benchmark's synthetic pretraining
    # (the same backbone, size and steps give the same weights).
    backbone, pretraining = synthetic_start(args, segmentation_task, fit)
    for name in args.tasks:
        ratio = time_ratio(name, args, device)
        a_long = max(args.steps, round(args.steps * ratio["ratio"]))
        extra[name] = {"time_ratio": ratio, "a_long_steps": a_long, "pretraining": pretraining}
    payloads: dict[str, dict[str, Any]] = {}

    def save(name: str) -> None:
        worker_cpu = sum(r["cpu_s"] for rs in runs.values() for r in rs)
        record.update(wall_seconds=time.perf_counter() - wall,
                      cpu_seconds=time.process_time() - cpu + worker_cpu)  # fmt: skip
        payloads[name] = _payload(name, args, record, extra[name], runs[name])
        C.write(args.out, TASKS[name]["stem"], payloads[name], markdown(payloads[name]))

    jobs = [(name, seed) for seed in args.seeds for name in args.tasks]
    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if backbone is not None:
            path = str(Path(tmp) / "backbone.pt")
            torch.save(backbone, path)
        calls = [(n, args, s, extra[n]["a_long_steps"], path) for n, s in jobs]
        if args.jobs > 1:
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
                pending = [pool.submit(run_seed, *call) for call in calls]
                for done in futures.as_completed(pending):
                    result = done.result()
                    runs[result["task"]].append(result)
                    save(result["task"])
        else:
            for call in calls:
                runs[call[0]].append(run_seed(*call))
                save(call[0])
    for name in args.tasks:  # the final record: every task's file carries the whole run's time
        save(name)
    return payloads


if __name__ == "__main__":
    main()
