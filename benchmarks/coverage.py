"""Coverage: which timm models ``to_dense(strict=True)`` makes exactly equivalent, and which not.

For every timm model module (a *family*: ``timm.models.resnet``, ``timm.models.efficientnet``...)
the smallest few models by parameter count are built with random weights
(``pretrained=False``), ``features_only=True`` where the family supports it, otherwise the
classifier trunk (``method="forward_features"``), with random BatchNorm statistics so that no
norm layer is the identity. Each is converted with ``to_dense(strict=True)`` at output strides
16 and 8 and gets one verdict per stride:

- ``exact``: converted, and ``verify_equivalence`` on a fresh input of another size agrees
  (in float64 when float32 rounding, amplified by a deep random net, exceeds the tolerance);
- ``refused``: ``NotEquivalentError`` or ``ValueError``, with the first finding or message;
- ``crashed``: any other exception (a bug: the conversion must convert or refuse cleanly);
- ``wrong``: converted, but the verifier finds it not equivalent (a bug);
- ``n/a``: the model's stride is not above the output stride (nothing to convert).

Models that cannot be built, are over the parameter budget, or whose original forward fails at
the probe size are listed as skipped, with the reason. Fixed-size models (``pretrained_cfg``
says ``fixed_input_size``) are probed and verified at their own input size.

    python -m benchmarks.coverage [--quick] [--per-module] [--per-family N] [--models ...]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import signal
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from benchmarks import _common as C
from benchmarks._coverage_report import markdown
from dense_lightning.equivalent import (
    NotEquivalentError,
    get_dense_info,
    to_dense,
    verify_equivalence,
)
from dense_lightning.equivalent.proof import verify_in_float64
from dense_lightning.equivalent.trace import flatten_outputs

STRIDES = (16, 8)
QUICK_MODELS = ("test_resnet", "test_efficientnet", "test_vit")
PROBE, OTHER = 96, 109  # probe side, and the other (odd) side the verifier sees


class _Timeout(Exception):
    """A model ran past its time budget."""


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Raise :class:`_Timeout` in the main thread after ``seconds`` (0: no limit)."""

    def expire(*_: Any) -> None:
        raise _Timeout(f"over the time budget of {seconds} s")

    if seconds <= 0:
        yield
        return
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def count_params(name: str) -> int | None:
    """Parameters of ``name``, counted on the meta device (nothing is allocated)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(name, pretrained=False)
    except Exception:
        return None
    return sum(p.numel() for p in model.parameters())


def select(per_family: int, max_params: float) -> tuple[list[dict], list[dict]]:
    """The smallest ``per_family`` models of each timm module, and those skipped for size.

    Models whose size cannot be counted on the meta device rank after the counted ones, by
    name; the budget is applied to them once built.
    """
    chosen, skipped = [], []
    for module in sorted(timm.list_modules()):
        sized = [(count_params(n), n) for n in sorted(timm.list_models(module=module))]
        sized.sort(key=lambda pn: (pn[0] is None, pn[0] or 0, pn[1]))
        rank = 0
        for params, name in sized:
            if rank == per_family:
                break
            entry = {"name": name, "module": module, "params": params}
            if params is not None and params > max_params:
                skipped.append({**entry, "reason": f"{params / 1e6:.0f}M parameters > budget"})
                continue
            chosen.append({**entry, "rank": rank})
            rank += 1
    # Every family's smallest model first: a sweep stopped early still covers every family.
    chosen.sort(key=lambda e: (e["rank"], e["module"]))
    return chosen, skipped


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and norm affines, so no norm layer is the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)):
                if m.weight is not None and m.bias is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


def build(name: str) -> tuple[nn.Module, str, str]:
    """The model (random weights, random norms), the method to trace, and the mode used."""
    torch.manual_seed(0)
    try:
        model = timm.create_model(name, pretrained=False, features_only=True)
        method, mode = "forward", "features_only"
    except Exception:
        model = timm.create_model(name, pretrained=False)
        method, mode = "forward_features", "forward_features"
    return randomize_norms(model), method, mode


def input_sizes(model: nn.Module, probe: int, other: int) -> tuple[int, int, int, bool]:
    """Input channels, probe side, verification side, and whether the size is fixed."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or (3, probe, probe)
    fixed = bool(cfg.get("fixed_input_size", False))
    if fixed:
        return size[0], size[-1], size[-1], True
    return size[0], probe, other, False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame, to report a crash."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno} in {f.name}"


def _info(model: nn.Module) -> dict[str, Any]:
    """What ``to_dense`` recorded, findings and long lists shortened for the table."""
    info = get_dense_info(model)
    if info is None:
        return {}
    out = {}
    for field in dataclasses.fields(info):
        value = getattr(info, field.name)
        if isinstance(value, (list, tuple)):
            out[field.name] = [str(v) for v in value[:20]]
            out[f"{field.name}_count"] = len(value)
        else:
            out[field.name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def convert(
    model: nn.Module, method: str, output_stride: int, in_chans: int, sizes: tuple[int, int]
) -> dict[str, Any]:
    """One verdict: convert strictly, then verify on a fresh input of the other size."""
    probe, other = sizes
    kwargs: dict[str, Any] = {"strict": True, "method": method}
    if "probe_size" in inspect.signature(to_dense).parameters:
        kwargs["probe_size"] = probe
    start = time.process_time()
    try:
        dense = to_dense(model, output_stride, **kwargs)
    except NotEquivalentError as exc:
        first = str(exc.findings[0]) if exc.findings else _first_line(exc)
        return {"verdict": "refused", "error": "NotEquivalentError", "detail": first,
                "findings": len(exc.findings), "seconds": time.process_time() - start}  # fmt: skip
    except ValueError as exc:
        return {"verdict": "refused", "error": type(exc).__name__, "detail": _first_line(exc),
                "seconds": time.process_time() - start}  # fmt: skip
    except _Timeout:
        raise
    except Exception as exc:
        return {"verdict": "crashed", "error": type(exc).__name__, "stage": "to_dense",
                "detail": _first_line(exc), "where": _where(exc),
                "seconds": time.process_time() - start}  # fmt: skip
    x = torch.randn(1, in_chans, other, other, generator=torch.Generator().manual_seed(1))
    try:
        report = verify_equivalence(model, dense, x)
    except ValueError as exc:  # outputs of the wrong number or size: converted into something else
        return {"verdict": "wrong", "stage": "verify", "detail": _first_line(exc),
                "info": _info(dense), "seconds": time.process_time() - start}  # fmt: skip
    except _Timeout:
        raise
    except Exception as exc:
        return {"verdict": "crashed", "error": type(exc).__name__, "stage": "verify",
                "detail": _first_line(exc), "where": _where(exc),
                "seconds": time.process_time() - start}  # fmt: skip
    equivalent, error64 = report.equivalent, None
    if not equivalent:
        # The strict proof's rule: float32 rounding amplified by depth shrinks ~1e9-fold in
        # float64, a real difference does not.
        try:
            report64 = verify_in_float64(model, dense, x, check_phases=True)
            equivalent, error64 = report64.equivalent, report64.max_rel_error
        except _Timeout:
            raise
        except Exception:  # an op without float64 support: the float32 verdict stands
            pass
    result = {
        "verdict": "exact" if equivalent else "wrong",
        "verify_size": other,
        "float64_rel_error": error64,
        "max_rel_error": report.max_rel_error,
        "max_phase_rel_error": report.max_phase_rel_error,
        "phase_notes": sorted({o.phase_note for o in report.outputs if o.phase_note}),
        "info": _info(dense),
        "seconds": time.process_time() - start,
    }
    if not equivalent:
        result["detail"] = (
            f"max rel error {report.max_rel_error:.2e}, phases {report.max_phase_rel_error}, "
            f"first divergent module {report.first_divergent_module!r}"
        )
    return result


def _stride(model: nn.Module, method: str, in_chans: int, size: int) -> tuple[int, list]:
    """The model's total stride (smallest output map) and its output shapes."""
    with torch.no_grad():
        outs = flatten_outputs(getattr(model, method)(torch.zeros(1, in_chans, size, size)))
    shapes = [tuple(t.shape) for t in outs]
    spatial = [s for s in shapes if len(s) == 4]
    if not spatial:
        raise ValueError(f"no 4D output (shapes {shapes}): not a dense-prediction trunk")
    return round(size / min(s[-1] for s in spatial)), shapes


def _other_size(model: nn.Module, method: str, in_chans: int, sizes: tuple[int, ...]) -> int:
    """The first of ``sizes`` the original model runs at (some need a multiple of a stride)."""
    for size in sizes[:-1]:
        try:
            _stride(model, method, in_chans, size)
        except Exception:
            continue
        return size
    return sizes[-1]


def sweep_one(entry: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Build one model and convert it at every output stride."""
    row = dict(entry)
    start = time.process_time()
    try:
        with _time_limit(args.timeout):
            try:
                model, method, mode = build(entry["name"])
            except Exception as exc:
                return {**row, "skipped": f"cannot build: {_first_line(exc)}"}
            params = sum(p.numel() for p in model.parameters())
            row.update(params=params, mode=mode)
            if params > args.max_params:
                return {**row, "skipped": f"{params / 1e6:.0f}M parameters > budget"}
            in_chans, probe, other, fixed = input_sizes(model, args.probe, args.other)
            row.update(input=[in_chans, probe, other], fixed_input_size=fixed)
            try:
                stride, shapes = _stride(model, method, in_chans, probe)
            except Exception as exc:
                return {**row, "skipped": f"original {method} fails: {_first_line(exc)}"}
            other = _other_size(model, method, in_chans, (other, probe + stride, probe))
            row.update(stride=stride, output_shapes=shapes, results={}, verify_size=other)
            for os_ in args.strides:
                if stride <= os_:
                    row["results"][str(os_)] = {
                        "verdict": "n/a", "detail": f"model stride {stride} <= {os_}"
                    }  # fmt: skip
                    continue
                row["results"][str(os_)] = convert(model, method, os_, in_chans, (probe, other))
    except _Timeout as exc:
        row["skipped"] = str(exc)
    row["seconds"] = time.process_time() - start
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--per-family", type=int, default=3, help="smallest N models per module")
    p.add_argument("--per-module", action="store_true", help="one model per module (N=1)")
    p.add_argument("--models", nargs="+", default=None, help="these models instead of a sweep")
    p.add_argument("--strides", nargs="+", type=int, default=list(STRIDES))
    p.add_argument("--max-params", type=float, default=60e6, help="parameter budget per model")
    p.add_argument("--timeout", type=int, default=600, help="seconds per model (0: none)")
    p.add_argument("--probe", type=int, default=PROBE, help="probe side of resizable models")
    p.add_argument("--other", type=int, default=OTHER, help="side of the verification input")
    p.add_argument("--stem", default=None, help="output file stem (default: coverage...)")
    p.add_argument("--resume", action="store_true", help="keep rows of an existing JSON")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    device = C.prepare(args)
    if args.per_module:
        args.per_family = 1
    if args.quick:
        args.models = args.models or list(QUICK_MODELS)
        args.probe, args.other = 64, 77
    stem = args.stem or "coverage"
    record = C.machine(device, args)
    if args.models:
        chosen = [{"name": n, "module": _module(n), "params": None, "rank": 0}
                  for n in args.models]  # fmt: skip
        skipped: list[dict] = []
    else:
        chosen, skipped = select(args.per_family, args.max_params)
    settings = {key: getattr(args, key) for key in (
        "per_family", "strides", "max_params", "timeout", "probe", "other", "models")}  # fmt: skip
    path = args.out / f"{stem}.json"
    done = {}
    if args.resume and path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") == settings:
            done = {row["name"]: row for row in old["rows"]}
    rows: list[dict[str, Any]] = []
    payload: dict[str, Any] = {}
    start, cpu_start = time.perf_counter(), time.process_time()
    for entry in chosen:
        row = done.get(entry["name"]) or sweep_one(entry, args)
        rows.append(row)
        verdicts = {k: v["verdict"] for k, v in row.get("results", {}).items()}
        print(f"{entry['name']}: {verdicts or row.get('skipped')}", flush=True)
        record.update(wall_seconds=time.perf_counter() - start,
                      cpu_seconds=time.process_time() - cpu_start)  # fmt: skip
        payload = {"benchmark": "coverage", "machine": record, "settings": settings,
                   "size_skipped": skipped, "rows": rows, "complete": False}  # fmt: skip
        C.write(args.out, stem, payload, markdown(payload))
    payload = {"benchmark": "coverage", "machine": record, "settings": settings,
               "size_skipped": skipped, "rows": rows, "complete": True}  # fmt: skip
    C.write(args.out, stem, payload, markdown(payload))
    return payload


def _module(name: str) -> str:
    """The timm module that defines model ``name``."""
    fn = timm.models.model_entrypoint(name)
    return fn.__module__.rsplit(".", 1)[-1]


if __name__ == "__main__":
    main()
