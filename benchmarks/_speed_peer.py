"""The peer column of :mod:`benchmarks.speed`: timm's own dilated model (``output_stride``).

timm builds a dilated network when asked for an ``output_stride``: fast, and the lattice of its
output is the original network's where nothing mixes positions (exact for plain residual
nets), wrong where something does (a squeeze-excitation mean over the dilated map reads the
extra cells). Each row measures, on the same weights and the same input: inference time, a
training step (forward, a loss, backward) and peak memory of both, ours over timm's as paired
ratios of interleaved rounds, the lattice error of both, and for a few models the same after
``torch.compile``.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch import nn

from benchmarks import _common as C
from benchmarks._hand_dilated import hand_dilated

# Models timed after torch.compile too (compiling is minutes on a CPU: a few suffice).
COMPILE_MODELS = ("resnet18", "efficientnet_b0")


def build_peer(
    name: str, output_stride: int, original: nn.Module, device: torch.device
) -> tuple[nn.Module | None, str | None]:
    """The peer (timm's dilated model, ``original``'s weights), or ``None`` and why not."""
    torch.manual_seed(0)
    try:
        peer = timm.create_model(
            name, pretrained=False, num_classes=0, global_pool="", output_stride=output_stride
        )
    except (AssertionError, TypeError, ValueError, NotImplementedError) as exc:
        why = str(exc) or f"{type(exc).__name__} in its constructor"
        return None, f"timm's {name} takes no output_stride={output_stride} ({why})"
    peer.load_state_dict(original.state_dict(), strict=True)
    peer = peer.eval().to(device)
    x = torch.zeros(1, 3, 64, 64, device=device)
    with torch.no_grad():
        side = peer.forward_features(x).shape[-1]
    if side != 64 // output_stride:
        return None, f"timm's {name} ignores output_stride={output_stride} (side {side} at 64 px)"
    return peer, None


def build_hand_peer(
    original: nn.Module, output_stride: int, device: torch.device
) -> tuple[nn.Module | None, str | None]:
    """The peer where timm has none: ``original`` dilated by hand with plain modules."""
    try:
        peer = hand_dilated(original.cpu(), output_stride)
    except ValueError as exc:
        return None, f"no hand-dilated peer either: {exc}"
    finally:
        original.to(device)
    return peer.eval().to(device), None


def lattice_errors(
    original: nn.Module, models: dict[str, nn.Module], k: int, x: torch.Tensor
) -> dict[str, float]:
    """Max relative error of each model's output every ``k`` cells against the original's.

    Computed in float64 on copies: with random norms a deep network amplifies float32 rounding
    to about 1e-3 of its output (the original against itself in float64), which would blur
    the line between an exact model and a wrong one. The reference runs once for all models.
    """
    x = x.double()
    with torch.no_grad():
        ref = copy.deepcopy(original).double().forward_features(x)
        errors = {}
        for key, model in models.items():
            got = copy.deepcopy(model).double().forward_features(x)[..., ::k, ::k]
            errors[key] = (
                ((got - ref).abs().max() / ref.abs().max()).item()
                if got.shape == ref.shape
                else float("nan")
            )
    return errors


def train_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """One training step of ``model`` (train mode): forward, a squared-mean loss, backward."""

    def step() -> None:
        model.forward_features(x).square().mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def paired(
    candidates: dict[str, Callable[[], Any]], device: torch.device, repeats: int, clock: str
) -> dict[str, Any]:
    """Interleaved timing of two candidates and the median of their per-round ratio."""
    times = C.interleaved(candidates, device, repeats=repeats, clock=clock)
    ours, peer = (times[k]["times"] for k in candidates)
    ratios = [a / b for a, b in zip(ours, peer, strict=True)]
    return {
        "ours_median": statistics.median(ours),
        "peer_median": statistics.median(peer),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "raw": {k: times[k]["times"] for k in candidates},
    }


def measure_peer(
    ours: nn.Module,
    peer: nn.Module,
    original: nn.Module,
    k: int,
    args: Any,
    device: torch.device,
) -> dict[str, Any]:
    """Ours (``dilated`` path, as ``to_dense`` returns it) against the peer dilated model."""
    torch.manual_seed(2)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    xt = torch.randn(args.train_batch, 3, args.size, args.size, device=device)
    models = {"ours": ours, "peer": peer}
    trained = {key: copy.deepcopy(m).train() for key, m in models.items()}
    infer = {key: (lambda m=m: m.forward_features(x)) for key, m in models.items()}
    steps = {key: train_step(m, xt) for key, m in trained.items()}
    with torch.no_grad():
        inference = paired(infer, device, args.peer_repeats, args.clock)
        memory = {key: C.peak_memory(fn, device) for key, fn in infer.items()}
    training = paired(steps, device, args.peer_repeats, args.clock)
    train_memory = {key: C.peak_memory(fn, device) for key, fn in steps.items()}
    return {
        "inference": inference,
        "train": training,
        "train_batch": args.train_batch,
        "peak_memory_bytes": memory,
        "train_peak_memory_bytes": train_memory,
        "lattice_max_rel_error": lattice_errors(original, models, k, x[:1]),
    }


def measure_compiled(
    ours: nn.Module, peer: nn.Module, args: Any, device: torch.device
) -> dict[str, Any]:
    """Graphs and breaks of our compiled model, and compiled inference time against timm's."""
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(ours.forward_features)(x)
    compiled, seconds = {}, {}
    for key, model in (("ours", ours), ("peer", peer)):
        fn = torch.compile(model.forward_features)
        start = time.perf_counter()
        with torch.no_grad():
            fn(x)
        seconds[key] = time.perf_counter() - start
        compiled[key] = lambda fn=fn: fn(x)
    with torch.no_grad():
        timing = paired(compiled, device, args.peer_repeats, args.clock)
    torch._dynamo.reset()
    return {
        "graphs": explained.graph_count,
        "graph_breaks": explained.graph_break_count,
        "compile_seconds": seconds,
        "inference": timing,
    }
