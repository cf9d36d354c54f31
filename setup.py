"""fiber_det: FIBER (fusion in the backbone) as a detectron2 extension. Pure Python."""

from setuptools import find_packages, setup

setup(
    name="fiber_det",
    version="0.1.0",
    description="FIBER vision-language grounding detector and image-text model on detectron2",
    packages=find_packages(include=["fiber_det", "fiber_det.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1,<3",
        "torchvision>=0.16,<1",
        "fvcore>=0.1.5,<0.2",
        "iopath>=0.1.9,<0.2",
        "transformers>=4.57,<6",
        "tokenizers>=0.19,<1",
        "timm>=1.0,<2",
        "pycocotools>=2.0.7,<3",
        "lvis>=0.5.3,<0.6",
        "opencv-python>=4.8,<4.12",
        "numpy>=1.24,<2",
        "matplotlib>=3.7,<4",
        "pycocoevalcap>=1.2,<2",
        "safetensors>=0.4.3,<1",
        "huggingface-hub>=1.0,<3",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "ruff>=0.6,<1", "selenium>=4.20,<5"],
        "coarse": ["pyarrow>=14,<20"],
        "serve": ["gradio>=6,<7"],
        "export": ["onnx>=1.17,<2", "onnxscript>=0.5,<1", "onnxruntime>=1.20,<2"],
    },
)
