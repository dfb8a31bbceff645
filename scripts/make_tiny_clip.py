#!/usr/bin/env python
"""Save a randomly initialised CLIP (model + image processor) with save_pretrained.

    python scripts/make_tiny_clip.py data/tiny_clip                 # tiny: 64 px, 256-d features
    python scripts/make_tiny_clip.py /tmp/vitb32 --arch vit-b32     # ViT-B/32 shape, 512-d

The folder loads like a downloaded checkpoint (``--model DIR`` of generate_embeddings.py):
for tests, demos and speed measurements without network. The features are meaningless.
"""

from __future__ import annotations

import argparse

from mmctr.embedding.encoder import ARCHS, build_random_clip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="folder to write (created if missing)")
    p.add_argument("--arch", choices=ARCHS, default="tiny", help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="weight init seed (default: 0)")
    p.add_argument("--projection-dim", type=int, help="feature width (default: the arch's)")
    args = p.parse_args(argv)
    path = build_random_clip(args.out_dir, args.arch, args.seed, args.projection_dim)
    print(f"random CLIP ({args.arch}, seed {args.seed}): {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
