"""CPU threads of a run: ``num_threads`` / ``--threads``, a default that leaves busy cores
alone, and a warning when the machine is already busy.

OpenMP threads of processes that share cores spin against each other: two training runs on
two cores with torch's default threads (one per core each) ran a demo-size model several
times slower than with one thread each (docs/benchmarks.md, `bench.py threads`). So a CPU run picks its threads:

1. ``num_threads`` (config) or ``--threads`` (run_expid.py, prediction.py): that many;
2. else ``OMP_NUM_THREADS`` when set (the tuner sets it for runs side by side: the cores
   divided among them, :func:`default_num_threads`): torch's threads as they are;
3. else the physical cores this process may run on (its CPU affinity), minus the cores other
   work keeps busy right now (sampled from /proc/stat for 0.1 s), at least one.

The thread count can change the last bits of a result (reductions split differently): set
``num_threads`` for bit-for-bit reproducible runs on a busy machine.
"""

from __future__ import annotations

import os
import time
from typing import Any


def cpus_available() -> list[int]:
    """The logical CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def physical_cores_available() -> int:
    """Physical cores among :func:`cpus_available` (hyper-threads of a core count once)."""
    cpus = cpus_available()
    cores = set()
    for cpu in cpus:
        topo = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topo}/physical_package_id") as a, open(f"{topo}/core_id") as b:
                cores.add((a.read().strip(), b.read().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def default_num_threads(parallel: int = 1) -> int:
    """Threads for each of ``parallel`` CPU runs side by side: the physical cores divided."""
    return max(1, physical_cores_available() // max(1, parallel))


def _cpu_times() -> tuple[float, float] | None:
    try:
        with open("/proc/stat") as fh:
            fields = [float(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields), idle


def busy_cores(seconds: float = 0.1) -> float | None:
    """Cores the whole machine keeps busy now (this process idles meanwhile); None where
    /proc/stat is not there."""
    a = _cpu_times()
    time.sleep(seconds)
    b = _cpu_times()
    if a is None or b is None or b[0] <= a[0]:
        return None
    busy_share = 1.0 - (b[1] - a[1]) / (b[0] - a[0])
    return max(0.0, busy_share) * (os.cpu_count() or 1)


def busy_warning(threads: int) -> str | None:
    """A warning when the 1-minute load average is above the cores this process may use."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = len(cpus_available())
    if load <= cores:
        return None
    head = f"the machine is busy: load average {load:.1f} on {cores} core(s). "
    if threads <= 1:  # nothing to take away: only time helps
        return head + "This run's one thread shares a core with other work: expect it slower"
    return head + (
        f"This run's {threads} threads share the cores with other work and may run several "
        "times slower (spinning OpenMP threads); give each run fewer threads (--threads 1, "
        "num_threads: 1 or OMP_NUM_THREADS=1), or run when the other work is done"
    )


def choose_num_threads(num_threads: int | None) -> tuple[int | None, str]:
    """(threads to set, or None to keep torch's; why), by the rules of the module doc."""
    if num_threads:
        return int(num_threads), "num_threads / --threads"
    if os.environ.get("OMP_NUM_THREADS"):
        return None, f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    cores = physical_cores_available()
    busy = busy_cores()
    if busy is None or busy < 0.5:
        return cores, f"default: the {cores} physical core(s) this process may use"
    free = max(1, min(cores, int(round(cores - busy))))
    return free, (
        f"default: {cores} physical core(s) this process may use, ~{busy:.1f} busy with other work"
    )


def configure_threads(num_threads: int | None, log: Any = None) -> tuple[int, str]:
    """Set torch's intra-op threads for a CPU run; log the choice (and a busy machine's
    warning). Returns (threads, the line logged)."""
    import torch

    n, why = choose_num_threads(num_threads)
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    n = torch.get_num_threads()
    line = f"threads: {n} ({why}; set num_threads or --threads to choose)"
    warning = busy_warning(n)
    if log is not None:
        log.info("%s", line)
        if warning:
            log.warning("%s", warning)
    return n, line + (f"\nwarning: {warning}" if warning else "")
