"""The reliability drill: inject faults into the long-running commands and feed them a corpus
of bad inputs, then print one line of counts (``python scripts/drill.py``, ``make drill``).

- :mod:`mmctr.drill.faults`: SIGKILL at seeded random moments, then rerun (``--resume`` where
  it applies) until done; a full disk and a read-only output folder.
- :mod:`mmctr.drill.corpus`: malformed parquet, images, YAML and command lines.

Everything runs on the tiny preset (CPU, fixed seeds) in a temp folder.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mmctr.drill.workspace import Workspace, make_workspace


def prepare_base(root: Path) -> Workspace:
    """The tiny workspace with images, a tiny random CLIP and one finished run (model.pt,
    last.pt) that the prediction cases score with."""
    from mmctr.config import load_config
    from mmctr.embedding import build_random_clip
    from mmctr.training.trainer import train

    ws = make_workspace(root, images=True, epochs=1)
    build_random_clip(ws.root / "tiny_clip", arch="tiny", seed=0)
    train(load_config(ws.config, "drill_tiny"), gpu=-1, progress=False)
    return ws


def run_corpus(base: Workspace, scratch: Path, echo) -> tuple[int, int, int, int]:
    """-> (cases, named errors, tracebacks, cases leaving partial outputs)."""
    from mmctr.drill import corpus
    from mmctr.drill.workspace import copy_workspace

    outcomes = []
    for i, case in enumerate(corpus.all_cases()):
        outcomes.append(corpus.run_case(case, base, scratch / f"case{i:03d}"))
        _report(outcomes[-1], echo)
    images = copy_workspace(base, scratch / "images")
    for outcome in corpus.run_image_cases(images, corpus.image_cases()):
        outcomes.append(outcome)
        _report(outcome, echo)
    named = sum(o.named_error for o in outcomes)
    tracebacks = sum(o.traceback for o in outcomes)
    partial = sum(bool(o.partial) for o in outcomes)
    return len(outcomes), named, tracebacks, partial


def _report(outcome, echo) -> None:
    mark = "ok  " if outcome.ok else "FAIL"
    extra = f" partial: {outcome.partial}" if outcome.partial else ""
    echo(f"{mark} {outcome.name}: {outcome.detail}{extra}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="drill.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs per command (default 10)")
    p.add_argument("--seed", type=int, default=22, help="seed of the kill moments")
    p.add_argument("--only", choices=("faults", "inputs"), help="run one half")
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    p.add_argument("-v", "--verbose", action="store_true", help="a line per case")
    args = p.parse_args(argv)
    echo = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else (lambda m: None)
    root = Path(tempfile.mkdtemp(prefix="mmctr_drill_"))
    t0 = time.perf_counter()
    try:
        base = prepare_base(root / "base")
        faults = (0, 0, 0)
        if args.only != "inputs":
            from mmctr.drill.faults import run_faults

            faults = run_faults(base, root / "faults", args.kills, args.seed, echo)
        inputs = (0, 0, 0, 0)
        if args.only != "faults":
            inputs = run_corpus(base, root / "inputs", echo)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    echo(f"({time.perf_counter() - t0:.0f} s; work folder {root}{' kept' if args.keep else ''})")
    n_faults, survived, torn = faults
    n_inputs, named, tracebacks, partial = inputs
    print(
        f"drill: faults {survived}/{n_faults} survived, {torn} torn files; bad inputs "
        f"{named}/{n_inputs} named errors, {tracebacks} tracebacks, {partial} partial outputs"
    )
    short = survived < n_faults or torn or named < n_inputs or tracebacks or partial
    return 1 if short or (args.only is None and (n_faults < 40 or n_inputs < 60)) else 0
