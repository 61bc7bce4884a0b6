"""Tables for :mod:`benchmarks.smp`: per encoder, the baseline's error and ours, per stride."""

from __future__ import annotations

from typing import Any

from benchmarks._common import machine_line, table
from dense_lightning.equivalent.proof import FLOAT64_RTOL, RTOL

KINDS = ("smp make_dilated", "timm output_stride")


def exact(result: dict[str, Any]) -> bool:
    """Our verdict: within the float32 tolerance, or rounding only (float64 agrees)."""
    error = result.get("error")
    if error is None:
        return False
    return error <= RTOL or result.get("float64_error", float("inf")) <= FLOAT64_RTOL


def _within(error: float | None) -> bool:
    return error is not None and error <= RTOL


def _error(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    if result.get("refused"):
        return "refused"
    if result.get("error") is None:
        return f"fails ({result.get('detail', '')})".replace("|", "\\|")
    return f"{result['error']:.1e}"


def _ours(result: dict[str, Any]) -> str:
    text = _error(result)
    if result.get("error") is None:
        return text
    if "float64_error" in result:
        text += f" (float64 {result['float64_error']:.0e})"
    return f"**{text}**" if exact(result) else f"{text} **not exact**"


def _by_encoder(rows: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["encoder"], {})[row["output_stride"]] = row
    return out


def encoder_table(rows: list[dict[str, Any]], strides: list[int]) -> str:
    """One row per encoder: the baseline's error in its column, ours, conversion time."""
    body = []
    for name, per_stride in _by_encoder(rows).items():
        any_row = next(iter(per_stride.values()))
        params = f"{any_row['params'] / 1e6:.1f}" if any_row.get("params") else "?"
        cells = []
        for kind in KINDS:
            for os_ in strides:
                row = per_stride.get(os_)
                if row is None or row["kind"] != kind:
                    cells.append("-")
                elif "skipped" in row:
                    cells.append(f"cannot build ({row['skipped']})".replace("|", "\\|"))
                else:
                    cells.append(_error(row["baseline"]))
        for os_ in strides:
            row = per_stride.get(os_)
            cells.append("-" if row is None or "skipped" in row else _ours(row["ours"]))
        seconds = [r["ours"].get("seconds") for r in per_stride.values() if "ours" in r]
        timing = " / ".join(f"{s:.1f}" for s in seconds if s is not None) or "-"
        body.append([f"`{name}`", params, *cells, timing])
    heads = [f"{kind} OS {os_}" for kind in KINDS for os_ in strides]
    heads += [f"ours OS {os_}" for os_ in strides]
    return table(["encoder", "M params", *heads, "ours: conversion s"], body)


def refusals(rows: list[dict[str, Any]]) -> list[str]:
    """The reason of every refusal by ``dense_encoder``."""
    return [
        f"- `{r['encoder']}` at output stride {r['output_stride']}: {r['ours']['refused']}"
        for r in rows
        if r.get("ours", {}).get("refused")
    ]


def markdown(payload: dict[str, Any]) -> str:
    """The report: what was measured, the table, and a one-line verdict per column."""
    s, rows = payload["settings"], payload["rows"]
    strides = list(s["strides"])
    measured = [r for r in rows if "ours" in r]
    mine = [r for r in measured if exact(r["ours"])]
    wrong = {kind: [r for r in measured if r["kind"] == kind] for kind in KINDS}
    lines = [
        "# smp encoders: smp's dilation, timm's output_stride, and the exact dense encoder",
        "",
        machine_line(payload["machine"]),
        f"segmentation_models_pytorch {payload['machine'].get('smp')}; run: "
        f"{payload['machine'].get('cpu_seconds', 0) / 60:.1f} min of CPU time"
        + ("" if payload.get("complete") else " (**incomplete**)")
        + ".",
        "",
        "Command: `python -m benchmarks.smp`. Each encoder sits in "
        "`smp.DeepLabV3Plus(encoder_name, encoder_output_stride=OS, encoder_weights=None)` with "
        "random weights, random BatchNorm statistics, norm affines and layer scales, in eval "
        "mode; every feature level is compared on the lattice with "
        "the undilated encoder holding the same weights (`get_encoder(name, output_stride=32)`), "
        f"on one {s['size']}x{s['size']} input (an error of 0 is bitwise equality, which one "
        "torch thread often gives). Relative error: largest difference over the "
        "largest magnitude of the undilated features. *smp make_dilated* is smp's own dilation "
        "of its native encoders, *timm output_stride* what smp asks of timm for `tu-` encoders, "
        "*ours* `dense_lightning.integrations.smp.dense_encoder(model, OS)`; bold: exact (float32 "
        f"error at most {RTOL:g}, or float64 error at most {FLOAT64_RTOL:g} where deep random nets "
        "amplify float32 rounding).",
        "",
        f"- ours: **{len(mine)} of {len(measured)}** encoder/stride pairs exact",
    ]
    for kind, subset in wrong.items():
        off = [r for r in subset if not _within(r["baseline"].get("error"))]
        lines.append(f"- {kind}: {len(off)} of {len(subset)} differ from the undilated encoder "
                     f"by more than {RTOL:g}")  # fmt: skip
    lines += ["", encoder_table(rows, strides), ""]
    refused = refusals(rows)
    if refused:
        lines += ["Refused by `dense_encoder`, with the reason:", "", *refused, ""]
    return "\n".join(lines)
