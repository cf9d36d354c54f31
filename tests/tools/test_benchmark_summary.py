"""The closing table of `tools/benchmark.py targets`: figures against issue 17's goals."""

from tests.tools.tool_module import load_tool


def test_each_target_met_missed_or_without_figure():
    rows = [
        {"target": "head >= 0.60 of matmul", "fraction_of_onednn_matmul": 0.6},
        {
            "target": "vocabulary",
            "lvis_vs_coco": 16.0,
            "lvis_from_parts_vs_coco": 15.0,
            "lvis_vs_coco_in_gflop": 15.03,
            "fast_lvis_vs_coco": 2.0,
        },
        {
            "target": "trunk",
            "size": "800x1344",
            "real_tokens": 200,
            "speedup_vs_official": 1.5,
            "fiber_det": {},
            "peak_rss_vs_official": 1.01,
        },
        {
            "target": "trunk",
            "size": "384x384",
            "real_tokens": 256,
            "fiber_det": {"fraction_of_onednn_matmul": 0.84, "fraction_of_matmul": 0.85},
        },
        {"target": "gpu images/s", "skipped": "no CUDA device"},
    ]
    assert load_tool("benchmark_summary").summary_table(rows) == [
        "| target | figure | goal | status |",
        "| --- | --- | --- | --- |",
        "| head: GFLOP/s / oneDNN's matmul rate | 0.6 | >= 0.6 | met |",
        "| head: GFLOP/s / torch's `@` rate | - | >= 0.6 | no figure |",
        "| LVIS-1203 / COCO-80, one call | 16.0 | <= 15 | MISSED |",
        "| LVIS-1203 / COCO-80, from parts | 15.0 | <= 15 | met |",
        "| LVIS-1203 / COCO-80, in GFLOP | 15.03 | <= 15 | MISSED |",
        "| fast LVIS-1203 / fused COCO-80 | 2.0 | <= 2 | met |",
        "| trunk 800x1344, 200 tokens: speed / original | 1.5 | >= 1.5 | met |",
        "| trunk 800x1344, 200 tokens: speed / original with kept memory | - | >= 1.5 "
        "| no figure |",
        "| trunk 800x1344, 200 tokens: peak RSS / original | 1.01 | <= 1 | MISSED |",
        "| trunk 384x384, 256 tokens: GFLOP/s / oneDNN's rate | 0.84 | >= 0.85 | MISSED |",
        "| trunk 384x384, 256 tokens: GFLOP/s / torch's `@` rate | 0.85 | >= 0.85 | met |",
        "| trunk 384x384, 256 tokens: peak RSS / original | - | <= 1 | no figure |",
    ]
