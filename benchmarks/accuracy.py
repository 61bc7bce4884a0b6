"""Accuracy: does a densely trained model, exported to the original stride, beat the baseline?

From one pretrained start (a backbone trained at its own stride on a disjoint synthetic task:
other shapes, other seed) and, per seed, one head initialisation, one data seed, one batch
order, one schedule and one evaluation, five arms are scored on the same test images:

- ``a``: the baseline, fine-tuned at the backbone's own stride (32) for N steps;
- ``a_long``: the same with N times the measured dense / original training time ratio
  (equal compute);
- ``a_dense``: ``a``'s weights run densely (dense inference without dense training);
- ``b``: the same start converted with ``to_dense`` and fine-tuned for N steps;
- ``c``: ``b`` exported with ``to_original`` (``a``'s architecture and cost, ``b``'s weights).

Every arm predicts through the task's own prediction path (``predict_step``: logits placed
on the image by the task). Beside them: the background-only floor and an oracle map at the
original stride (the best a stride-32 output reaches when each cell only has to say what
surrounds it). Paired bootstrap intervals over test images decide ``c - a``, ``c - a_long``
and ``b - a``.

    python -m benchmarks.accuracy [--quick] [--out DIR] [--device cuda] [--jobs N]
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import logging
import multiprocessing
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from benchmarks import _common as C
from benchmarks._accuracy_data import DisjointShapesDataModule
from benchmarks._accuracy_report import markdown, plot
from benchmarks._accuracy_stats import confusions, oracle_confusions, paired_bootstrap, scores
from benchmarks._accuracy_stats import verdict as decide
from dense_lightning.data import SyntheticSegmentationDataModule
from dense_lightning.equivalent import to_original, verify_equivalence
from dense_lightning.equivalent.cells import CellGeometry
from dense_lightning.tasks import SemanticSegmentationTask

ARMS = ("a", "a_long", "a_dense", "b", "c")
COMPARISONS = (("c", "a"), ("c", "a_long"), ("b", "a"), ("a_dense", "a"))
PROFILES: dict[str, dict[str, Any]] = {
    # 2 CPU cores, about 30 minutes: resnet10t, 128 px, 4 seeds, two seeds at a time.
    "cpu": dict(backbone="resnet10t", image_size=128, batch_size=8, steps=120,
                pretrain_steps=300, seeds=[0, 1, 2, 3], num_test=128, jobs=2, cost_repeats=3,
                num_workers=0),
    # One GPU, about 10 minutes: resnet18, 256 px.
    "cuda": dict(backbone="resnet18", image_size=256, batch_size=16, steps=600,
                 pretrain_steps=1500, seeds=[0, 1, 2, 3], num_test=256, jobs=1, cost_repeats=10,
                 num_workers=6),
    # Seconds, for the tests.
    "quick": dict(backbone="test_resnet", image_size=64, batch_size=4, steps=2,
                  pretrain_steps=2, seeds=[0, 1], num_test=4, jobs=1, cost_repeats=1,
                  num_workers=0),
}  # fmt: skip
STEMS = {"cpu": "accuracy_segmentation", "cuda": "accuracy_segmentation_gpu",
         "quick": "accuracy_segmentation"}  # fmt: skip
NUM_CLASSES = 4  # background + 3 shapes; the pretraining task uses 3 other shapes
PRETRAIN_SEED = 1000


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def new_task(args: argparse.Namespace, output_stride: int | None) -> SemanticSegmentationTask:
    """A segmentation task with the benchmark's settings (random weights)."""
    return SemanticSegmentationTask(
        backbone=args.backbone, num_classes=NUM_CLASSES, head="fcn", head_channels=64,
        lr=args.lr, scheduler="cosine", warmup_steps=args.warmup, output_stride=output_stride,
    )  # fmt: skip


def like(
    task: SemanticSegmentationTask, args: argparse.Namespace, output_stride: int | None
) -> SemanticSegmentationTask:
    """A task of the given structure holding ``task``'s tensors (dense or not: same keys)."""
    out = new_task(args, output_stride)
    out.load_state_dict(task.state_dict(), strict=True)
    return out


def fine_tune_data(args: argparse.Namespace, seed: int) -> SyntheticSegmentationDataModule:
    """The target task; the data seed follows the run seed (train and test images change)."""
    return SyntheticSegmentationDataModule(
        num_classes=NUM_CLASSES, image_size=args.image_size, num_train=4096, num_val=4,
        num_test=args.num_test, batch_size=args.batch_size, seed=seed,
        num_workers=args.num_workers,
    )  # fmt: skip


def fit(task: Any, data: Any, steps: int, seed: int, args: argparse.Namespace) -> dict:
    """Train ``task`` for ``steps``; the batch order depends on ``seed`` only."""
    L.seed_everything(seed, verbose=False)
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        accelerator="gpu" if args.device.startswith("cuda") else "cpu", devices=1,
    )  # fmt: skip
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit(task, datamodule=data)
    return {
        "steps": steps,
        "cpu_s": time.process_time() - cpu,
        "wall_s": time.perf_counter() - wall,
    }


def pretrain(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], dict]:
    """Backbone weights trained at the original stride on the disjoint shapes."""
    torch.manual_seed(PRETRAIN_SEED)
    task = new_task(args, None)
    data = DisjointShapesDataModule(
        num_classes=NUM_CLASSES, image_size=args.image_size, num_train=4096, num_val=4,
        num_test=4, batch_size=args.batch_size, seed=PRETRAIN_SEED,
        num_workers=args.num_workers,
    )  # fmt: skip
    record = (
        fit(task, data, args.pretrain_steps, PRETRAIN_SEED, args) if args.pretrain_steps else {}
    )
    return {k: v.cpu() for k, v in task.model.backbone.state_dict().items()}, record


def start(args: argparse.Namespace, seed: int, backbone: dict | None) -> SemanticSegmentationTask:
    """The seed's starting point: pretrained backbone, head initialised from ``seed``."""
    torch.manual_seed(seed)
    task = new_task(args, None)
    if backbone is not None:
        task.model.backbone.load_state_dict(backbone, strict=True)
    return task


def time_ratio(args: argparse.Namespace, backbone: dict | None, device: torch.device) -> dict:
    """Training time per step, dense / original, on one batch (interleaved rounds)."""
    data = fine_tune_data(args, 0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    images, masks = batch["image"].to(device), batch["mask"].to(device)
    steps = {}
    for name, os_ in (("original", None), ("dense", args.output_stride)):
        task = like(start(args, 0, backbone), args, os_).to(device).train()
        optimizer = torch.optim.AdamW(task.parameters(), lr=args.lr)

        def step(task: Any = task, optimizer: Any = optimizer) -> None:
            optimizer.zero_grad()
            task.compute_loss(task(images), {"mask": masks}).backward()
            optimizer.step()

        steps[name] = step
    times = C.interleaved(steps, device, repeats=args.ratio_repeats, clock=args.clock)
    ratio = times["dense"]["median"] / times["original"]["median"]
    return {"ratio": ratio, "seconds_per_step": {k: v["median"] for k, v in times.items()}}


@torch.no_grad()
def score(task: Any, loader: Any, device: torch.device) -> torch.Tensor:
    """Per-image confusions of the task's own predictions (``predict_step``) on ``loader``."""
    task.to(device).eval()
    out = []
    for i, batch in enumerate(loader):
        pred = task.predict_step({**batch, "image": batch["image"].to(device)}, i)
        out.append(confusions(pred.cpu(), batch["mask"], NUM_CLASSES, task.hparams.ignore_index))
    return torch.cat(out)


def test_cost(tasks: dict[str, Any], images: torch.Tensor, args: argparse.Namespace) -> dict:
    """MACs and time per image of each task's prediction."""
    calls = {k: (lambda t=t: t(images)) for k, t in tasks.items()}
    with torch.no_grad():
        macs = {k: C.macs(call) / len(images) for k, call in calls.items()}
        times = C.interleaved(calls, images.device, repeats=args.cost_repeats, clock=args.clock)
    return {k: {"macs": macs[k], "seconds": times[k]["median"] / len(images)} for k in calls}


def run_seed(
    args: argparse.Namespace,
    seed: int,
    backbone_path: str | None,
    a_long: int,
    geometry: CellGeometry,
) -> dict:
    """Train a, a_long and b for one seed; derive a_dense and c; score all on the test set."""
    _quiet()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backbone = torch.load(backbone_path) if backbone_path else None
    init = start(args, seed, backbone)
    data = fine_tune_data(args, seed)
    tasks, training = {}, {}
    for arm, os_, steps in (("a", None, args.steps), ("a_long", None, a_long),
                            ("b", args.output_stride, args.steps)):  # fmt: skip
        tasks[arm] = like(init, args, os_)
        training[arm] = fit(tasks[arm], data, steps, seed, args)
    tasks["a_dense"] = like(tasks["a"], args, args.output_stride)
    tasks["c"] = new_task(args, None)
    tasks["c"].model.load_state_dict(to_original(tasks["b"].model).state_dict(), strict=True)
    data.setup("test")
    loader = data.test_dataloader()
    conf = {arm: score(tasks[arm], loader, device) for arm in ARMS}
    masks = torch.cat([batch["mask"] for batch in loader])
    images = next(iter(loader))["image"][: args.cost_batch].to(device)
    with torch.no_grad():
        cells = tuple(tasks["a"].model(images[:1]).shape[-2:])
        check = verify_equivalence(tasks["c"].model, tasks["b"].model, images, check_phases=False)
    oracles, rule = oracle_confusions(masks, NUM_CLASSES, 255, geometry, cells)
    conf.update(oracles)
    return {
        "seed": seed,
        "training": training,
        "scores": {arm: scores(c) for arm, c in conf.items()},
        "confusions": {arm: c.round().long().tolist() for arm, c in conf.items()},
        "cost": test_cost({"a": tasks["a"], "b": tasks["b"]}, images, args),
        "geometry": {"stride": list(geometry.stride), "offset": list(geometry.offset)},
        "cells": list(cells),
        "ceiling_rule": rule,
        "export_max_rel_error": check.max_rel_error,
    }


def summarise(runs: list[dict], replicates: int) -> dict[str, Any]:
    """Per arm: metric per seed and mean; per comparison: bootstrap intervals and verdict."""
    runs = sorted(runs, key=lambda r: r["seed"])
    conf = {
        arm: [torch.tensor(r["confusions"][arm], dtype=torch.float64) for r in runs]
        for arm in runs[0]["confusions"]
    }
    arms = {
        arm: {
            metric: {
                "per_seed": [r["scores"][arm][metric] for r in runs],
                "mean": statistics.mean(r["scores"][arm][metric] for r in runs),
            }
            for metric in ("miou", "pixel_acc")
        }
        for arm in conf
    }
    comparisons = {}
    for first, second in COMPARISONS:
        result = paired_bootstrap(conf[first], conf[second], replicates)
        result["verdict"] = decide(result)
        result["seeds_won"] = sum(d > 0 for d in result["miou"]["per_seed"])
        comparisons[f"{first}-{second}"] = result
    return {"seeds": [r["seed"] for r in runs], "arms": arms, "comparisons": comparisons}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps of a and b")
    p.add_argument("--pretrain-steps", type=int, default=None, help="0: start from scratch")
    p.add_argument("--backbone", default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-test", type=int, default=None)
    p.add_argument("--jobs", type=int, default=None, help="seeds run in parallel processes")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers")
    p.add_argument("--output-stride", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates")
    p.add_argument("--cost-batch", type=int, default=8)
    args = p.parse_args(argv)
    profile = "quick" if args.quick else ("cuda" if args.device.startswith("cuda") else "cpu")
    for key, value in PROFILES[profile].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.profile = profile
    args.warmup = min(20, args.steps // 10)
    args.ratio_repeats = args.repeats or (1 if args.quick else 6)
    if args.quick:
        args.bootstrap = min(args.bootstrap, 200)
    return args


def _payload(args: argparse.Namespace, record: dict, extra: dict, runs: list[dict]) -> dict:
    settings = {key: getattr(args, key) for key in (
        "profile", "backbone", "image_size", "batch_size", "steps", "pretrain_steps", "seeds",
        "num_test", "output_stride", "lr", "warmup", "bootstrap", "jobs", "threads",
        "num_workers")}  # fmt: skip
    record = {**record, "load_average_now": list(os.getloadavg())}
    payload = {"benchmark": "accuracy", "machine": record, "settings": settings, **extra,
               "complete": len(runs) == len(args.seeds), "runs": runs}  # fmt: skip
    if runs:
        payload["summary"] = summarise(runs, args.bootstrap)
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _arguments(argv)
    _quiet()
    device = C.prepare(args)
    record = C.machine(device, args)
    wall, cpu = time.perf_counter(), time.process_time()
    backbone, pretraining = pretrain(args) if args.pretrain_steps else (None, {})
    ratio = time_ratio(args, backbone, device)
    a_long = max(args.steps, round(args.steps * ratio["ratio"]))
    # Where the original network's cells sit (the task's own geometry, which its prediction
    # path uses): a property of the architecture, traced once.
    geometry = new_task(args, None).cells
    extra = {"pretraining": pretraining, "time_ratio": ratio, "a_long_steps": a_long}
    runs: list[dict] = []

    def save() -> dict:
        record.update(wall_seconds=time.perf_counter() - wall,
                      main_cpu_seconds=time.process_time() - cpu)  # fmt: skip
        payload = _payload(args, record, extra, runs)
        C.write(args.out, STEMS[args.profile], payload, markdown(payload))
        return payload

    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if backbone is not None:
            path = str(Path(tmp) / "backbone.pt")
            torch.save(backbone, path)
        if args.jobs > 1:
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
                pending = [
                    pool.submit(run_seed, args, s, path, a_long, geometry) for s in args.seeds
                ]
                for done in futures.as_completed(pending):
                    runs.append(done.result())
                    save()
        else:
            for seed in args.seeds:
                runs.append(run_seed(args, seed, path, a_long, geometry))
                save()
    payload = save()
    plot(payload, args.out / f"{STEMS[args.profile]}.png")
    return payload


if __name__ == "__main__":
    main()
