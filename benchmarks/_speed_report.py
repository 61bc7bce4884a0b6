"""Tables and plot for :mod:`benchmarks.speed` (kept apart so the measuring code stays short)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks._common import machine_line, table

STITCH_TARGET, DILATION_TARGET = 0.80, 1.15
MIB = 2**20


def _ok(flag: bool) -> str:
    return "yes" if flag else "**no**"


def _choices(row: dict[str, Any]) -> str:
    seen = row["auto_choices"]
    parts = []
    for unit in ("blocks", "layers"):
        counts = seen.get(unit, {})
        if counts:
            parts.append(f"{unit}: {counts.get('phase', 0)}/{sum(counts.values())} phase")
    return ", ".join(parts) or "-"


def markdown(payload: dict[str, Any]) -> str:
    """The four tables, the machines and a verdict per target."""
    machine = payload["machine"]
    rows = [r for r in payload["rows"] if "refused" not in r]
    refused = [r for r in payload["rows"] if "refused" in r]
    t1, t2, t3 = [], [], []
    for row in rows:
        d, check = row["derived"], row["stitch_check"]
        name, os_ = row["model"], row["output_stride"]
        mem = row["peak_memory_bytes"]
        t1.append([
            name, os_, row["k"],
            *_check(check),
            f"{d['stitch_over_dense_macs']:.2f}", f"{d['stitch_over_dense_time']:.2f}",
            f"{d['stitch_efficiency']:.2f}", _ok(d["stitch_efficiency"] >= STITCH_TARGET),
        ])  # fmt: skip
        t2.append([
            name, os_, f"{d['dense_over_original_macs']:.2f}",
            f"{d['dense_dilated_over_original_time']:.2f}",
            f"{d['dense_phase_over_original_time']:.2f}",
            f"{d['dense_auto_over_original_time']:.2f}",
            f"{d['dense_auto_overhead']:.2f}", _ok(d["dense_auto_overhead"] <= DILATION_TARGET),
            _choices(row),
            " / ".join(f"{mem[k] / MIB:.1f}" for k in
                       ("original", "dense_dilated", "dense_phase", "stitch")),
        ])  # fmt: skip
        t3.append([
            name, os_, f"{d['exported_over_original_time']:.3f}",
            f"±{d['exported_spread'] * 100:.0f}%",
            f"{row['times']['original']['median'] * 1e3:.1f}",
        ])  # fmt: skip
    met1 = sum(r["derived"]["stitch_efficiency"] >= STITCH_TARGET for r in rows)
    met2 = sum(r["derived"]["dense_auto_overhead"] <= DILATION_TARGET for r in rows)
    ratios = [r["derived"]["exported_over_original_time"] for r in rows]
    lines = [
        f"# Speed benchmarks ({machine['device']})",
        "",
        *(_run_line(run) for run in payload.get("runs", [machine])),
        f"Input {machine['batch']}x3x{machine['size']}x{machine['size']}, median of "
        f"{machine['repeats']} interleaved rounds; MACs from torch.utils.flop_counter.",
        "",
        f"## 1. Dense vs shift-and-stitch (target: efficiency >= {STITCH_TARGET}; met "
        f"{met1}/{len(rows)})",
        "",
        "Efficiency = (stitch time / dense time) / (stitch MACs / dense MACs); dense = `auto`. "
        "Interior: cells whose receptive field avoids the shifted-away border, checked on a "
        "larger input.",
        "",
        table(
            [
                "model",
                "OS",
                "k",
                "interior cells",
                "max rel err",
                "MAC ratio",
                "time ratio",
                "efficiency",
                "met",
            ],
            t1,
        ),
        "",
        f"## 2. Cost of dilation (target: overhead <= {DILATION_TARGET}; met {met2}/{len(rows)})",
        "",
        "Time ratios are dense / original; overhead = (auto time ratio) / (MAC ratio). "
        "Peak memory in MiB (original / dilated / phase / stitch).",
        "",
        table(
            [
                "model",
                "OS",
                "MAC ratio",
                "dilated",
                "phase",
                "auto",
                "overhead",
                "met",
                "auto picked",
                "peak MiB",
            ],
            t2,
        ),
        "",
        "## 3. Inverse transfer keeps the speed (target: 1.00 within noise)",
        "",
        f"Exported / original time: mean {sum(ratios) / len(ratios):.3f}, "
        f"range {min(ratios):.3f}-{max(ratios):.3f}.",
        "",
        table(["model", "OS", "exported / original", "spread", "original ms"], t3),
        "",
        *_regions(rows),
        *_peer(rows, payload.get("rows", [])),
    ]
    if refused:
        lines += [
            "## Not converted",
            "",
            "These raise `NotEquivalentError` with this core; the first finding:",
            "",
            *(f"- {r['model']} at OS {r['output_stride']}: {r['refused']}" for r in refused),
        ]
    return "\n".join(lines)


def _run_line(run: dict[str, Any]) -> str:
    """The machine line of one run, with the models it measured when rows were merged."""
    models = run.get("models")
    return machine_line(run) + (f" Models: {', '.join(models)}." if models else "")


def _check(check: dict[str, Any]) -> list[str]:
    """Interior cells and error of the stitch check, or the lattice check where it applies."""
    if "note" in check:
        return [f"lattice only ({check['note']})", f"{check['lattice_max_rel_error']:.1e}"]
    return [
        f"{check['interior_cells']}/{check['cells']} @ {check['verify_size']}px",
        f"{check['interior_max_rel_error']:.1e}",
    ]


def region_cost(row: dict[str, Any]) -> tuple[float, float | None]:
    """What exactness costs over the dilated model without regions: now, and split per gate."""
    d = row["derived"]
    split = d.get("split_gates_over_no_regions_time")
    return d["regions_over_no_regions_time"] - 1, None if split is None else split - 1


def _regions(rows: list[dict[str, Any]]) -> list[str]:
    """Section 4: what running position-mixing modules per phase costs."""
    body = []
    for r in rows:
        if not r.get("regions"):
            continue
        now, split = region_cost(r)
        body.append([
            r["model"], r["output_stride"], len(r["regions"]),
            f"{r['derived']['dense_dilated_over_original_time']:.2f}",
            f"{r['times']['dense_no_regions']['median'] / r['times']['original']['median']:.2f}",
            f"{now * 100:+.1f}%", "-" if split is None else f"{split * 100:+.1f}%",
        ])  # fmt: skip
    if not body:
        return []
    return [
        "## 4. Phase regions: the cost of running position-mixing modules per phase",
        "",
        "Squeeze-excitation and other modules that mix positions run per phase to stay exact. "
        "A recognised squeeze-excitation gate (timm's SEModule, EffectiveSEModule, EcaModule, "
        "EfficientNet's SqueezeExcite) reads its per-phase statistics straight from the dense "
        "map; other modules are split into phases on entry and interleaved on exit. Time "
        "ratios are dense (dilated path) / original, with the regions and without them (the "
        "same modules on the whole dense map: fast, not equivalent). Region cost = with / "
        "without - 1; the last column is the same with every gate split and interleaved per "
        "block instead (the reshuffles the dense-map statistics replace).",
        "",
        table(
            [
                "model",
                "OS",
                "regions",
                "with regions",
                "without regions",
                "region cost",
                "split per gate",
            ],
            body,
        ),
        "",
    ]


# How each row's peer was built (the ``peer_kind`` of a row).
PEER_KINDS = {"timm": "timm", "hand": "hand"}


def _ratio(value: float, target: float = 1.0) -> str:
    return f"{value:.3f}" if value <= target else f"**{value:.3f}**"


def ratio_interval(timing: dict[str, Any]) -> str:
    """The 95% interval of the median ratio, or the range of rounds for older results."""
    low, high = timing.get("ratio_ci", (timing["ratio_min"], timing["ratio_max"]))
    return f"{low:.3f}-{high:.3f}"


def _calls(compared: dict[str, Any] | None) -> str:
    """``same`` when both make the same aten calls, else how many calls only each side makes."""
    if compared is None:
        return "-"
    if compared["same"]:
        return "same"
    top = list(compared["ops_only_ours"].items())[:3]
    ops = ", ".join(f"{op.split('.')[1]} {n}" for op, n in top)
    return f"+{compared['only_ours']} / -{compared['only_peer']} ({ops})"


def _peer(rows: list[dict[str, Any]], every: list[dict[str, Any]]) -> list[str]:
    """Sections 5 and 6: ours against the peer dilated model, eager and compiled."""
    body, compiled, none = [], [], []
    for r in rows:
        p = r.get("peer")
        if p is None:
            none.append(f"- {r['model']} at OS {r['output_stride']}: {r.get('peer_refused')}")
            continue
        mem, tmem, err = p["peak_memory_bytes"], p["train_peak_memory_bytes"], p[
            "lattice_max_rel_error"]  # fmt: skip
        inf, tr = p["inference"], p["train"]
        calls, said = p.get("calls", {}), p.get("verdict", {})
        body.append([
            r["model"], r["output_stride"], PEER_KINDS[r.get("peer_kind", "timm")],
            f"{inf['ours_median'] * 1e3:.0f} / {inf['peer_median'] * 1e3:.0f}",
            _ratio(inf["ratio"]), ratio_interval(inf), _calls(calls.get("inference")),
            said.get("inference", "-"),
            f"{tr['ours_median'] * 1e3:.0f} / {tr['peer_median'] * 1e3:.0f}",
            _ratio(tr["ratio"]), ratio_interval(tr), _calls(calls.get("train")),
            said.get("train", "-"),
            _ratio(mem["ours"] / mem["peer"]), _ratio(tmem["ours"] / tmem["peer"]),
            f"{err['ours']:.1e}", f"{err['peer']:.1e}",
        ])  # fmt: skip
        c = r.get("compiled")
        if c is not None:
            compiled.append([
                r["model"], r["output_stride"], c["graphs"], c["graph_breaks"],
                f"{c['inference']['ours_median'] * 1e3:.0f} / "
                f"{c['inference']['peer_median'] * 1e3:.0f}",
                _ratio(c["inference"]["ratio"]),
                f"{c['compile_seconds']['ours']:.0f} / {c['compile_seconds']['peer']:.0f}",
            ])  # fmt: skip
    none += [f"- {r['model']}: {r['refused']}" for r in every if "refused" in r]
    if not body and not none:
        return []
    train_batch = next((r["peer"]["train_batch"] for r in rows if r.get("peer")), "?")
    rounds = next((len(r["peer"]["inference"]["raw"]["ours"]) for r in rows if r.get("peer")), 0)
    met = sum(
        r["peer"]["inference"]["ratio"] <= 1 and r["peer"]["train"]["ratio"] <= 1 for r in rows
        if r.get("peer")
    )  # fmt: skip
    tied = sum(
        set(r["peer"].get("verdict", {}).values()) <= {"met", "tie"}
        and "tie" in r["peer"].get("verdict", {}).values() for r in rows if r.get("peer")
    )  # fmt: skip
    lines = [
        f"## 5. Ours against the peer dilated model (target: <= 1.00; met {met}/{len(body)}, "
        f"tied on the same aten calls {tied}/{len(body)})",
        "",
        "The peer is `timm.create_model(name, output_stride=OS)` with the same weights (timm); "
        "where timm refuses an output stride, the same network dilated by hand in plain torch "
        "modules by timm's ResNet rule, even kernels padded after the input "
        "(`benchmarks/_hand_dilated.py`; hand). Ours is "
        "`to_dense(model, OS)` as it returns (dilated path). Ratios are ours / peer: the median "
        f"of the per-round ratios of {rounds} interleaved rounds with its 95% bootstrap "
        "interval (rounds resampled), CPU time of this process. Calls: whether ours makes "
        "the same aten calls as the peer (the same ops on tensors of the same shapes and "
        "strides, the same padding and dilation: `benchmarks/_ops.py`), else how many calls "
        "only ours and only the peer make, and the ops of ours. Verdict: met (ratio <= 1.00), "
        "tie (above 1.00, the interval reaches 1.00 and the calls are the same: the gap is "
        "this machine's noise, not work), noise (the same, different calls), above (the whole "
        "interval above 1.00). "
        f"Training step: train mode, batch {train_batch}, forward, a squared-mean loss, "
        "backward. Peak memory: live tensors of one call (inference) and of one "
        "training step (storage the call allocates). Lattice error: the output every k cells "
        "against the original network's, in float64 (timm's is wrong where something mixes "
        "positions). Every model has random norm statistics and affines, so no residual branch "
        "is zero at initialisation. Bold: above 1.00.",
        "",
        table(
            [
                "model",
                "OS",
                "peer",
                "inference ms ours / peer",
                "ratio",
                "95% CI",
                "calls",
                "verdict",
                "train ms ours / peer",
                "ratio",
                "95% CI",
                "calls",
                "verdict",
                "memory",
                "train memory",
                "lattice err ours",
                "lattice err peer",
            ],
            body,
        ),
        "",
    ]
    if none:
        lines += ["No peer for:", "", *none, ""]
    if compiled:
        lines += [
            "## 6. Compiled (`torch.compile`, default backend)",
            "",
            "Graphs and graph breaks of ours from `torch._dynamo.explain`; inference as in "
            "section 5 after compiling both (first call, compile time, left out).",
            "",
            table(
                ["model", "OS", "graphs", "breaks", "ms ours / peer", "ratio", "compile s"],
                compiled,
            ),
            "",
        ]
    return lines


def plot(payload: dict[str, Any], path: Path) -> None:
    """Three panels: stitch speed-up vs MAC ratio, dense cost vs MAC ratio, export ratio."""
    rows = [r for r in payload["rows"] if "refused" not in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    names = sorted({r["model"] for r in rows})
    style = {n: ("osD^vP*Xh<>"[i % 11], f"C{i % 10}") for i, n in enumerate(names)}
    for row in rows:
        d, (marker, color) = row["derived"], style[row["model"]]
        points = (
            (axes[0], d["stitch_over_dense_macs"], d["stitch_over_dense_time"]),
            (axes[1], d["dense_over_original_macs"], d["dense_auto_over_original_time"]),
        )
        for ax, x, y in points:
            ax.scatter(x, y, marker=marker, color=color, label=row["model"])
            ax.annotate(f"OS{row['output_stride']}", (x, y), fontsize=7)
    for ax, factor, title in (
        (axes[0], STITCH_TARGET, "1. shift-and-stitch / dense"),
        (axes[1], DILATION_TARGET, "2. dense (auto) / original"),
    ):
        top = max(max(ax.get_xlim()), max(ax.get_ylim()))
        ax.plot([1, top], [1, top], "k-", lw=0.8, label="time ratio = MAC ratio")
        ax.plot([1, top], [factor, factor * top], "k--", lw=0.8, label=f"target ({factor}x)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("MAC ratio")
        ax.set_ylabel("time ratio")
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    axes[0].legend(unique.values(), unique.keys(), fontsize=7)
    ratios = [r["derived"]["exported_over_original_time"] for r in rows]
    ticks = [f"{r['model']}\nOS{r['output_stride']}" for r in rows]
    axes[2].bar(range(len(rows)), ratios)
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[2].set_xticks(range(len(rows)), ticks, fontsize=6, rotation=90)
    axes[2].set_ylim(0.8, 1.2)
    axes[2].set_title("3. exported / original time")
    fig.suptitle(f"{payload['machine'].get('gpu') or payload['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
