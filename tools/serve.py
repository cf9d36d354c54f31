#!/usr/bin/env python
"""A web demo (Gradio) of a saved fiber_det model: upload an image, type class names or a
caption, pick a score threshold, see the boxes drawn with their phrases and the JSON.

    python tools/serve.py --model output/quickstart/model [--host 127.0.0.1] [--port 7860]
                          [--device cpu] [--max-pixels 25000000]

--model takes what tools/demo.py --model takes: a saved-model directory, a Hugging Face Hub
repository holding one, an official FIBER-layout checkpoint, or desco-fiber-base. It runs on
the CPU unless --device says otherwise. The prompt is a class list ("red square. blue
circle.": one label per class) or a sentence, grounded as a whole or phrase by phrase with
phrases separated by ";" (each must occur in the sentence). Bad input (no image, an empty
prompt, a caption over the token limit, an image over --max-pixels or not an image) gets a
message in the page; the server keeps serving. Stop it with Ctrl-C.
"""

import argparse
import importlib.util
import logging
import sys
from pathlib import Path

import cv2
import gradio as gr
import numpy as np
from PIL import Image, UnidentifiedImageError

from fiber_det.predictor import GroundingPredictor
from fiber_det.runtime import keep_freed_memory

TOOLS = Path(__file__).resolve().parent
logger = logging.getLogger("fiber_det.serve")
LISTED = 10  # detections named in the message (all are in the JSON)
PROMPT_HELP = (
    'Class names separated by periods ("red square. blue circle.": one label each), or a '
    "sentence: grounded as a whole, or phrase by phrase when you list its phrases below."
)


def load_demo_tool():
    """tools/demo.py (prompt parsing, detections JSON, drawing with detectron2's Visualizer)."""
    spec = importlib.util.spec_from_file_location("fiber_demo", TOOLS / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BadRequest(ValueError):
    """Input the page reports to its user (nothing went wrong on the server)."""


class DetectionService:
    """The page's one action: (image file, prompt, phrases, threshold) -> (message, picture,
    JSON). Never raises: every failure becomes a message for the page."""

    def __init__(self, predictor: GroundingPredictor, max_pixels: int = 25_000_000):
        self.predictor = predictor
        self.max_pixels = max_pixels
        self.demo = load_demo_tool()

    def __call__(self, image_path: str | None, prompt: str, phrases: str, threshold: float):
        try:
            image = self.read_image(image_path)
            names, caption, spans = self.parse(prompt, phrases)
            result = self.predictor(image, names=names, caption=caption, phrase_spans=spans)
        except (ValueError, TypeError) as error:  # BadRequest and the predictor's checks
            return f"**Error:** {error}", None, None
        except Exception as error:  # noqa: BLE001  (the page must keep working)
            logger.exception("detection failed")
            return (
                f"**Error:** the model failed on this request ({type(error).__name__})",
                None,
                None,
            )
        found = self.demo.detections(result, threshold)
        labels = self.predictor.prompts(names, caption, spans)[1]
        listed = ", ".join(f"{d['label']} {d['score']:.2f}" for d in found[:LISTED])
        listed += f", ... ({len(found) - LISTED} more in the JSON)" if len(found) > LISTED else ""
        message = (
            f"**{len(found)} detection(s)** with score >= {threshold:.2f} "
            f"({len(result.instances)} before the threshold){': ' if found else ''}{listed}"
        )
        document = {"prompt": prompt, "labels": labels, "score_thresh": threshold}
        return message, self.demo.draw(image, found), document | {"detections": found}

    def read_image(self, path: str | None) -> np.ndarray:
        """The uploaded file as a BGR uint8 array, its size checked before it is decoded."""
        if not path:
            raise BadRequest("upload an image first")
        try:
            with Image.open(path) as header:
                width, height = header.size
        except (UnidentifiedImageError, OSError) as error:
            raise BadRequest("the uploaded file is not an image this server can read") from error
        if width * height > self.max_pixels:
            raise BadRequest(
                f"the image is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels); "
                f"this server takes at most {self.max_pixels / 1e6:.1f} megapixels"
            )
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise BadRequest("the uploaded file is not an image this server can read")
        return image

    def parse(self, prompt: str, phrases: str):
        """(names, caption, phrase spans) of the prompt, as tools/demo.py parses its flags."""
        if not (prompt or "").strip():
            raise BadRequest('type class names ("cat. remote control.") or a caption first')
        listed = [phrase.strip() for phrase in (phrases or "").split(";") if phrase.strip()]
        try:
            names, caption, spans = self.demo.parse_prompt(prompt, listed or None)
        except ValueError as error:
            text = str(error).replace("--phrases", "phrase").replace("--prompt", "the prompt")
            raise BadRequest(text) from error
        if caption is not None:
            limit = self.predictor.cfg.INPUT.TEXT.MAX_QUERY_LEN
            length = len(self.predictor.tokenizer(caption)["input_ids"])
            if length > limit:
                raise BadRequest(
                    f"the caption is {length} tokens long and the model reads at most {limit} "
                    "(INPUT.TEXT.MAX_QUERY_LEN): shorten it, or give class names separated by "
                    "periods (a long class list is split over several prompts)"
                )
        return names, caption, spans


def build_app(service: DetectionService, title: str) -> gr.Blocks:
    """The page: inputs on the left, the drawn detections, a message and the JSON on the right."""
    with gr.Blocks(title="fiber_det", analytics_enabled=False) as app:
        gr.Markdown(f"# fiber_det grounding demo\nModel: `{title}`. {PROMPT_HELP}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="filepath",
                    image_mode=None,
                    sources=["upload"],
                    label="Image",
                    elem_id="input-image",
                )
                prompt = gr.Textbox(
                    label="Prompt", placeholder="red square. blue circle.", elem_id="prompt"
                )
                phrases = gr.Textbox(
                    label="Phrases of a sentence prompt (optional, separated by ;)",
                    placeholder="red square; blue circle",
                )
                threshold = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="Score threshold")
                run = gr.Button("Detect", variant="primary", elem_id="detect")
            with gr.Column():
                message = gr.Markdown(elem_id="message")
                picture = gr.Image(
                    label="Detections", format="png", interactive=False, elem_id="result-image"
                )
                document = gr.JSON(label="JSON", elem_id="detections-json")
        inputs = [image, prompt, phrases, threshold]
        run.click(service, inputs, [message, picture, document], api_name="detect")
        prompt.submit(service, inputs, [message, picture, document])
    return app


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved-model dir, hub repo id or alias")
    parser.add_argument("--filename", help="with a hub repo id: an official checkpoint in it")
    parser.add_argument("--tokenizer", help="tokenizer dir for official checkpoints")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-pixels", type=int, default=25_000_000, help="largest image")
    parser.add_argument("--max-file-size", default="50mb", help="largest upload")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO)
    keep_freed_memory()
    args = parse_args(argv)
    try:
        predictor = GroundingPredictor.from_pretrained(
            args.model, args.filename, tokenizer=args.tokenizer, device=args.device
        )
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"serve: {error}")
    # Gradio opens uploads with PIL before the handler runs; the size is checked there instead
    # (--max-pixels), so PIL's own limit would only turn a clear message into a generic error
    Image.MAX_IMAGE_PIXELS = None
    service = DetectionService(predictor, args.max_pixels)
    app = build_app(service, args.model)
    app.queue(max_size=32).launch(
        server_name=args.host, server_port=args.port, max_file_size=args.max_file_size
    )


if __name__ == "__main__":
    main()
