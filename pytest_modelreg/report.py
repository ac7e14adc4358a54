"""The end-of-session table, written to any object with ``write_line(text, **markup)``
(pytest's terminal reporter, or a plain writer in tests)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from .verdict import FAILING, PASS, RECORDED

COLUMNS = ("test", "task", "metric", "baseline", "current", "delta", "95% CI", "p", "verdict")
_MAX_TEST_WIDTH = 60


class LineWriter(Protocol):
    def write_line(self, line: str, **markup: bool) -> None: ...


def _cell(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if column == "test":
        text = str(value or "")
        return text if len(text) <= _MAX_TEST_WIDTH else "..." + text[-_MAX_TEST_WIDTH + 3:]
    if column == "delta":
        return "-" if value is None else f"{value:+.4f}"
    if column == "95% CI":
        low, high = row.get("ci_low"), row.get("ci_high")
        return "-" if low is None or high is None else f"[{low:+.3f}, {high:+.3f}]"
    if column == "p":
        p_value = row.get("p_value")
        return "-" if p_value is None else f"{p_value:.2g}"
    if column in ("baseline", "current"):
        return "-" if value is None else f"{value:.4f}"
    return str(value)


def table_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cells = [[_cell(row, c) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    numeric = {"baseline", "current", "delta", "p"}

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if c in numeric else v.ljust(w)
                         for c, v, w in zip(COLUMNS, values, widths, strict=True)).rstrip()

    return [line(COLUMNS), line(["-" * w for w in widths]), *(line(r) for r in cells)]


def write_table(writer: LineWriter, rows: Sequence[Mapping[str, Any]]) -> None:
    header, rule, *body = table_lines(rows)
    writer.write_line(header, bold=True)
    writer.write_line(rule)
    for text, row in zip(body, rows, strict=True):
        verdict = row.get("verdict")
        markup = {"red": True} if verdict in FAILING else {"green": True} if verdict in (
            PASS, RECORDED) else {"yellow": True}
        writer.write_line(text, **markup)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The same table as the terminal's, as GitHub-flavoured markdown."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [_cell(row, c).replace("|", "\\|") for c in COLUMNS]
        if row.get("verdict") in FAILING:
            cells[-1] = f"**{cells[-1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(rows: Sequence[Mapping[str, Any]], *, title: str = "pytest-modelreg",
                    notes: Sequence[str] = (), flipped_shown: int = 10) -> str:
    """The session as markdown: the table, the notes (correction, power, cache, links) and, per
    regression, the first docs that got worse (the JSON report and MLflow hold all of them)."""
    failed = sum(1 for r in rows if r.get("verdict") in FAILING)
    summary = f"{len(rows)} metric checks, {failed} failing" if rows else "no metric checks"
    parts = [f"## {title}\n\n{summary}\n", markdown_table(rows) if rows else ""]
    parts += [f"- {note}" for note in notes]
    for row in rows:
        worse = row.get("flipped") or []
        if not worse:
            continue
        lines = [f"\n<details><summary>{row['task']}/{row['metric']}: {len(worse)} docs got "
                 f"worse ({row['test']})</summary>\n", "| doc | prompt | before | after |",
                 "|---|---|---:|---:|"]
        for item in worse[:flipped_shown]:
            prompt = str(item.get("prompt", "")).replace("|", "\\|")
            lines.append(f"| {item['doc_id']} | {prompt} | {item['before']:g} | "
                         f"{item['after']:g} |")
        if len(worse) > flipped_shown:
            lines.append(f"\n... and {len(worse) - flipped_shown} more in the JSON report")
        parts.append("\n".join(lines) + "\n\n</details>")
    return "\n".join(parts) + "\n"


def junit_properties(properties: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The plugin's report properties as flat name/value pairs a JUnit XML reader can use:
    ``modelreg.<task>.<metric>.<field>``; other plugins' properties are kept as they are."""
    from .properties import (
        EVALUATION_PROPERTY,
        FLAT_TEST_PROPERTY,
        TEST_PROPERTY,
        VERDICT_PROPERTY,
    )

    flat: list[tuple[str, Any]] = []
    for name, value in properties:
        if name == VERDICT_PROPERTY:
            prefix = f"modelreg.{value['task']}.{value['metric']}"
            flat += [(f"{prefix}.{field}", value[field]) for field in _JUNIT_VERDICT_FIELDS
                     if value.get(field) is not None]
        elif name == EVALUATION_PROPERTY:
            prefix = f"modelreg.{value['task']}"
            flat += [(f"{prefix}.{field}", value[field]) for field in _JUNIT_EVALUATION_FIELDS
                     if value.get(field) not in (None, "")]
        elif name == TEST_PROPERTY:
            flat.append((FLAT_TEST_PROPERTY, True))  # how the controller knows a modelreg test
        else:
            flat.append((name, value))
    return flat


_JUNIT_VERDICT_FIELDS = ("verdict", "current", "baseline", "delta", "ci_low", "ci_high", "p_value",
                         "n", "mde", "method", "stderr")
_JUNIT_EVALUATION_FIELDS = ("model", "model_sha256", "n_samples", "seconds", "cached")


def holm_summary(rows: Sequence[Mapping[str, Any]], settings: Any) -> str | None:
    """One line on the multiple-comparison correction, with the full Holm step-down."""
    tested = [r for r in rows if r.get("p_value") is not None]
    if not tested:
        return None
    if settings.correction == "none":
        return f"{len(tested)} baseline checks at alpha={settings.alpha:g} each (no correction)"
    from .stats import holm

    rejected = holm([r["p_value"] for r in tested], settings.alpha)
    decided = sum(1 for r in tested if r.get("verdict") == "regressed")
    line = (f"Holm-Bonferroni over {len(tested)} baseline checks at alpha={settings.alpha:g}: "
            f"{sum(rejected)} regression(s)")
    if sum(rejected) > decided:
        extra = [f"{r['task']}/{r['metric']}" for r, hit in zip(tested, rejected, strict=True)
                 if hit and r.get("verdict") != "regressed"]
        line += (f"; the full step-down also rejects {', '.join(extra)}, which the per-test "
                 f"level (alpha/m) did not fail")
    return line


def underpowered_summary(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """Checks whose evaluation is too small to detect a drop the size of their tolerance."""
    weak = [r for r in rows if r.get("underpowered")]
    if not weak:
        return None
    shown = ", ".join(
        f"{r['task']}/{r['metric']} (MDE {r['mde']:.3f}"
        + (f", ~{r['docs_needed']:,} docs needed)" if r.get("docs_needed") else ")")
        for r in weak[:5])
    more = f" and {len(weak) - 5} more" if len(weak) > 5 else ""
    return (f"WARNING: {len(weak)} baseline check(s) underpowered - their evaluations are too "
            f"small to detect a drop the size of their tolerance (1 point without one): "
            f"{shown}{more}")


def evaluation_line(value: Mapping[str, Any]) -> str:
    """One line per finished evaluation, for logs where no progress bar shows."""
    what = f"{value['task']} on {value['model']}"
    if value.get("cached"):
        earlier = value.get("cached_from") or {}
        when = f" on {earlier['recorded_at']}" if earlier.get("recorded_at") else ""
        took = f"{earlier.get('seconds', 0):.1f} s" if earlier.get("seconds") else "earlier"
        return (f"cached {what} ({value['n_samples']} docs; evaluated in {took}{when}; "
                "--modelreg-no-cache to re-run)")
    evaluator = (value.get("settings") or {}).get("evaluator")
    if evaluator:  # a user's function: no model for the plugin to load
        return (f"evaluated {value['task']} by {evaluator} ({value['n_samples']} docs in "
                f"{value['seconds']:.1f} s)")
    load = value["model_load_seconds"]
    model = f"model loaded in {load:.1f} s" if load else "model reused"
    return f"evaluated {what} ({value['n_samples']} docs in {value['seconds']:.1f} s; {model})"


def cache_summary(evaluations: Sequence[Mapping[str, Any]], folder: object) -> str | None:
    """How many evaluations the result cache served, and where it lives."""
    hits = [v for v in evaluations if v.get("cached")]
    if not evaluations or not hits:
        return None
    saved = sum((v.get("cached_from") or {}).get("seconds", 0.0) for v in hits)
    return (f"{len(hits)} of {len(evaluations)} evaluation(s) served from the result cache in "
            f"{folder} (about {saved:.0f} s of evaluation saved; --modelreg-no-cache re-runs "
            "them, --cache-clear empties it)")


def finite_json(value: Any) -> Any:
    """``value`` with NaN and infinities as None: strict JSON readers reject bare NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
