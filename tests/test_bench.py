"""The benchmark suite (scripts/bench.py NAME) end to end on tiny data: every benchmark
completes; ``suite --quick`` writes every key of its JSON (issue #10).

The figures themselves are not asserted (timings on shared CI cores mean nothing); the runs use
the tiny preset (config/demo's architecture for the suite), generated into the test's tmp folder.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

NUMBERS = [
    "loader.samples_per_s",
    "loader.samples_per_s_one_thread",
    "loader.load_seconds",
    "loader.peak_rss_gb",
    "train.seed.samples_per_s",
    "train.rank1.samples_per_s",
    "train.seed.breakdown.loader",
    "train.seed.breakdown.sequence",
    "train.seed.breakdown.cross",
    "train.seed.breakdown.rest",
    "train.bf16_pair.fp32.samples_per_s",
    "train.bf16_pair.bf16.samples_per_s",
    "predict.samples_per_s",
    "embed.decode_images_per_s",
    "embed.vitb32_images_per_s",
]
PRESENT = [
    "date",
    "machine.cpu_model",
    "machine.cpu_cores",
    "machine.cpu_flags.amx_bf16",
    "machine.cpu_flags.avx512_bf16",
    "machine.gpus",
    "versions.python",
    "versions.torch",
    "versions.transformers",
    "versions.numpy",
    "versions.pyarrow",
    "peer.fuxictr_loader.status",
    "timing",
]


def _get(d, dotted):
    for key in dotted.split("."):
        assert isinstance(d, dict) and key in d, f"{dotted}: {key!r} is missing"
        d = d[key]
    return d


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_bench_quick_writes_every_key(tmp_path):
    out = tmp_path / "x.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    # busy shared cores: sleeping OpenMP threads instead of spinning ones (steadier timings)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    cmd = [sys.executable, "scripts/bench.py", "--quick", "--json", str(out)]
    proc = subprocess.run(
        [*cmd, "--data-root", str(tmp_path / "data")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=230,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in NUMBERS:
        value = _get(result, key)
        assert isinstance(value, int | float) and math.isfinite(value) and value >= 0, key
    for key in PRESENT:
        _get(result, key)
    assert result["quick"] is True and result["preset"] == "tiny"
    assert "median" in result["timing"]


def _bench(args: list[str], tmp_path: Path, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    proc = subprocess.run(
        [sys.executable, "scripts/bench.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_every_benchmark_script_is_a_name_of_the_suite(monkeypatch):
    """No benchmark lives outside the one CLI: every scripts/bench_*.py but the harness is
    one of bench.py's names."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import bench

    scripts = {p.stem for p in (REPO / "scripts").glob("bench_*.py")} - {"bench_harness"}
    assert scripts == set(bench.BENCHMARKS.values())
    assert not [
        p.name for p in (REPO / "scripts").glob("*.py") if "sys.path.insert" in p.read_text()
    ]


SMOKE = {
    "data": ["--quick", "--no-peer", "--batch-sizes", "512"],
    "embed": ["--quick", "--archs", "tiny", "--cpu-only", "--num-workers", "1"],
    "ddp": ["--epochs", "1"],
    "threads": ["--seconds", "1"],
}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_each_benchmark_runs_on_tiny_data(name, tmp_path):
    args = [name, *SMOKE[name]]
    if name == "data":
        args += ["--data-root", str(tmp_path / "data")]
    if name in ("data", "embed", "ddp"):
        args += ["--json", str(tmp_path / f"{name}.json")]
    _bench(args, tmp_path, timeout=230)
    if name != "threads":
        assert json.loads((tmp_path / f"{name}.json").read_text())


def test_gpu_check_budgets_end_before_the_limit_and_a_cut_stage_keeps_its_figures(
    tmp_path, monkeypatch
):
    """The stage budgets count from the shell's start and end 30 s before its timeout; a
    SIGTERM (the timeout) inside a stage saves what the stage had measured."""
    import signal
    import time

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import gpu_check as gc

    started = time.time() - 5.0  # the shell started 5 s ago
    b = gc.Budget(gc.GPU_BUDGETS, limit=480, started_at=started)
    assert sum(b.budgets.values()) == pytest.approx(450, abs=0.5)
    assert 4.5 < b.elapsed() < 30 and b.ends["embed"] == pytest.approx(450, abs=0.5)
    assert gc.Budget(gc.GPU_BUDGETS).budgets == gc.GPU_BUDGETS  # no limit: as written

    report = gc.Report(tmp_path / "r.json")
    old = signal.signal(signal.SIGTERM, gc._cut_short)

    def long_stage(out):
        out["first_figure"] = 1.5
        os.kill(os.getpid(), signal.SIGTERM)
        out["never"] = True

    try:
        with pytest.raises(gc.CutShort):
            gc.stage(report, b, "train")(long_stage, partial=True)
    finally:
        signal.signal(signal.SIGTERM, old)
    saved = json.loads((tmp_path / "r.json").read_text())["stages"]["train"]
    assert saved["first_figure"] == 1.5 and "never" not in saved
    assert saved["status"] == "cut short by the time limit"
