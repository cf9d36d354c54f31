#!/usr/bin/env python
"""Generate the synthetic grounding world of the quickstart, in the real dataset formats.

Images show 3-6 coloured, textured shapes (square, circle, triangle, star, cross, hexagon), small
or large, partly overlapping, on a cluttered grey background. A category is a (colour, shape)
combination ("red square"); a few combinations are held out of train / val / test and appear
only in the `heldout` split, for zero-shot evaluation. Same seed and sizes -> identical files.

Output tree (SPLIT in train, val, test, heldout; ID = image id, unique over all splits):

    OUT/
      meta.json                       config, colours, shapes, held-out combinations, categories,
                                      per-split counts
      corpus.txt                      class names, the detection prompt and every caption, one per
                                      line (to train a byte-level BPE tokenizer on)
      images/SPLIT/ID.jpg             the image root of every format below
      annotations/
        instances_SPLIT.json          COCO detection: categories = seen combinations (train / val /
                                      test) or the held-out ones (heldout; other objects there are
                                      unannotated distractors); bbox xywh of the visible pixels,
                                      extra "attributes" {colour, shape, size, texture}
        final_flickr_separateGT_SPLIT.json
                                      MDETR grounding: one entry per (image, caption) with
                                      caption, tokens_positive_eval, sentence_id,
                                      original_img_id; one box annotation per named object with
                                      tokens_positive char spans, category_id 1
        finetune_refcoco_SPLIT.json   MDETR RefCOCO: one entry per referring expression
                                      (dataset_name "refcoco", original_id), one target box whose
                                      tokens_positive is the target's noun phrase
        dataset_coco.json             Karpathy captions of all splits (filepath = SPLIT)
        captions_SPLIT.jsonl          {"image": "images/SPLIT/ID.jpg", "caption", "image_id"}
      flickr30k_entities/             Flickr30k Entities ground truth for the Recall@k evaluator
        SPLIT.txt, Sentences/ID.txt, Annotations/ID.xml
      vqav2/                          VQAv2 (train / val / test): simple questions about the
        v2_OpenEnded_synthetic_SPLIT_questions.json   images ("what colour is the square?",
        v2_synthetic_SPLIT_annotations.json           "how many circles are there?", "is
                                      there a red star?", "what shape is the blue object?"),
                                      10 annotators' answers each, some of them wrong
      nlvr2/                          NLVR2 (train / val / test): true / false statements about
        data/SPLIT.json               image pairs (images 2i and 2i + 1 of the split), JSON lines
        images/SPLIT/SPLIT-I-0-img0.png, -img1.png

Importing fiber_det registers OUT = $DETECTRON2_DATASETS/synthetic (default
./datasets/synthetic) as synthetic_SPLIT (detection), synthetic_grounding_SPLIT,
synthetic_refcoco_SPLIT, synthetic_captions_{train,val,test} (retrieval) and, for the downstream
tasks, synthetic_{captioning,vqa,nlvr2}_{train,val,test}; another OUT can be registered
with fiber_det.quickstart.register_synthetic_world(OUT, prefix).

Usage:
    python tools/make_synthetic_dataset.py --seed 0 --train 400 --overwrite
"""

import argparse
import os
import sys

from fiber_det.quickstart import SPLITS, SyntheticConfig, generate_synthetic_dataset
from fiber_det.quickstart.vqa import KINDS as VQA_KINDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        default=os.path.join(
            os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "synthetic"
        ),
        help="output folder (default $DETECTRON2_DATASETS/synthetic, where the synthetic_* "
        "datasets are registered)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    for split in SPLITS:
        parser.add_argument(
            f"--{split}", type=int, default=defaults.split_sizes[split], help=f"{split} images"
        )
    for name in (
        "min_side",
        "max_side",
        "min_objects",
        "max_objects",
        "captions_per_image",
        "refs_per_image",
        "scene_captions_per_image",
        "vqa_questions_per_image",
        "nlvr2_statements_per_pair",
        "num_colours",
        "num_shapes",
        "num_heldout",
    ):
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, dest=name, type=int, default=getattr(defaults, name))
    parser.add_argument("--image-format", choices=("jpg", "png"), default=defaults.image_format)
    parser.add_argument(
        "--vqa-question-kinds",
        type=lambda text: tuple(text.split(",")),
        default=defaults.vqa_question_kinds,
        help=f"comma-separated VQA question kinds (default: all of {','.join(VQA_KINDS)})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a previous output")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k not in ("out", "overwrite", *SPLITS)}
    config = SyntheticConfig(split_sizes={s: getattr(args, s) for s in SPLITS}, **fields)
    try:
        return generate_synthetic_dataset(args.out, config, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as exc:
        sys.exit(f"make_synthetic_dataset: {exc}")


if __name__ == "__main__":
    main()
