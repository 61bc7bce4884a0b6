"""smp encoders at output stride 16 and 8: smp's dilation, timm's, and the exact dense encoder.

For every encoder a DeepLabV3+ is built as a user builds it, ``smp.DeepLabV3Plus(encoder_name,
encoder_output_stride=OS, encoder_weights=None)``, with random weights, random BatchNorm
statistics, norm affines and layer scales (so no block is the identity), in eval mode. The
reference is the undilated encoder, ``smp.encoders.get_encoder(encoder_name,
output_stride=32)``, holding the same weights (loaded strictly: dilation never changes a
weight). Three encoders are compared with it on the lattice, every feature level, with
``verify_equivalence``:

- **smp ``make_dilated``**: the model's own encoder, for smp's native encoders (one dilation
  rate for a whole stage, the formerly strided convolution included);
- **timm ``output_stride``**: the model's own encoder, for ``tu-`` encoders (smp passes
  ``encoder_output_stride`` to timm);
- **ours**: ``dense_encoder(model, OS).encoder``, which undoes smp's dilation and converts the
  undilated encoder with ``to_dense`` (it proves itself before returning; measured here again
  on a fresh input, and in float64 when float32 rounding of a deep random net exceeds the
  tolerance, as the strict proof decides).

The error is the largest difference over the largest magnitude of the undilated features, over
every level; an encoder that smp or timm cannot build at that stride is listed with the reason.

    python -m benchmarks.smp [--quick] [--encoders NAME ...] [--strides 16 8] [--size 224]
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import nn

from benchmarks import _common as C
from benchmarks._smp_report import markdown
from benchmarks.coverage import randomize_norms
from dense_lightning.equivalent import EquivalenceReport, NotEquivalentError, verify_equivalence
from dense_lightning.equivalent.proof import RTOL, verify_in_float64

ENCODERS = (
    "resnet18", "resnet34", "resnet50", "resnext50_32x4d", "se_resnext50_32x4d",
    "efficientnet-b0", "mobilenet_v2", "dpn68", "mobileone_s0", "mit_b0", "tu-resnet18",
    "tu-efficientnet_b0", "tu-convnext_atto", "tu-mixnet_s", "tu-regnety_002",
    "tu-seresnext26d_32x4d",
)  # fmt: skip
QUICK_ENCODERS = ("resnet18", "tu-resnet18")
STRIDES = (16, 8)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def randomize(model: nn.Module) -> nn.Module:
    """Random norms (see :mod:`benchmarks.coverage`) and random layer scales.

    ConvNeXt's layer scales start at 1e-6, which makes every block nearly the identity and
    would hide any error inside it; trained ones are of order one.
    """
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "gamma":
                param.copy_(torch.rand(param.shape, generator=g) + 0.5)
    return randomize_norms(model)


def build(encoder_name: str, output_stride: int) -> tuple[nn.Module, nn.Module]:
    """The user's DeepLabV3+ at ``output_stride`` and the undilated encoder of its weights."""
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.DeepLabV3Plus(
        encoder_name=encoder_name, encoder_output_stride=output_stride, encoder_weights=None
    )
    model = randomize(model)
    reference = smp.encoders.get_encoder(encoder_name, weights=None, output_stride=32)
    # nn.Module's own loader: some smp encoders override load_state_dict without ``strict``.
    nn.Module.load_state_dict(reference, model.encoder.state_dict(), strict=True)
    return model, reference.eval()


def _levels(report: EquivalenceReport) -> list[float]:
    return [o.max_rel_error for o in report.outputs]


def compare(reference: nn.Module, encoder: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """An encoder against the undilated one on the lattice: largest error, and per level."""
    try:
        report = verify_equivalence(reference, encoder, x, check_phases=False, locate=False)
    except ValueError as exc:  # levels whose sizes are not a multiple of the original's
        return {"error": None, "detail": _first_line(exc)}
    return {"error": report.max_rel_error, "levels": _levels(report)}


def ours(model: nn.Module, reference: nn.Module, output_stride: int, x: torch.Tensor) -> dict:
    """``dense_encoder``: converted (timed), then measured like the others."""
    from dense_lightning.integrations.smp import dense_encoder

    start = time.process_time()
    try:
        dense = dense_encoder(model, output_stride).encoder.eval()
    except (NotEquivalentError, ValueError) as exc:
        return {"error": None, "refused": _first_line(exc)}
    result = {"seconds": time.process_time() - start, **compare(reference, dense, x)}
    if result["error"] is not None and result["error"] > RTOL:
        # Deep random nets amplify float32 rounding; float64 tells rounding from a difference.
        report64 = verify_in_float64(reference, dense, x)
        result["float64_error"] = report64.max_rel_error
    info = dense.dense_info
    result["regions"] = len(info.regions)
    result["proof_error"] = info.max_rel_error
    return result


def measure(encoder_name: str, output_stride: int, size: int) -> dict[str, Any]:
    """One encoder at one output stride: the baseline (smp's or timm's) and ours."""
    row: dict[str, Any] = {"encoder": encoder_name, "output_stride": output_stride}
    row["kind"] = "timm output_stride" if encoder_name.startswith("tu-") else "smp make_dilated"
    try:
        model, reference = build(encoder_name, output_stride)
    except Exception as exc:  # smp or timm cannot build it at this stride: say why
        return {**row, "skipped": _first_line(exc)}
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    row["params"] = sum(p.numel() for p in reference.parameters())
    row["baseline"] = compare(reference, model.encoder, x)
    row["ours"] = ours(model, reference, output_stride, x)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--encoders", nargs="+", default=None, help="these encoders instead")
    p.add_argument("--strides", nargs="+", type=int, default=list(STRIDES))
    p.add_argument("--size", type=int, default=224, help="input side (a multiple of 32)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    device = C.prepare(args)
    if args.quick:
        args.encoders = args.encoders or list(QUICK_ENCODERS)
        args.strides, args.size = [8], 64
    encoders = args.encoders or list(ENCODERS)
    record = C.machine(device, args)
    record["smp"] = _version("segmentation_models_pytorch")
    settings = {"encoders": encoders, "strides": args.strides, "size": args.size}
    rows: list[dict[str, Any]] = []
    start, cpu_start = time.perf_counter(), time.process_time()
    payload: dict[str, Any] = {}
    for name in encoders:
        for os_ in args.strides:
            rows.append(measure(name, os_, args.size))
            print(_line(rows[-1]), flush=True)
            record.update(wall_seconds=time.perf_counter() - start,
                          cpu_seconds=time.process_time() - cpu_start)  # fmt: skip
            payload = {"benchmark": "smp", "machine": record, "settings": settings,
                       "rows": rows, "complete": False}  # fmt: skip
            C.write(args.out, "smp", payload, markdown(payload))
    payload["complete"] = True
    C.write(args.out, "smp", payload, markdown(payload))
    return payload


def _version(package: str) -> str | None:
    try:
        return __import__(package).__version__
    except ImportError:
        return None


def _line(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return f"{row['encoder']} OS {row['output_stride']}: skipped ({row['skipped']})"
    base, mine = row["baseline"].get("error"), row["ours"].get("error")
    return f"{row['encoder']} OS {row['output_stride']}: {row['kind']} {base}, ours {mine}"


if __name__ == "__main__":
    main()
