"""Regenerate the results section of ``benchmarks/README.md`` from ``benchmarks/results/*.json``.

The README holds no number typed by hand: between its two result markers it carries what this
script derives from the JSON files the benchmarks wrote (headline numbers, verdicts, the
machine, links to the full generated tables). ``--check`` exits with status 1 when the README
is out of date, which the tests use.

    python -m benchmarks.readme [--check] [--readme PATH] [--results DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS, atomic_text
from benchmarks._coverage_report import counts

README = Path(__file__).resolve().parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _load(results: Path, stem: str) -> dict[str, Any] | None:
    path = results / f"{stem}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _when(payload: dict[str, Any]) -> str:
    runs = payload.get("runs") if payload.get("benchmark") == "speed" else None
    m, last = payload["machine"], (runs or [payload["machine"]])[-1]
    hw = m.get("gpu") or f"{m['cpu']}, {m['cpu_count']} cores"
    dates = sorted({m["date"][:10], last["date"][:10]})
    torches = sorted({m["torch"], last["torch"]})
    return f"{' and '.join(dates)}, {hw}, torch {' and '.join(torches)}"


def coverage_section(payload: dict[str, Any], link: str) -> list[str]:
    """Headline counts of the coverage sweep, per family and over every model swept."""
    rows = [r for r in payload["rows"] if "results" in r]
    firsts = [r for r in rows if r.get("rank", 0) == 0]
    lines = [f"**Coverage** ([{link}.md](results/{link}.md); {_when(payload)}"
             + ("" if payload.get("complete") else "; **incomplete run**") + "):", ""]  # fmt: skip
    for label, subset in (("one model per timm module", firsts), ("every model swept", rows)):
        for os_ in ("8", "16"):
            c = counts(subset, os_)
            runnable = sum(v for k, v in c.items() if k != "n/a")
            lines.append(
                f"- {label}, output stride {os_}: **{c['exact']} of {runnable}** runnable exact, "
                f"{c['refused']} refused, {c['crashed']} crashed, {c['wrong']} wrong"
            )
    return [*lines, ""]


def speed_section(payload: dict[str, Any], link: str, title: str) -> list[str]:
    """Targets met by the speed benchmark."""
    rows = [r for r in payload["rows"] if "refused" not in r]
    refused = sorted({r["model"] for r in payload["rows"] if "refused" in r})
    eff = [r["derived"]["stitch_efficiency"] for r in rows]
    over = [r["derived"]["dense_auto_overhead"] for r in rows]
    exp = [r["derived"]["exported_over_original_time"] for r in rows]
    shuffle = [r["derived"]["regions_over_no_regions_time"] - 1 for r in rows if r.get("regions")]
    lines = [
        f"**{title}** ([{link}.md](results/{link}.md); {_when(payload)}):",
        "",
        f"- dense vs shift-and-stitch, efficiency >= 0.8 of the MAC ratio: met "
        f"{sum(e >= 0.8 for e in eff)}/{len(eff)} (range {min(eff):.2f}-{max(eff):.2f})",
        f"- dense time <= 1.15 x original time x MAC ratio: met "
        f"{sum(o <= 1.15 for o in over)}/{len(over)} (range {min(over):.2f}-{max(over):.2f})",
        f"- exported / original time: mean {sum(exp) / len(exp):.3f} "
        f"(range {min(exp):.3f}-{max(exp):.3f})",
    ]
    if shuffle:
        lines.append(
            f"- phase regions (SE and other position-mixing modules run per phase): "
            f"exactness adds {100 * min(shuffle):+.0f}% to {100 * max(shuffle):+.0f}% to the "
            "time of the dense model without them"
        )
    if refused:
        lines.append(f"- not convertible exactly with this core: {', '.join(refused)}")
    return [*lines, "", *peer_table(rows)]


def peer_table(rows: list[dict[str, Any]]) -> list[str]:
    """Ours / timm's dilated model per model: inference, training step, memory, errors."""
    from benchmarks._common import table
    from benchmarks._speed_report import region_cost

    body = []
    for r in rows:
        p = r.get("peer")
        cost = ""
        if r.get("regions"):
            now, split = region_cost(r)
            cost = f"{100 * now:+.0f}%" + ("" if split is None else f" ({100 * split:+.0f}%)")
        if p is None:
            body.append([r["model"], r["output_stride"], "none", "", "", "", "", "", cost])
            continue
        mem = p["peak_memory_bytes"]["ours"] / p["peak_memory_bytes"]["peer"]
        tmem = p["train_peak_memory_bytes"]["ours"] / p["train_peak_memory_bytes"]["peer"]
        err = p["lattice_max_rel_error"]
        said, calls = p.get("verdict", {}), p.get("calls")
        same = (
            ""
            if calls is None
            else ("same" if calls["inference"]["same"] and calls["train"]["same"] else "other")
        )
        body.append([
            r["model"], r["output_stride"], r.get("peer_kind", "timm"),
            _read(p["inference"], said.get("inference")), _read(p["train"], said.get("train")),
            same, f"{mem:.2f} / {tmem:.2f}", f"{err['ours']:.0e} / {err['peer']:.0e}", cost,
        ])  # fmt: skip
    if not any(r.get("peer") for r in rows):
        return []
    return [
        "Ours / the peer: timm's own dilated model (`output_stride`), or where timm refuses "
        "one, the same network dilated by hand in plain torch modules (hand); median of paired "
        "interleaved rounds with its 95% interval and verdict (tie: above 1.00 within the "
        "interval on the same aten calls); calls: whether ours makes the peer's aten calls "
        "(ops, shapes, strides, arguments), inference and training; memory for inference / "
        "training step; lattice error ours / peer; region cost: what exactness adds over the "
        "dilated model without regions (with every gate split into phases instead, in "
        "brackets):",
        "",
        table(
            [
                "model",
                "OS",
                "peer",
                "inference",
                "train step",
                "calls",
                "memory",
                "lattice error",
                "region cost",
            ],
            body,
        ),
        "",
    ]


def _read(timing: dict[str, Any], said: str | None) -> str:
    """A median ratio with its interval and verdict, where the results carry them."""
    from benchmarks._speed_report import ratio_interval

    if said is None or "ratio_ci" not in timing:
        return f"{timing['ratio']:.2f}"
    return f"{timing['ratio']:.3f} ({ratio_interval(timing)}, {said})"


def accuracy_section(payload: dict[str, Any], link: str) -> list[str]:
    """Arms' mIoU and the verdict of every claim (c-lattice's first), for one start."""
    from benchmarks._accuracy_report import CLAIMS, LABELS

    s = payload["settings"]
    start = payload.get("start", "synthetic")
    lines = [
        f"**Accuracy, segmentation, {start} start** ([{link}.md](results/{link}.md); "
        f"{_when(payload)}; {s['backbone']}, {s['image_size']} px, {s['steps']} steps, "
        f"{len(payload['runs'])} of {len(s['seeds'])} seeds"
        + ("" if payload.get("complete") else ", **incomplete run**") + "):",
        "",
    ]  # fmt: skip
    if "summary" not in payload:
        return [*lines, "- no seed finished", ""]
    arms = payload["summary"]["arms"]
    names = {a: LABELS[a].split(" ")[0].rstrip(":") for a in LABELS if a in arms}
    lines.append(
        "- mIoU: " + ", ".join(f"{n} {arms[a]['miou']['mean']:.3f}" for a, n in names.items())
    )
    if s.get("alt_lattice_weight") is not None:
        lines.append(
            f"- lattice_loss_weight: {s['lattice_weight']:g} in (b-lattice), "
            f"{s['alt_lattice_weight']:g} in (b-lattice-alt)"
        )
    for key, claim in CLAIMS.items():
        c = payload["summary"]["comparisons"].get(key)
        if c is None:
            continue
        lo, hi = c["miou"]["ci_images"]
        lines.append(
            f"- {claim}: {c['verdict']} (Δ mIoU {c['miou']['diff']:+.3f}, 95% CI "
            f"[{lo:+.3f}, {hi:+.3f}]; Δ pixel acc {c['pixel_acc']['diff']:+.3f})"
        )
    return [*lines, ""]


def centernet_section(payload: dict[str, Any], link: str) -> list[str]:
    """CenterNet arms' headline metric and the verdict of every comparison."""
    s, summary = payload["settings"], payload.get("summary")
    lines = [
        f"**Accuracy, {payload['task']}** ([{link}.md](results/{link}.md); {_when(payload)}; "
        f"{s['backbone']}, {s['image_size']} px, {len(payload['runs'])} of {len(s['seeds'])} "
        "seeds" + ("" if payload.get("complete") else ", **incomplete run**") + "):",
        "",
    ]  # fmt: skip
    if not summary:
        return [*lines, "- no seed finished", ""]
    metric = summary["metric"]
    arms = summary["arms"]
    lines.append(f"- {metric}: " + ", ".join(f"{a} {arms[a][metric]['mean']:.3f}" for a in arms))
    from benchmarks._centernet_report import CLAIMS

    for key, c in summary["comparisons"].items():
        lo, hi = c[metric]["ci_images"]
        lines.append(
            f"- {CLAIMS.get(key, key)}: {c['verdict']} (Δ {metric} {c[metric]['diff']:+.3f}, "
            f"95% CI [{lo:+.3f}, {hi:+.3f}], seeds won {c['seeds_won']}/{len(summary['seeds'])})"
        )
    return [*lines, ""]


def image_section(payload: dict[str, Any], link: str) -> list[str]:
    """Per start: the arms' metric and the verdict of every claim."""
    from benchmarks._image_report import CLAIMS, LABELS, TASKS

    s = payload["settings"]
    metric, higher, title = TASKS[payload.get("task", "classification")]
    gain = "Δ accuracy" if higher else "MAE removed"
    lines = [
        f"**Accuracy, {title}** ([{link}.md](results/{link}.md); {_when(payload)}; "
        f"output stride {s['output_stride']} (k x k = {s['k'] ** 2} phases), "
        f"{payload['finished']} of {payload['planned']} runs"
        + ("" if payload.get("complete") else ", **incomplete run**") + "):",
        "",
    ]  # fmt: skip
    for start in payload["starts"].values():
        if "summary" not in start:
            lines.append(f"- {start['title']}: no seed finished")
            continue
        arms, seeds = start["summary"]["arms"], len(start["summary"]["seeds"])
        names = ", ".join(f"{LABELS[a].split(' ')[0]} {v['mean']:.3f}" for a, v in arms.items())
        lines.append(
            f"- {start['title']} (`{start['backbone']}`, {start['image_size']} px, {seeds} "
            f"seeds), {metric}: {names}"
        )
        for key, claim in CLAIMS.items():
            c = start["summary"]["comparisons"][key]
            lo, hi = c["ci_images"]
            lines.append(
                f"  - {claim}: {c['verdict']} ({gain} {c['diff']:+.3f}, 95% CI "
                f"[{lo:+.3f}, {hi:+.3f}], seeds won {c['seeds_won']}/{seeds})"
            )
    return [*lines, ""]


def overhead_section(payload: dict[str, Any], link: str) -> list[str]:
    """Lightning overhead per configuration."""
    lines = [f"**Training overhead** ([{link}.md](results/{link}.md); {_when(payload)}):", ""]
    for name, r in payload["rows"].items():
        lines.append(
            f"- {name}: {100 * r['overhead']:+.1f}% "
            f"({100 * r['overhead_no_train_metrics']:+.1f}% without per-step training metrics)"
        )
    return [*lines, ""]


def render(results: Path) -> str:
    """The generated section, markers included."""
    parts: list[str] = [START, "", "_Generated by `python -m benchmarks.readme`; do not edit._", ""]
    sources = (
        ("coverage", coverage_section, ()),
        ("speed", speed_section, ("Speed, CPU",)),
        ("gpu_speed_b16", speed_section, ("Speed, GPU, batch 16",)),
        ("gpu_speed_b1", speed_section, ("Speed, GPU, batch 1",)),
        ("accuracy_segmentation", accuracy_section, ()),
        ("accuracy_segmentation_imagenet", accuracy_section, ()),
        ("accuracy_segmentation_gpu", accuracy_section, ()),
        ("accuracy_segmentation_imagenet_gpu", accuracy_section, ()),
        ("accuracy_detection", centernet_section, ()),
        ("accuracy_keypoints", centernet_section, ()),
        ("accuracy_image", image_section, ()),
        ("accuracy_image_regression", image_section, ()),
        ("accuracy_image_gpu", image_section, ()),
        ("accuracy_image_gpu_regression", image_section, ()),
        ("overhead", overhead_section, ()),
    )
    for stem, section, extra in sources:
        payload = _load(results, stem)
        if payload is not None:
            parts += section(payload, stem, *extra)
    return "\n".join([*parts, END])


def update(text: str, section: str) -> str:
    """``text`` with the part between the markers replaced by ``section``."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"the README needs one {START} line followed by one {END} line")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return head + section + tail


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    p.add_argument("--readme", type=Path, default=README)
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    text = args.readme.read_text()
    new = update(text, render(args.results))
    if args.check:
        if new != text:
            print(f"{args.readme} is out of date: run python -m benchmarks.readme")
            return 1
        return 0
    if new != text:
        atomic_text(args.readme, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
