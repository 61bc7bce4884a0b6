"""The peer column of :mod:`benchmarks.speed`: timm's own dilated model (``output_stride``).

timm builds a dilated network when asked for an ``output_stride``: fast, and the lattice of its
output is the original network's where nothing mixes positions (exact for plain residual
nets), wrong where something does (a squeeze-excitation mean over the dilated map reads the
extra cells). Each row measures, on the same weights and the same input: inference time, a
training step (forward, a loss, backward) and peak memory of both, ours over timm's as paired
ratios of interleaved rounds with a bootstrap interval of their median, the lattice error of
both, whether both make the same aten calls (then a ratio is the machine's noise) and for a few
models the same after ``torch.compile``.
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
from benchmarks._ops import aten_calls, compare_calls

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


def median_interval(
    values: list[float], replicates: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the median of ``values`` (rounds resampled)."""
    data = torch.tensor(values, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(values), (replicates, len(values)), generator=g)
    # torch.median takes the lower middle value of an even count: take the mean of both
    # middles instead, as statistics.median does.
    ranked = data[picks].sort(dim=1).values
    n = len(values)
    medians = (ranked[:, (n - 1) // 2] + ranked[:, n // 2]) / 2
    low, high = torch.quantile(medians, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return low.item(), high.item()


def paired(
    candidates: dict[str, Callable[[], Any]], device: torch.device, repeats: int, clock: str
) -> dict[str, Any]:
    """Interleaved timing of two candidates, the median of their per-round ratio, its interval."""
    times = C.interleaved(candidates, device, repeats=repeats, clock=clock)
    ours, peer = (times[k]["times"] for k in candidates)
    ratios = [a / b for a, b in zip(ours, peer, strict=True)]
    return {
        "ours_median": statistics.median(ours),
        "peer_median": statistics.median(peer),
        "ratio": statistics.median(ratios),
        "ratio_ci": list(median_interval(ratios)),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "raw": {k: times[k]["times"] for k in candidates},
    }


def verdict(timing: dict[str, Any], same_calls: bool) -> str:
    """How one ratio reads against the 1.00 target, its interval and the aten calls of both.

    ``met``: the median ratio is at most 1.00. ``tie``: above 1.00 but the interval reaches
    1.00 while both sides make the same aten calls, so the gap is the machine's noise, not
    work either side does more. ``noise``: the same interval, different calls. ``above``:
    the whole interval lies above 1.00.
    """
    if timing["ratio"] <= 1:
        return "met"
    if timing["ratio_ci"][0] > 1:
        return "above"
    return "tie" if same_calls else "noise"


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
        infer_calls = same_calls(infer)
    training = paired(steps, device, args.peer_repeats, args.clock)
    train_memory = {key: C.peak_memory(fn, device) for key, fn in steps.items()}
    calls = {"inference": infer_calls, "train": same_calls(steps)}
    return {
        "inference": inference,
        "train": training,
        "calls": calls,
        "verdict": {
            "inference": verdict(inference, calls["inference"]["same"]),
            "train": verdict(training, calls["train"]["same"]),
        },
        "train_batch": args.train_batch,
        "peak_memory_bytes": memory,
        "train_peak_memory_bytes": train_memory,
        "lattice_max_rel_error": lattice_errors(original, models, k, x[:1]),
    }


def same_calls(candidates: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """The aten calls of one call of ours and of the peer, compared (see :mod:`benchmarks._ops`)."""
    recorded = {key: aten_calls(fn) for key, fn in candidates.items()}
    return compare_calls(recorded["ours"], recorded["peer"])


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
