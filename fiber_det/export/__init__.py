"""ONNX export of the grounding detector (graph.py, onnx_export.py) and its onnxruntime runner
(onnx_runner.py)."""

from fiber_det.export.onnx_export import export_onnx
from fiber_det.export.onnx_runner import load_onnx_predictor

__all__ = ["export_onnx", "load_onnx_predictor"]
