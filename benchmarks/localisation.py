"""Which layer should saliency maps come from? For each candidate layer of a run's model (every conv
block's output) and each method: the pointing game with its 95% Wilson interval against chance, and
localisation accuracy at T(IoBB) 0.1 / 0.25 / 0.5 (Wang et al. 2017), on a boxes file.

    python benchmarks/localisation.py RUN BOXES [--images DIR] [--boxes-space 1024] [--methods gradcam,...]

The demo's boxes: `cxrlab-demo/boxes.csv` (a demo run); NIH's radiologist boxes:
`../shared/data/nih-cxr14-subset/BBox_List_2017.csv --boxes-space 1024` (a Pneumonia run). Prints a
Markdown table; BENCHMARKS.md keeps the results.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

from torch import nn

from cxrlab.inference import RunModel
from cxrlab.saliency import localisation
from cxrlab.saliency.methods import default_target_layer, explainable_copy, layer_name, layer_resolution


def candidate_layers(model: nn.Module) -> list[str]:
    """Each conv block's output: the ReLUs of a seed-cnn's `features`, or a timm backbone's stages."""
    backbone = getattr(model, "backbone", None)
    if backbone is not None and getattr(backbone, "feature_info", None) is not None:
        return [f"backbone.{info['module']}" for info in backbone.feature_info]
    return [f"features.{i}" for i, m in enumerate(model.features) if isinstance(m, nn.ReLU)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("boxes")
    ap.add_argument("--images", default=None, help="folder with the boxed images (default: the run's data)")
    ap.add_argument("--boxes-space", type=int, default=None)
    ap.add_argument("--methods", default="gradcam,gradcam++,scorecam,layercam")
    args = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    model = RunModel(args.run, "cpu")
    images = args.images or model.config.source
    plain = explainable_copy(model.model)
    default = layer_name(plain, default_target_layer(plain))
    methods = args.methods.split(",")
    print(f"run {args.run} ({model.spec.name}, {model.spec.image_size} px, {model.positive}); boxes {args.boxes}; "
          f"CPU {cpu}; python {sys.version.split()[0]}; current default layer {default}\n")
    print("| layer | map | method | boxes | pointing game [95% CI] | chance | energy in box | T(IoBB) 0.1 / 0.25 / 0.5 "
          "| s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for layer in candidate_layers(plain):
        h, w = layer_resolution(plain, plain.get_submodule(layer), model.spec)
        t0 = time.perf_counter()
        result = localisation(args.run, args.boxes, images, methods, layer, boxes_space=args.boxes_space)
        seconds = (time.perf_counter() - t0) / len(methods)
        for method in methods:
            r = result[method]
            lo, hi = r["pointing_ci95"]
            acc = r["iobb_accuracy"]
            print(f"| {layer} | {h} x {w} | {method} | {r['images']} | {r['pointing_game']:.3f} [{lo:.3f}, {hi:.3f}] "
                  f"| {r['pointing_chance']:.3f} | {r['energy_game']:.3f} | {acc['0.1']:.2f} / {acc['0.25']:.2f} / "
                  f"{acc['0.5']:.2f} | {seconds:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
