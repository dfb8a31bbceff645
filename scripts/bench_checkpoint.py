#!/usr/bin/env python
"""Peak memory and time of writing a checkpoint: streamed into the temp file (what
:func:`mmctr.utils.atomic_torch_save` does) against built in memory first and then written.

    python scripts/bench_checkpoint.py              # a 2 GiB payload, 3 repeats
    python scripts/bench_checkpoint.py --gib 3 --repeats 1

Each write runs in a fresh process that first builds the payload (float32 tensors of 64 MiB,
like a state dict), so its peak RSS (``ru_maxrss``) before the write is the payload alone; the
write's extra peak is the difference. Prints both ways per repeat, their medians, the memory saved and the time ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

WAYS = ("stream", "buffer")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def write_once(way: str, gib: float, path: Path) -> dict:
    """Build the payload, write it one way; returns the extra peak RSS and seconds."""
    import io

    import torch

    from mmctr.utils import atomic_torch_save, atomic_write_bytes

    n = max(1, round(gib * 16))  # 64 MiB tensors
    payload = {f"w{i}": torch.rand(2**24) for i in range(n)}
    before = peak_rss_gib()
    t0 = time.perf_counter()
    if way == "stream":
        atomic_torch_save(payload, path)
    else:  # the previous atomic_torch_save: the whole file as bytes, then written
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write_bytes(path, buf.getvalue())
    seconds = time.perf_counter() - t0
    return {"payload_gib": n / 16, "extra_peak_gib": peak_rss_gib() - before, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gib", type=float, default=2.0, help="payload size in GiB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(write_once(args.child, args.gib, Path(args.path))))
        return

    results: dict[str, list[dict]] = {w: [] for w in WAYS}
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        for rep in range(args.repeats):
            for way in WAYS:  # the ways take turns, so a drifting machine affects both alike
                cmd = [sys.executable, __file__, "--child", way, "--gib", str(args.gib)]
                out = subprocess.run(
                    [*cmd, "--path", str(Path(tmp) / "ckpt.pt")],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                r = json.loads(out.strip().splitlines()[-1])
                results[way].append(r)
                print(
                    f"repeat {rep + 1} {way:>6}: payload {r['payload_gib']:.2f} GiB, "
                    f"extra peak {r['extra_peak_gib']:.2f} GiB, {r['seconds']:.2f} s",
                    flush=True,
                )
    med = {
        w: {k: statistics.median(r[k] for r in rs) for k in ("extra_peak_gib", "seconds")}
        for w, rs in results.items()
    }
    for w in WAYS:
        print(
            f"median {w:>6}: extra peak {med[w]['extra_peak_gib']:.2f} GiB, "
            f"{med[w]['seconds']:.2f} s"
        )
    s, b = med["stream"], med["buffer"]
    print(
        f"streaming saves {b['extra_peak_gib'] - s['extra_peak_gib']:.2f} GiB of peak memory "
        f"(payload {args.gib:g} GiB); buffer / stream time {b['seconds'] / s['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
