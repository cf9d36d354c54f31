"""The closing table of `tools/benchmark.py targets`: each of issue 17's targets, the figure the
run measured for it, the goal and whether it was met (from the JSON rows the run printed)."""

import operator

GOALS = {">=": operator.ge, "<=": operator.le}


def _head_checks(row: dict) -> list[tuple]:
    return [
        ("head: GFLOP/s / oneDNN's matmul rate", row.get("fraction_of_onednn_matmul"), ">=", 0.6),
        ("head: GFLOP/s / torch's `@` rate", row.get("fraction_of_matmul"), ">=", 0.6),
    ]


def _vocabulary_checks(row: dict) -> list[tuple]:
    return [
        ("LVIS-1203 / COCO-80, one call", row.get("lvis_vs_coco"), "<=", 15),
        ("LVIS-1203 / COCO-80, from parts", row.get("lvis_from_parts_vs_coco"), "<=", 15),
        ("LVIS-1203 / COCO-80, in GFLOP", row.get("lvis_vs_coco_in_gflop"), "<=", 15),
        ("fast LVIS-1203 / fused COCO-80", row.get("fast_lvis_vs_coco"), "<=", 2),
    ]


def _trunk_checks(row: dict) -> list[tuple]:
    name = f"trunk {row['size']}, {row['real_tokens']} tokens"
    ours = row.get("fiber_det", {})
    checks = []
    if row["real_tokens"] == 40 or (row["real_tokens"] == 200 and row["size"] == "800x1344"):
        checks += [
            (f"{name}: speed / original", row.get("speedup_vs_official"), ">=", 1.5),
            (
                f"{name}: speed / original with kept memory",
                row.get("speedup_vs_official_with_kept_memory"),
                ">=",
                1.5,
            ),
        ]
    if row["real_tokens"] == 256:
        checks += [
            (f"{name}: GFLOP/s / oneDNN's rate", ours.get("fraction_of_onednn_matmul"), ">=", 0.85),
            (f"{name}: GFLOP/s / torch's `@` rate", ours.get("fraction_of_matmul"), ">=", 0.85),
        ]
    return checks + [(f"{name}: peak RSS / original", row.get("peak_rss_vs_official"), "<=", 1)]


CHECKS = {"head": _head_checks, "vocabulary": _vocabulary_checks, "trunk": _trunk_checks}


def summary_table(rows: list[dict]) -> list[str]:
    """Markdown lines: target | figure | goal | status ("met", "MISSED", or "no figure" when the
    run has none, e.g. without --fiber-src)."""
    lines = ["| target | figure | goal | status |", "| --- | --- | --- | --- |"]
    for row in rows:
        kind = row["target"].split()[0]
        for name, figure, goal, bound in CHECKS.get(kind, lambda _: [])(row):
            if figure is None:
                figure, status = "-", "no figure"
            else:
                status = "met" if GOALS[goal](figure, bound) else "MISSED"
            lines.append(f"| {name} | {figure} | {goal} {bound} | {status} |")
    return lines
