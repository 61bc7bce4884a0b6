"""Tables for :mod:`benchmarks.coverage`: counts per verdict and family, then every model."""

from __future__ import annotations

from collections import Counter
from typing import Any

from benchmarks._common import machine_line, table

VERDICTS = ("exact", "refused", "crashed", "wrong", "n/a")


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    verdict = result["verdict"]
    return f"**{verdict}**" if verdict in ("crashed", "wrong") else verdict


def _detail(row: dict[str, Any], strides: list[str]) -> str:
    """The first reason a model is not exact (the finer stride's, usually the longer list)."""
    for os_ in reversed(strides):
        result = row["results"].get(os_, {})
        if result.get("verdict") in ("refused", "crashed", "wrong"):
            text = result.get("detail", "")
            if result.get("where"):
                text += f" ({result['stage']}, {result['where']})"
            if result.get("findings", 0) > 1:
                text += f" (+{result['findings'] - 1} more)"
            return text.replace("|", "\\|").replace("\n", " ")
    return ""


def counts(rows: list[dict[str, Any]], os_: str) -> Counter:
    """Verdict counts at one output stride over the rows that ran."""
    return Counter(r["results"][os_]["verdict"] for r in rows if os_ in r.get("results", {}))


def headline(rows: list[dict[str, Any]], os_: str) -> str:
    """The sentence "X of N runnable exact", N counting every verdict but n/a."""
    c = counts(rows, os_)
    runnable = sum(v for k, v in c.items() if k != "n/a")
    return f"{c['exact']} of {runnable} runnable exact at output stride {os_}"


def summary_table(rows: list[dict[str, Any]], strides: list[str]) -> str:
    """Counts per verdict, one row per output stride."""
    body = []
    for os_ in strides:
        c = counts(rows, os_)
        body.append([os_, sum(c.values()), *(c[v] for v in VERDICTS)])
    return table(["output stride", "models", *VERDICTS], body)


def family_table(rows: list[dict[str, Any]], strides: list[str]) -> str:
    """Per timm module: models run, then exact / refused / crashed / wrong per stride."""
    body = []
    for module in sorted({r["module"] for r in rows}):
        mine = [r for r in rows if r["module"] == module and "results" in r]
        if not mine:
            continue
        cells = []
        for os_ in strides:
            c = counts(mine, os_)
            cells.append(" / ".join(str(c[v]) for v in VERDICTS[:4]))
        body.append([module, len(mine), *cells])
    heads = [f"OS {os_}: exact / refused / crashed / wrong" for os_ in strides]
    return table(["family (timm module)", "models", *heads], body)


def model_table(rows: list[dict[str, Any]], strides: list[str]) -> str:
    """Every model that ran: verdict per stride and the first reason it is not exact."""
    body = []
    for r in sorted((r for r in rows if "results" in r), key=lambda r: (r["module"], r["name"])):
        params = f"{r['params'] / 1e6:.1f}" if r.get("params") else "?"
        size = r["input"][1] if r.get("fixed_input_size") else "any"
        body.append([
            f"`{r['name']}`", r["module"], params, r["mode"], size, r["stride"],
            *(_cell(r["results"].get(os_)) for os_ in strides), _detail(r, strides),
        ])  # fmt: skip
    return table(
        ["model", "family", "M params", "mode", "fixed size", "stride",
         *(f"OS {os_}" for os_ in strides), "first reason (when not exact)"], body,
    )  # fmt: skip


def markdown(payload: dict[str, Any]) -> str:
    """The coverage report: headline, counts, families, models, skipped."""
    s, rows = payload["settings"], payload["rows"]
    strides = [str(v) for v in s["strides"]]
    ran = [r for r in rows if "results" in r]
    firsts = [r for r in ran if r.get("rank", 0) == 0]
    skipped = [r for r in rows if "skipped" in r] + payload.get("size_skipped", [])
    finer = strides[-1]
    lines = [
        "# Coverage: which timm models convert exactly",
        "",
        machine_line(payload["machine"]),
        f"Run: {payload['machine'].get('cpu_seconds', 0) / 60:.1f} min of CPU time"
        + (
            ""
            if payload.get("complete")
            else " (**incomplete**: the sweep is still running or was stopped)"
        )
        + ".",
        "",
        "Command: `python -m benchmarks.coverage` "
        f"(smallest {s['per_family']} model(s) per timm module, parameter budget "
        f"{s['max_params'] / 1e6:.0f}M, random weights, random BatchNorm statistics, "
        f"`to_dense(strict=True)`, verified with `verify_equivalence` on an input of side "
        f"{s['other']} (fixed-size models: their own size), probe side {s['probe']}).",
        "",
        "Verdicts: **exact** converts and verifies (in float64 where float32 rounding, "
        "amplified by a deep random net, exceeds the tolerance, as the strict proof decides); "
        "**refused** raises `NotEquivalentError` or "
        "`ValueError` naming the reason; **crashed** raises anything else (a bug); **wrong** "
        "converts but the verifier disagrees (a bug); **n/a** the model's stride is not above "
        "the output stride.",
        "",
        "## One model per family (the smallest of each timm module)",
        "",
        *(f"- {headline(firsts, os_)} ({len(firsts)} families ran)" for os_ in reversed(strides)),
        "",
        summary_table(firsts, strides),
        "",
    ]
    if len(ran) != len(firsts):
        lines += ["## Every model swept", "",
                  *(f"- {headline(ran, os_)}" for os_ in reversed(strides)), "",
                  summary_table(ran, strides), ""]  # fmt: skip
    reasons = Counter(
        r["results"][finer].get("detail", "").split(":")[0].split(" (")[-1].rstrip(")")
        for r in ran
        if r["results"].get(finer, {}).get("error") == "NotEquivalentError"
    )
    if reasons:
        lines += [f"Refusals at output stride {finer} by the type of the first module named: "
                  + ", ".join(f"{k} {v}" for k, v in reasons.most_common()) + ".", ""]  # fmt: skip
    lines += [
        "## Per family", "", family_table(ran, strides), "",
        "## Per model", "", model_table(ran, strides), "",
    ]  # fmt: skip
    if skipped:
        lines += ["## Skipped", "", table(["model", "family", "reason"], [
            [f"`{r['name']}`", r["module"], r["skipped"] if "skipped" in r else r["reason"]]
            for r in sorted(skipped, key=lambda r: (r["module"], r["name"]))
        ])]  # fmt: skip
    return "\n".join(lines)
