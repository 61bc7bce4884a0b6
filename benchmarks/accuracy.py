"""Accuracy: does a densely trained model, exported to the original stride, beat the baseline?

From a pretrained start and, per seed, one head initialisation, one data seed, one batch
order, one schedule and one evaluation, these arms are scored on the same test images:

- ``a``: the baseline, fine-tuned at the backbone's own stride (32) for N steps;
- ``a_long``: the same with N times the measured dense / original training time ratio
  (equal compute);
- ``a_dense``: ``a``'s weights run densely (dense inference without dense training);
- ``b``: the same start converted with ``to_dense`` and fine-tuned for N steps, every phase
  alike (``lattice_loss_weight=0``);
- ``c``: ``b`` exported with ``to_original`` (``a``'s architecture and cost, ``b``'s weights);
- ``b_lattice``: ``b`` trained with the exported network's own loss added
  (``lattice_loss_weight``, default 1), and ``c_lattice`` its export;
- ``b_lattice_alt`` / ``c_lattice_alt`` (``--alt-lattice-weight``): the same with another
  weight, on the starts named by ``--alt-starts``.

Two starts (``--starts``): ``synthetic``, the profile's backbone pretrained at its own stride
on other shapes, and ``imagenet``, ``tf_efficientnet_lite0`` with the packaged ImageNet
weights (:mod:`benchmarks._accuracy_starts`). Each start writes its own report.

Every arm predicts through the task's own prediction path (``predict_step``: logits placed
on the image by the task). Beside them: the background-only floor and an oracle map at the
original stride (the best a stride-32 output reaches when each cell only has to say what
surrounds it). Paired bootstrap intervals over test images decide every comparison of
:data:`COMPARISONS`.

    python -m benchmarks.accuracy [--quick] [--out DIR] [--device cuda] [--starts ...]
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
from benchmarks._accuracy_report import markdown, plot
from benchmarks._accuracy_starts import STARTS, prepare_start, start_arguments
from benchmarks._accuracy_stats import confusions, oracle_confusions, paired_bootstrap, scores
from benchmarks._accuracy_stats import verdict as decide
from dense_lightning.data import SyntheticSegmentationDataModule
from dense_lightning.equivalent import to_original, verify_equivalence
from dense_lightning.equivalent.cells import CellGeometry
from dense_lightning.tasks import SemanticSegmentationTask

ARMS = ("a", "a_long", "a_dense", "b", "c", "b_lattice", "c_lattice")
ALT_ARMS = ("b_lattice_alt", "c_lattice_alt")
#: Exported arm -> the dense arm whose network it is.
EXPORTED_FROM = {"c": "b", "c_lattice": "b_lattice", "c_lattice_alt": "b_lattice_alt"}
COMPARISONS = (("c_lattice", "a_long"), ("c_lattice", "a"), ("c_lattice", "c"),
               ("b_lattice", "b"), ("c", "a"), ("c", "a_long"), ("b", "a"),
               ("a_dense", "a"))  # fmt: skip
ALT_COMPARISONS = (("c_lattice_alt", "c_lattice"), ("b_lattice_alt", "b_lattice"))
PROFILES: dict[str, dict[str, Any]] = {
    # 2 CPU cores shared with other work, about 50 minutes for both starts: 256 px (an 8 x 8
    # map at stride 32), batch 4, 4 seeds, two (start, seed) runs at a time. A seed costs
    # about 6 min of CPU time with resnet10t (5 trainings) and 8 with lite0 (4 trainings, a
    # dense step 5x an original one).
    "cpu": dict(backbone="resnet10t", image_size=256, batch_size=4, steps=48,
                pretrain_steps=200, seeds=[0, 1, 2, 3], num_test=64, jobs=2, cost_repeats=3,
                num_workers=0, starts=["synthetic", "imagenet"], alt_lattice_weight=0.25,
                alt_starts=["synthetic"]),
    # One GPU (not run here), sized for about 15 minutes: resnet18 and lite0, 256 px.
    "cuda": dict(backbone="resnet18", image_size=256, batch_size=16, steps=600,
                 pretrain_steps=1500, seeds=[0, 1, 2, 3], num_test=256, jobs=1, cost_repeats=10,
                 num_workers=6, starts=["synthetic", "imagenet"], alt_lattice_weight=0.25,
                 alt_starts=["synthetic", "imagenet"]),
    # Seconds, for the tests.
    "quick": dict(backbone="test_resnet", image_size=64, batch_size=4, steps=2,
                  pretrain_steps=2, seeds=[0, 1], num_test=4, jobs=1, cost_repeats=1,
                  num_workers=0, starts=["synthetic"], alt_lattice_weight=0.25,
                  alt_starts=["synthetic"]),
}  # fmt: skip
NUM_CLASSES = 4  # background + 3 shapes; the synthetic pretraining uses 3 other shapes


def stem(profile: str, start: str) -> str:
    """The results file name of one profile and start (the tests' quick runs: the CPU one)."""
    name = "accuracy_segmentation" + ("" if start == "synthetic" else f"_{start}")
    return name + ("_gpu" if profile == "cuda" else "")


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def new_task(
    args: argparse.Namespace, output_stride: int | None, lattice: float = 0.0, **kwargs: Any
) -> SemanticSegmentationTask:
    """A segmentation task with the benchmark's settings (random weights unless ``kwargs``)."""
    return SemanticSegmentationTask(
        backbone=args.backbone, num_classes=NUM_CLASSES, head="fcn", head_channels=64,
        lr=args.lr, scheduler="cosine", warmup_steps=args.warmup, output_stride=output_stride,
        lattice_loss_weight=lattice, **kwargs,
    )  # fmt: skip


def like(
    task: SemanticSegmentationTask,
    args: argparse.Namespace,
    output_stride: int | None,
    lattice: float = 0.0,
) -> SemanticSegmentationTask:
    """A task of the given structure holding ``task``'s tensors (dense or not: same keys)."""
    out = new_task(args, output_stride, lattice)
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


def start(args: argparse.Namespace, seed: int, backbone: dict | None) -> SemanticSegmentationTask:
    """The seed's starting point: pretrained backbone, head initialised from ``seed``."""
    torch.manual_seed(seed)
    task = new_task(args, None)
    if backbone is not None:
        task.model.backbone.load_state_dict(backbone, strict=True)
    return task


def time_ratio(args: argparse.Namespace, backbone: dict | None, device: torch.device) -> dict:
    """Training time per step, dense with the lattice term / original, on one batch."""
    data = fine_tune_data(args, 0)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    batch = {"image": batch["image"].to(device), "mask": batch["mask"].to(device)}
    steps = {}
    for name, os_ in (("original", None), ("dense", args.output_stride)):
        task = like(start(args, 0, backbone), args, os_, args.lattice_weight).to(device).train()
        optimizer = torch.optim.AdamW(task.parameters(), lr=args.lr)

        def step(task: Any = task, optimizer: Any = optimizer) -> None:
            optimizer.zero_grad()
            task.step_loss(batch).total.backward()
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


def trained_arms(args: argparse.Namespace) -> list[tuple[str, int | None, float, bool]]:
    """``(arm, output_stride, lattice_loss_weight, long)`` of every arm that trains."""
    arms = [("a", None, 0.0, False), ("a_long", None, 0.0, True),
            ("b", args.output_stride, 0.0, False),
            ("b_lattice", args.output_stride, args.lattice_weight, False)]  # fmt: skip
    if has_alt(args):
        arms.append(("b_lattice_alt", args.output_stride, args.alt_lattice_weight, False))
    return arms


def has_alt(args: argparse.Namespace) -> bool:
    """Whether this start trains the arm with the other lattice weight."""
    return args.alt_lattice_weight is not None and args.start in args.alt_starts


def run_seed(
    args: argparse.Namespace,
    seed: int,
    backbone_path: str | None,
    a_long: int,
    geometry: CellGeometry,
) -> dict:
    """Train the arms of one start and seed; derive a_dense and the exports; score them all."""
    _quiet()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpu = time.process_time()
    backbone = torch.load(backbone_path) if backbone_path else None
    init = start(args, seed, backbone)
    data = fine_tune_data(args, seed)
    tasks, training = {}, {}
    for arm, os_, lattice, long in trained_arms(args):
        tasks[arm] = like(init, args, os_, lattice)
        training[arm] = fit(tasks[arm], data, a_long if long else args.steps, seed, args)
        training[arm]["lattice_loss_weight"] = lattice
    tasks["a_dense"] = like(tasks["a"], args, args.output_stride)
    for exported, dense in EXPORTED_FROM.items():
        if dense in tasks:
            tasks[exported] = new_task(args, None)
            tasks[exported].model.load_state_dict(
                to_original(tasks[dense].model).state_dict(), strict=True
            )
    data.setup("test")
    loader = data.test_dataloader()
    conf = {arm: score(task, loader, device) for arm, task in tasks.items()}
    masks = torch.cat([batch["mask"] for batch in loader])
    images = next(iter(loader))["image"][: args.cost_batch].to(device)
    with torch.no_grad():
        cells = tuple(tasks["a"].model(images[:1]).shape[-2:])
        errors = [
            verify_equivalence(
                tasks[exported].model, tasks[dense].model, images, check_phases=False
            ).max_rel_error
            for exported, dense in EXPORTED_FROM.items()
            if exported in tasks
        ]
    oracles, rule = oracle_confusions(masks, NUM_CLASSES, 255, geometry, cells)
    conf.update(oracles)
    return {
        "start": args.start,
        "seed": seed,
        "training": training,
        "scores": {arm: scores(c) for arm, c in conf.items()},
        "confusions": {arm: c.round().long().tolist() for arm, c in conf.items()},
        "cost": test_cost({"a": tasks["a"], "b": tasks["b"]}, images, args),
        "geometry": {"stride": list(geometry.stride), "offset": list(geometry.offset)},
        "cells": list(cells),
        "ceiling_rule": rule,
        "export_max_rel_error": max(errors),
        "cpu_s": time.process_time() - cpu,
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
    for first, second in COMPARISONS + ALT_COMPARISONS:
        if first not in conf or second not in conf:
            continue
        result = paired_bootstrap(conf[first], conf[second], replicates)
        result["verdict"] = decide(result)
        result["seeds_won"] = sum(d > 0 for d in result["miou"]["per_seed"])
        comparisons[f"{first}-{second}"] = result
    return {"seeds": [r["seed"] for r in runs], "arms": arms, "comparisons": comparisons}


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--starts", nargs="+", choices=sorted(STARTS), default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps of a and b")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="synthetic pretraining steps; 0: that start is random weights")  # fmt: skip
    p.add_argument("--backbone", default=None, help="the synthetic start's backbone")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-test", type=int, default=None)
    p.add_argument("--jobs", type=int, default=None, help="runs in parallel processes")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers")
    p.add_argument("--output-stride", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lattice-weight", type=float, default=1.0, help="b_lattice's weight")
    p.add_argument("--alt-lattice-weight", type=float, default=None,
                   help="the weight of b_lattice_alt (negative: no such arm)")  # fmt: skip
    p.add_argument("--alt-starts", nargs="*", choices=sorted(STARTS), default=None)
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates")
    p.add_argument("--cost-batch", type=int, default=8)
    args = p.parse_args(argv)
    profile = "quick" if args.quick else ("cuda" if args.device.startswith("cuda") else "cpu")
    for key, value in PROFILES[profile].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.alt_lattice_weight < 0:
        args.alt_lattice_weight = None
    args.profile = profile
    args.warmup = min(20, args.steps // 10)
    args.ratio_repeats = args.repeats or (1 if args.quick else 6)
    if args.quick:
        args.bootstrap = min(args.bootstrap, 200)
    return args


SETTINGS = ("profile", "start", "backbone", "image_size", "batch_size", "steps",
            "pretrain_steps", "seeds", "num_test", "output_stride", "lr", "warmup",
            "lattice_weight", "alt_lattice_weight", "bootstrap", "jobs", "threads",
            "num_workers", "starts")  # fmt: skip


def _payload(args: argparse.Namespace, record: dict, extra: dict, runs: list[dict]) -> dict:
    settings = {key: getattr(args, key) for key in SETTINGS}
    if not has_alt(args):
        settings["alt_lattice_weight"] = None
    record = {**record, "load_average_now": list(os.getloadavg())}
    payload = {"benchmark": "accuracy", "start": args.start, "machine": record,
               "settings": settings, **extra, "complete": len(runs) == len(args.seeds),
               "runs": runs}  # fmt: skip
    if runs:
        payload["summary"] = summarise(runs, args.bootstrap)
    return payload


def _prepare(args: argparse.Namespace, device: torch.device, tmp: Path) -> dict[str, Any]:
    """Per start: its arguments, backbone file, equal-compute steps, geometry and record."""
    prepared = {}
    for name in args.starts:
        sargs = start_arguments(args, name)
        backbone, made = prepare_start(sargs, new_task, fit)
        path = None
        if backbone is not None:
            path = str(tmp / f"{name}.pt")
            torch.save(backbone, path)
        ratio = time_ratio(sargs, backbone, device)
        a_long = max(args.steps, round(args.steps * ratio["ratio"]))
        # Where the original network's cells sit (the task's own geometry, which its
        # prediction path uses): a property of the architecture, traced once.
        prepared[name] = {
            "args": sargs, "path": path, "a_long": a_long, "geometry": new_task(sargs, None).cells,
            "extra": {"pretraining": made, "time_ratio": ratio, "a_long_steps": a_long},
        }  # fmt: skip
    return prepared


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the benchmark; return each start's payload (also written as JSON, Markdown, PNG)."""
    args = _arguments(argv)
    _quiet()
    device = C.prepare(args)
    record = C.machine(device, args)
    wall, cpu = time.perf_counter(), time.process_time()
    runs: dict[str, list[dict]] = {name: [] for name in args.starts}
    payloads: dict[str, dict[str, Any]] = {}

    def save(name: str) -> None:
        worker_cpu = sum(r["cpu_s"] for rs in runs.values() for r in rs)
        record.update(wall_seconds=time.perf_counter() - wall,
                      cpu_seconds=time.process_time() - cpu + worker_cpu)  # fmt: skip
        p = prepared[name]
        payloads[name] = _payload(p["args"], record, p["extra"], runs[name])
        C.write(args.out, stem(args.profile, name), payloads[name], markdown(payloads[name]))

    with tempfile.TemporaryDirectory() as tmp:
        prepared = _prepare(args, device, Path(tmp))
        jobs = [(name, seed) for seed in args.seeds for name in args.starts]
        call = {n: (p["args"], p["path"], p["a_long"], p["geometry"]) for n, p in prepared.items()}
        if args.jobs > 1:
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
                pending = [pool.submit(run_seed, call[n][0], s, *call[n][1:]) for n, s in jobs]
                for done in futures.as_completed(pending):
                    result = done.result()
                    runs[result["start"]].append(result)
                    save(result["start"])
        else:
            for name, seed in jobs:
                runs[name].append(run_seed(call[name][0], seed, *call[name][1:]))
                save(name)
    for name in args.starts:  # every start's file carries the whole run's time
        save(name)
        plot(payloads[name], args.out / f"{stem(args.profile, name)}.png")
    return payloads


if __name__ == "__main__":
    main()
