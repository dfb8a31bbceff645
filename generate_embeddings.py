#!/usr/bin/env python
"""Stage 1: encode every item image with CLIP, reduce to 128-d with PCA, write item_emb_d128.

    python generate_embeddings.py --item-info data/MicroLens_1M_x1/item_info.parquet \\
        --image-dir data/MicroLens_1M_x1/item_images --model openai/clip-vit-base-patch32

--model is a hub name (needs the network, or HF_HUB_OFFLINE=1 with the model in the local
cache) or a folder written by save_pretrained. Every visible GPU is used (DataParallel splits
each batch; --gpu 0 1 picks GPUs, --gpu -1 the CPU). Across processes or machines:
torchrun --nproc_per_node=4 generate_embeddings.py ... (each rank encodes every 4th shard;
--cache-dir must be shared, the image folder may be a copy per node; rank 0 fits the PCA,
writes and reports every rank's counts). Raw features are cached per shard and checked per
item, so a rerun only encodes missing, new and changed items (--force: everything). Next to
the output go <stem>.pca.npz (the PCA) and <stem>.status.csv (ok / missing / corrupt /
padding per item), then the output itself: written last, it commits the run.

New items later: rerun with --pca <stem>.pca.npz. The saved PCA projects every item, and the
unchanged items' cached features are reused, so the items embedded before keep their vectors
bit for bit (a trained model still fits them). The PCA file records a digest of the model's
content (config, image processor, vision weights); --model must match it.
Without --pca a new PCA is fit on the current items and every vector changes; a different
<stem>.pca.npz already there is then kept as <stem>.pca.prev.npz (one generation).
"""

from __future__ import annotations

import argparse

from mmctr.cli.common import UserError, run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="generate_embeddings.py",
        description="\n\n".join(__doc__.split("\n\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--item-info", required=True, metavar="PATH", help="item_info.parquet")
    p.add_argument("--image-dir", required=True, metavar="DIR", help="folder of <item_id>.jpg")
    p.add_argument(
        "--model",
        default="openai/clip-vit-base-patch32",
        metavar="NAME_OR_DIR",
        help="CLIP hub name or save_pretrained folder (default: %(default)s)",
    )
    p.add_argument("--out", metavar="PATH", help="output parquet (default: --item-info, in place)")
    p.add_argument(
        "--column",
        default="item_emb_d128",
        help="embedding column to write (default: %(default)s); an existing one must hold "
        "lists of floats",
    )
    p.add_argument(
        "--dim", type=int, default=None, help="PCA output width (default: 128, or the --pca width)"
    )
    p.add_argument(
        "--pca",
        metavar="FILE",
        help="project with this saved PCA (<stem>.pca.npz of an earlier run) instead of "
        "fitting a new one: items embedded before keep their vectors exactly. Its feature "
        "width and model (compared by content) must match --model",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=256,
        help="images per model call, split across GPUs (default: %(default)s)",
    )
    p.add_argument(
        "--num-workers", type=int, default=None, help="decoding processes (default: min(8, CPUs))"
    )
    p.add_argument(
        "--gpu",
        type=int,
        nargs="+",
        default=None,
        metavar="N",
        help="GPU indices (default: all visible; -1 = CPU)",
    )
    p.add_argument(
        "--amp",
        choices=("none", "bf16", "fp16"),
        default=None,
        help="autocast dtype (default: bf16 on CUDA, none on CPU)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="raw feature shards (default: <out dir>/.emb_cache/<model>-<key>)",
    )
    p.add_argument("--force", action="store_true", help="recompute every cached shard")
    p.add_argument(
        "--shard-size", type=int, default=4096, help="items per cache shard (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=2025, help="PCA random_state (default: %(default)s)")
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar or progress lines (on a terminal a bar, else a line every ~20 s)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mmctr.embedding import EmbeddingError, generate_embeddings

    try:
        s = generate_embeddings(
            item_info=args.item_info,
            image_dir=args.image_dir,
            model=args.model,
            out=args.out,
            column=args.column,
            dim=args.dim,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            gpu=args.gpu,
            amp=args.amp,
            cache_dir=args.cache_dir,
            force=args.force,
            shard_size=args.shard_size,
            seed=args.seed,
            progress=not args.no_progress,
            pca=args.pca,
        )
    except EmbeddingError as exc:
        raise UserError(str(exc)) from exc
    if s["role"] != "main":
        return 0
    from mmctr.embedding.pipeline import summary_lines

    for line in summary_lines(s):
        print(line)
    return 0


if __name__ == "__main__":
    run_cli(main)
