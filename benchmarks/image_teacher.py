"""What OccFeat's DINOv2 teacher costs per camera image, at the image's own size and resized.

Builds a randomly initialised DINOv2 backbone of a published variant's shape
(ViT-S/14 by default: the cost does not depend on the weights), then times
``image_features`` on one random image of W x H pixels, seen at each ``--heights``
value of rows (OccFeat's ``teacher.image_height``; the aspect ratio kept, the image
resized once, to multiples of the patch size). Prints seconds and the
feature map's size per height, and the peak resident memory. Asserts nothing.

    python benchmarks/image_teacher.py [--size 1600 900] [--heights 448 900] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from occbench.models.dinov2 import DinoV2, DinoV2Architecture

# embed_dim, depth, ffn_hidden of Meta's published backbones.
VARIANTS = {"vits14": (384, 12, 1536), "vitb14": (768, 12, 3072), "vitl14": (1024, 24, 4096)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="vits14")
    parser.add_argument("--size", type=int, nargs=2, default=[1600, 900], metavar=("W", "H"))
    parser.add_argument("--heights", type=int, nargs="+", default=[448, 900])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dim, depth, hidden = VARIANTS[args.variant]
    model = DinoV2(DinoV2Architecture(embed_dim=dim, depth=depth, ffn_hidden=hidden)).eval().requires_grad_(False)
    model.to(args.device)
    width, height = args.size
    image = torch.randint(0, 256, (1, height, width, 3), dtype=torch.uint8, device=args.device)
    for rows in args.heights:
        with torch.no_grad():
            started = time.perf_counter()
            features = model.image_features(image, rows)
            if features.is_cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        print(f"{args.variant}, {width} x {height} image at {rows} rows: {seconds:.2f} s, "
              f"feature map {tuple(features.shape[2:])}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
