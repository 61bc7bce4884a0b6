"""Speed: dense vs shift-and-stitch, the cost of dilation, inverse transfer, phase regions.

1. Dense evaluation vs shift-and-stitch: same predictions in the interior, and the time ratio
   stitch / dense next to the MAC ratio (target: speed-up >= 80% of the MAC ratio).
2. The cost of dilation: dense time / original time against dense MACs / original MACs, for
   the dilated, phase (space-to-batch) and auto execution paths (target: <= 1.15), with peak
   memory.
3. Inverse transfer keeps the speed: exported model time / original timm model time.
4. Phase regions (squeeze-excitation and other position-mixing modules run per phase to stay
   exact): the dense model's time against the same dense model without its regions (those
   modules then mix the phases: fast but not equivalent), i.e. the cost of exactness; for
   squeeze-excitation gates also with the phases split and interleaved around every gate
   (the per-block reshuffles that their statistics on the dense map replace).
5. Ours against the peer, timm's own dilated model (``output_stride``, same weights): paired
   ratios of inference and training-step times, peak memory, the lattice error of both, and
   for a few models the same after ``torch.compile`` (graphs and breaks of ours included).

``--models`` measures only the named models and merges their rows into an existing result
file of the same settings. A model that cannot be made exactly equivalent is recorded as
refused, with the reason.

The default profile is output stride 8 (``--strides 16 8 4`` for the others). ``--device cuda``
runs the same columns on a GPU and writes ``gpu_speed*``; without a visible GPU it stops with
an error saying so.

    python -m benchmarks.speed [--quick] [--out DIR] [--device cuda] [--models ...] [--tag T]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from benchmarks import _common as C
from benchmarks._speed_peer import (
    COMPILE_MODELS,
    build_hand_peer,
    build_peer,
    measure_compiled,
    measure_peer,
)
from benchmarks._speed_report import markdown, plot
from benchmarks.coverage import randomize_norms
from dense_lightning.equivalent import (
    NotEquivalentError,
    execution_choices,
    get_dense_info,
    set_execution,
    to_dense,
    to_original,
)
from dense_lightning.equivalent.phase import region_hooks, remove_regions
from dense_lightning.equivalent.shift_stitch import shift_and_stitch, stitch_interior

MODELS = (
    "resnet18", "resnet50", "regnety_016", "regnetx_002", "mobilenetv2_100", "dla34",
    "efficientnet_b0", "regnety_002", "seresnet50", "convnext_atto",
)  # fmt: skip
STRIDES = (8,)


def build(name: str, device: torch.device) -> nn.Module:
    """A timm trunk (no pooling, no head) in eval mode, random weights (no network here).

    Norms get random statistics and affines: timm zero-initialises the last BatchNorm of
    residual blocks, so at initialisation every residual branch (and a squeeze-excitation gate
    in it) adds nothing, and a wrong dilated model would look exact on the lattice.
    """
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    return randomize_norms(model).to(device)


def field_cells(model: nn.Module, device: torch.device) -> int:
    """How many output cells (per axis) one input pixel reaches: the receptive field / stride."""
    size = 256
    while True:
        x = torch.zeros(1, 3, size, size, device=device)
        x[..., size // 2, size // 2] = float("nan")
        with torch.no_grad():
            nan = model.forward_features(x).isnan()[0].any(0)
        rows = nan.any(1).nonzero().flatten()
        if rows[0] > 0 and rows[-1] < nan.shape[0] - 1:
            return int(rows[-1] - rows[0] + 1)
        size *= 2


def check_stitch(
    original: nn.Module, dense: nn.Module, k: int, output_stride: int, size: int, device: Any
) -> dict[str, Any]:
    """Shift-and-stitch vs dense on an input large enough to have an interior."""
    torch.manual_seed(1)
    x = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        stitch = functools.partial(
            shift_and_stitch, original, k=k, output_stride=output_stride, method="forward_features"
        )
        mask = stitch_interior(dense.forward_features, stitch, x, k, output_stride)
        got, ref = dense.forward_features(x), stitch(x)
    err = (got - ref).abs()[..., mask].max().item() / ref.abs().max().item()
    return {
        "verify_size": size,
        "interior_cells": int(mask.sum()),
        "cells": mask.numel(),
        "interior_max_rel_error": err,
    }


def check_lattice(original: nn.Module, dense: nn.Module, k: int, x: torch.Tensor) -> dict:
    """Dense output on the lattice vs the original, for nets whose phases see their own views.

    With per-view statistics (a global mean inside a phase region) the phases other than 0 are
    the original on each phase's sub-image, not on shifted inputs, so shift-and-stitch is a
    different computation there; only the lattice is compared.
    """
    with torch.no_grad():
        ref, got = original.forward_features(x), dense.forward_features(x)[..., ::k, ::k]
    return {
        "verify_size": x.shape[-1],
        "interior_cells": 0,
        "cells": ref[0, 0].numel(),
        "lattice_max_rel_error": ((got - ref).abs().max() / ref.abs().max()).item(),
        "note": "per-view statistics: shift-and-stitch differs off the lattice by design",
    }


def split_gates(model: nn.Module) -> nn.Module:
    """``model`` with its squeeze-excitation regions split into phases around every gate.

    The per-block reshuffles that computing the gates' statistics on the dense map avoids:
    the same numbers, two copies of the map per gate.
    """
    for module, _, _, region in list(region_hooks(model)):
        if region.gate is not None:
            module.__dict__.pop("forward", None)
            region.gate = None
    return model


def measure(name: str, output_stride: int, args: argparse.Namespace, device: Any) -> dict:
    """All numbers for one model at one output stride (or why it cannot be converted)."""
    original = build(name, device)
    try:
        dense = to_dense(original, output_stride, method="forward_features")
    except NotEquivalentError as exc:
        return {"model": name, "output_stride": output_stride, "refused": str(exc.findings[0])}
    info = get_dense_info(dense)
    stride, k = info.original_stride, info.factor
    exported = to_original(dense)
    reference = build(name, device)  # a fresh timm model: the export must load into it
    reference.load_state_dict(exported.state_dict(), strict=True)
    paths = {
        mode: set_execution(copy.deepcopy(dense), mode) for mode in ("dilated", "phase", "auto")
    }
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    run = {
        "original": lambda: original.forward_features(x),
        "exported": lambda: exported.forward_features(x),
        **{f"dense_{mode}": (lambda m=m: m.forward_features(x)) for mode, m in paths.items()},
        "stitch": lambda: shift_and_stitch(
            original, x, k, output_stride, method="forward_features"
        ),
    }
    if info.regions:
        # The same dilated model with its position-mixing modules on the whole dense map:
        # not equivalent, but what the regions' reshuffles cost is the difference.
        unsplit = copy.deepcopy(paths["dilated"])
        remove_regions(unsplit, required=True)
        run["dense_no_regions"] = lambda: unsplit.forward_features(x)
        if any(r.gate is not None for _, _, _, r in region_hooks(paths["dilated"])):
            split = split_gates(copy.deepcopy(paths["dilated"]))
            run["dense_split_gates"] = lambda: split.forward_features(x)
    with torch.no_grad():
        ref = run["dense_dilated"]()
        path_error = {
            mode: ((run[f"dense_{mode}"]() - ref).abs().max() / ref.abs().max()).item()
            for mode in ("phase", "auto")
        }
        counted = {key: C.macs(run[key]) for key in ("original", "dense_dilated", "stitch")}
        memory = {
            key: C.peak_memory(run[key], device)
            for key in ("original", "dense_dilated", "dense_phase", "stitch")
        }
        times = C.interleaved(run, device, repeats=args.repeats, clock=args.clock)
    if info.per_view_statistics:
        verification = check_lattice(original, paths["dilated"], k, x)
    else:
        cells = field_cells(original, device)
        verify_size = 32 * math.ceil(((cells + 2) * stride + k * output_stride) / 32)
        verification = check_stitch(
            original, paths["dilated"], k, output_stride, verify_size, device
        )
    peer, no_peer = build_peer(name, output_stride, original, device)
    versus: dict[str, Any] = {"peer_refused": no_peer, "peer_kind": "timm"}
    if peer is None:
        # timm refuses this family: the peer is the same network dilated by hand.
        peer, no_hand = build_hand_peer(original, output_stride, device)
        versus["peer_kind"] = "hand"
        if no_hand is not None:
            versus["peer_refused"] = f"{no_peer}; {no_hand}"
    if peer is not None:
        versus["peer"] = measure_peer(paths["dilated"], peer, original, k, args, device)
        if name in args.compile_models:
            versus["compiled"] = measure_compiled(paths["dilated"], peer, args, device)
    return {
        "model": name,
        "output_stride": output_stride,
        "k": k,
        **versus,
        "regions": [r.module for r in info.regions],
        "macs": counted,
        "peak_memory_bytes": memory,
        "times": {key: {k2: v for k2, v in t.items() if k2 != "times"} for key, t in times.items()},
        "raw_times": {key: t["times"] for key, t in times.items()},
        "path_max_rel_error": path_error,
        "auto_choices": execution_choices(paths["auto"]),
        "stitch_check": verification,
    }


def derive(row: dict[str, Any]) -> dict[str, Any]:
    """The ratios of one measured row: stitch efficiency, dilation overhead, export, regions."""
    t = {key: v["median"] for key, v in row["times"].items()}
    m = row["macs"]
    best = min(("dense_dilated", "dense_phase", "dense_auto"), key=t.__getitem__)
    dense_macs = m["dense_dilated"] / m["original"]
    stitch_macs = m["stitch"] / m["dense_dilated"]
    speedup = t["stitch"] / t["dense_auto"]
    return {
        "stitch_over_dense_time": speedup,
        "stitch_over_dense_macs": stitch_macs,
        "stitch_efficiency": speedup / stitch_macs,
        "dense_over_original_macs": dense_macs,
        **{
            f"{key}_over_original_time": t[key] / t["original"]
            for key in ("dense_dilated", "dense_phase", "dense_auto")
        },
        **{
            f"{key}_overhead": t[key] / t["original"] / dense_macs
            for key in ("dense_dilated", "dense_phase", "dense_auto")
        },
        "fastest_dense_path": best.removeprefix("dense_"),
        **(
            {"regions_over_no_regions_time": t["dense_dilated"] / t["dense_no_regions"]}
            if "dense_no_regions" in t
            else {}
        ),
        **(
            {"split_gates_over_no_regions_time": t["dense_split_gates"] / t["dense_no_regions"]}
            if "dense_split_gates" in t
            else {}
        ),
        "exported_over_original_time": t["exported"] / t["original"],
        "exported_spread": max(row["times"][k]["spread"] for k in ("exported", "original")),
    }


def summary(row: dict[str, Any]) -> str:
    """One progress line: ours over the peer dilated model, or why a number is missing."""
    if "refused" in row:
        return f"refused: {row['refused']}"
    peer = row.get("peer")
    if peer is None:
        return f"no peer: {row['peer_refused']}"
    said = peer["verdict"]
    calls = "same calls" if peer["calls"]["inference"]["same"] else "other calls"
    return (
        f"ours/{row.get('peer_kind', 'timm')} inference {peer['inference']['ratio']:.3f} "
        f"({said['inference']}), train {peer['train']['ratio']:.3f} ({said['train']}), "
        f"{calls}, memory "
        f"{peer['peak_memory_bytes']['ours'] / peer['peak_memory_bytes']['peer']:.2f}"
    )


def merge(path: Path, rows: list[dict], record: dict) -> tuple[list[dict], list[dict]]:
    """Rows of an earlier run at ``path`` (same settings) with ``rows`` replacing their own.

    Returns:
        The merged rows (earlier order, new models appended) and the machine records of every
        run that contributed.
    """
    if not path.exists():
        return rows, [record]
    old = json.loads(path.read_text())
    keys = ("device", "batch", "size", "torch_threads", "clock")
    if any(old["machine"].get(k) != record.get(k) for k in keys):
        raise ValueError(
            f"{path} was measured with other settings "
            f"({ {k: old['machine'].get(k) for k in keys} }); use --tag or --out for this run"
        )
    new = {(r["model"], r["output_stride"]): r for r in rows}
    kept = [r for r in old["rows"] if (r["model"], r["output_stride"]) not in new]
    runs = old.get("runs", [old["machine"]])
    return kept + rows, [*runs, record]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--strides", nargs="+", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=None, help="timing input side (default 224)")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument(
        "--merge", action="store_true", help="merge into the existing results of the same stem"
    )
    p.add_argument("--train-batch", type=int, default=2, help="batch of the training step")
    p.add_argument("--peer-repeats", type=int, default=None, help="rounds against timm")
    p.add_argument("--compile-models", nargs="*", default=None, help="models also timed compiled")
    args = p.parse_args(argv)
    device = C.prepare(args)
    args.models = args.models or (["test_resnet"] if args.quick else list(MODELS))
    args.strides = args.strides or ([8] if args.quick else list(STRIDES))
    args.size = args.size or (64 if args.quick else 224)
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.peer_repeats = args.peer_repeats or (1 if args.quick else 15)
    if args.compile_models is None:
        args.compile_models = [] if args.quick else list(COMPILE_MODELS)
    record = C.machine(device, args)
    record.update(
        batch=args.batch,
        size=args.size,
        repeats=args.repeats,
        peer_repeats=args.peer_repeats,
        models=args.models,
    )
    rows = []
    for name in args.models:
        for output_stride in args.strides:
            row = measure(name, output_stride, args, device)
            if "refused" not in row:
                row["derived"] = derive(row)
            rows.append(row)
            print(f"{name} os={output_stride}: {summary(row)}", flush=True)
    stem = ("speed" if device.type == "cpu" else "gpu_speed") + (f"_{args.tag}" if args.tag else "")
    runs = [record]
    if args.merge:
        rows, runs = merge(args.out / f"{stem}.json", rows, record)
    payload = {"benchmark": "speed", "machine": runs[0], "runs": runs, "rows": rows}
    C.write(args.out, stem, payload, markdown(payload))
    plot(payload, args.out / f"{stem}.png")
    return payload


if __name__ == "__main__":
    main()
