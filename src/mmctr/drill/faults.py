"""Faults: SIGKILL at seeded random moments, a full disk, a read-only output folder.

Kill drill, per long-running command: run it once uninterrupted (the baseline, timed T).
Then, in a second copy of the workspace, start it and SIGKILL its process group at a moment
drawn uniformly from [0.1 T, T] (seeded), check that every output file reads back whole, and
start it again (``--resume`` for training when a last.pt is there, a plain rerun elsewhere),
until ``kills`` kills have landed; a last uninterrupted rerun must then end with exactly the
baseline's results: metrics and weights bitwise (CPU, fixed seeds), the same submission,
the same embeddings, a tuner CSV with each experiment once and the same metrics. A kill
survived when no file was torn at that moment and the final results match.

Full disk (a small tmpfs when this process may mount one, else RLIMIT_FSIZE: writes past a
few KB fail with EFBIG) and read-only folder (a read-only tmpfs; skipped where nothing can
make a folder read-only for this user): the command must exit with one ``error:`` line naming
the file, print no traceback, and leave the previous outputs exactly as they were.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmctr.drill.workspace import (
    EXPID,
    Result,
    Workspace,
    changes,
    copy_workspace,
    is_temp,
    snapshot,
    spawn_entry,
    torn_files,
    write_config,
)

_FIRST_KILL, _KILL_WINDOW_END = 0.1, 1.0  # kill moments, as fractions of the baseline time


@dataclass
class KillDrill:
    """One command under the kill drill; ``args(ws, first)`` is a run's command line."""

    name: str
    command: str
    setup: Callable[[Workspace], None]
    args: Callable[[Workspace, bool], list[str]]
    outputs: Callable[[Workspace], list[Path]]
    results: Callable[[Workspace], dict]  # compared with the baseline's, key by key


# ---- the commands --------------------------------------------------------------------


def _train_setup(**params) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        shutil.rmtree(ws.model_root, ignore_errors=True)
        write_config(ws, epochs=3, **params)

    return setup


def _train_args(ws: Workspace, first: bool) -> list[str]:
    resume = not first and (ws.run_dir / "last.pt").is_file()
    return ws.experiment_args() + (["--resume"] if resume else [])


def _train_results(ws: Workspace) -> dict:
    import json

    import torch

    metrics = json.loads((ws.run_dir / "metrics.json").read_text())
    weights = torch.load(ws.run_dir / "model.pt", weights_only=True)["model_state"]
    keep = ("valid", "test", "history", "best_step", "epochs")
    return {**{k: metrics.get(k) for k in keep}, **{f"w:{k}": v for k, v in weights.items()}}


def _embed_out(ws: Workspace) -> Path:
    return ws.root / "emb" / "items.parquet"


def _embed_setup(ws: Workspace) -> None:
    shutil.rmtree(ws.root / "emb", ignore_errors=True)


def _embed_args(ws: Workspace, first: bool) -> list[str]:
    return [
        "--item-info", str(ws.data / "item_info.parquet"), "--image-dir", str(ws.data / "item_images"),
        "--model", str(ws.root / "tiny_clip"), "--out", str(_embed_out(ws)), "--dim", "8",
        "--num-workers", "0", "--batch-size", "16", "--shard-size", "32", "--no-progress",
    ]  # fmt: skip


def _embed_results(ws: Workspace) -> dict:
    import pyarrow.parquet as pq

    out = _embed_out(ws)
    here = str(ws.root)  # paths inside the outputs name the workspace: compare without it
    with np.load(out.with_name("items.pca.npz"), allow_pickle=False) as z:
        pca = {f"pca:{k}": z[k] for k in z.files if z[k].dtype.kind != "U"}
        pca.update(
            {f"pca:{k}": str(z[k]).replace(here, "") for k in z.files if z[k].dtype.kind == "U"}
        )
    return {
        "table": pq.read_table(out).to_pydict(),
        "status": out.with_name("items.status.csv").read_text().replace(here, ""),
        **pca,
    }


def _tune_file(ws: Workspace) -> Path:
    return ws.root / "tuner" / "grid.yaml"


def _tune_setup(ws: Workspace) -> None:
    shutil.rmtree(ws.model_root, ignore_errors=True)
    shutil.rmtree(ws.root / "tuner", ignore_errors=True)
    write_config(ws, epochs=1)
    path = _tune_file(ws)
    path.parent.mkdir(parents=True)
    path.write_text(
        f"base_config: {ws.config}\nbase_expid: {EXPID}\ndataset_id: tiny\n"
        "tuner_space:\n  learning_rate: [1.0e-3, 3.0e-3]\n"
    )


def _tune_args(ws: Workspace, first: bool) -> list[str]:
    return ["--config", str(_tune_file(ws)), "--gpu", "-1"]


def _tune_results(ws: Workspace) -> dict:
    with open(ws.model_root / "grid.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    expids = [r["expid"] for r in rows]
    for r in rows:  # <base>_<NNN>_<hash8>: the hash covers model_root, a path of the workspace
        r["expid"] = r["expid"].rsplit("_", 1)[0]
    return {
        "each experiment once": len(expids) == len(set(expids)) == 2,
        "rows": [{k: v for k, v in r.items() if k != "seconds"} for r in rows],
    }


def _predict_setup(ws: Workspace) -> None:
    shutil.rmtree(ws.root / "submission", ignore_errors=True)


def _predict_args(ws: Workspace, first: bool) -> list[str]:
    return ws.experiment_args(out=str(ws.root / "submission"))


def _predict_results(ws: Workspace) -> dict:
    import zipfile

    sub = ws.root / "submission"
    with zipfile.ZipFile(sub / f"{EXPID}.zip") as zf:
        zipped = zf.read("prediction.csv")
    return {"csv": (sub / "prediction.csv").read_bytes(), "zip": zipped}


def kill_drills() -> list[KillDrill]:
    model_dirs = lambda ws: [ws.model_root]  # noqa: E731
    return [
        KillDrill("training", "train", _train_setup(), _train_args, model_dirs, _train_results),
        KillDrill(
            "training, eval_steps 5 (kills mid-epoch)",
            "train",
            _train_setup(eval_steps=5),
            _train_args,
            model_dirs,
            _train_results,
        ),
        KillDrill(
            "generate_embeddings",
            "embed",
            _embed_setup,
            _embed_args,
            lambda ws: [ws.root / "emb"],
            _embed_results,
        ),
        KillDrill(
            "run_param_tuner (2 experiments)",
            "tune",
            _tune_setup,
            _tune_args,
            lambda ws: [ws.model_root, ws.root / "tuner"],
            _tune_results,
        ),
        KillDrill(
            "prediction",
            "predict",
            _predict_setup,
            _predict_args,
            lambda ws: [ws.root / "submission"],
            _predict_results,
        ),
    ]


# ---- running and killing -------------------------------------------------------------------


def _start(drill: KillDrill, ws: Workspace, first: bool, **kwargs) -> subprocess.Popen:
    return spawn_entry(
        drill.command,
        drill.args(ws, first),
        ws.root / "drill.log",
        start_new_session=True,
        **kwargs,
    )


def _kill_at(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL the process group after ``seconds`` -> True, or False if it ended before."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def _finish(drill: KillDrill, ws: Workspace, first: bool) -> int:
    proc = _start(drill, ws, first)
    return proc.wait(timeout=900)


def _differences(a: dict, b: dict) -> list[str]:
    import torch

    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            same = x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
        elif isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            same = x.dtype == y.dtype and np.array_equal(x, y)
        else:
            same = x == y
        if not same:
            out.append(key)
    return out


def run_kill_drill(drill: KillDrill, base: Workspace, scratch: Path, kills: int, rng, echo):
    """-> (kills landed, kills survived, torn files seen)."""
    reference = copy_workspace(base, scratch / "baseline")
    drill.setup(reference)
    t0 = time.perf_counter()
    if _finish(drill, reference, True) != 0:
        echo(f"FAIL {drill.name}: the uninterrupted run failed (see {reference.root}/drill.log)")
        return kills, 0, 0
    total = time.perf_counter() - t0
    expected = drill.results(reference)
    ws = copy_workspace(base, scratch / "killed")
    drill.setup(ws)
    landed, torn_at, first, tries = 0, [], True, 0
    while landed < kills and tries < 3 * kills:
        tries += 1
        moment = rng.uniform(_FIRST_KILL, _KILL_WINDOW_END) * total
        if _kill_at(_start(drill, ws, first), moment):
            landed += 1
            torn = torn_files(*drill.outputs(ws))
            torn_at.append(torn)
            echo(f"     {drill.name}: kill {landed} at {moment:.2f}s of {total:.2f}s, torn {torn}")
            first = False
        else:  # it finished before the kill: start over, so that the next kill hits work
            drill.setup(ws)
            first = True
    code = _finish(drill, ws, first)
    diff = [f"exit code {code}"] if code else _differences(drill.results(ws), expected)
    survived = 0 if diff else sum(not t for t in torn_at)
    n_torn = sum(len(t) for t in torn_at)
    mark = "ok  " if not diff and not n_torn and landed == kills else "FAIL"
    echo(
        f"{mark} {drill.name}: {landed} kills in {tries} runs (baseline {total:.1f}s), "
        f"{n_torn} torn files, final results {'equal to the baseline' if not diff else f'differ: {diff[:5]}'}"
    )
    return kills, survived, n_torn


# ---- full disk and read-only folder -------------------------------------------------------


def _can_mount() -> bool:
    if os.environ.get("MMCTR_DRILL_NO_MOUNT"):  # try the fallbacks where mounting works
        return False
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"mmctr_drill_probe_{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = _mount(["-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)])
        if ok:
            _mount(["-u", str(probe)], umount=True)
        return ok
    finally:
        probe.rmdir()


def _mount(args: list[str], umount: bool = False) -> bool:
    cmd = ["umount", *args[1:]] if umount else ["mount", *args]
    if shutil.which(cmd[0]) is None:
        return False
    return subprocess.run(cmd, capture_output=True).returncode == 0


@contextlib.contextmanager
def _small_tmpfs(path: Path, size_kb: int) -> Iterator[None]:
    path.mkdir(parents=True, exist_ok=True)
    if not _mount(["-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)]):
        raise OSError(f"cannot mount a tmpfs on {path}")
    try:
        yield
    finally:
        _mount(["-u", str(path)], umount=True)


def _fill(folder: Path) -> None:
    """Write a filler file until the file system is full."""
    with contextlib.suppress(OSError), open(folder / "filler.bin", "wb") as fh:
        while True:
            fh.write(b"\0" * 4096)
            fh.flush()


def _fsize_limit(limit: int) -> Callable[[], None]:
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@dataclass
class OutputFault:
    name: str
    command: str
    drill: KillDrill
    folder: Callable[[Workspace], Path]  # the folder that fills up / turns read-only


def output_faults() -> list[OutputFault]:
    d = {k.command: k for k in kill_drills()}
    return [
        OutputFault("training", "train", d["train"], lambda ws: ws.model_root),
        OutputFault("generate_embeddings", "embed", d["embed"], lambda ws: ws.root / "emb"),
        OutputFault("prediction", "predict", d["predict"], lambda ws: ws.root / "submission"),
    ]


def run_output_fault(fault: OutputFault, base: Workspace, scratch: Path, kind: str, echo):
    """``kind``: "full disk" or "read-only folder". -> (ran, handled) as 0/1 counts."""
    mounted = _can_mount()
    if kind == "read-only folder" and not mounted and os.geteuid() == 0:
        echo(f"skip {fault.name}, {kind}: root ignores permissions and cannot mount here")
        return 0, 0
    ws = copy_workspace(base, scratch)
    fault.drill.setup(ws)
    if _finish(fault.drill, ws, True) != 0:  # the previous outputs
        echo(f"FAIL {fault.name}, {kind}: the first run failed")
        return 1, 0
    folder = fault.folder(ws)
    kept = scratch.parent / f"{scratch.name}.kept"
    shutil.move(folder, kept)
    with contextlib.ExitStack() as stack:
        preexec = _break(folder, kept, kind, mounted, stack)
        before = snapshot(folder)
        res = _rerun(fault, ws, preexec)
        after = snapshot(folder)
    lines = res.error_lines
    named = res.code != 0 and len(lines) == 1 and str(folder) in lines[0]
    left = [p for p in changes(before, after) if not p.endswith("filler.bin")]
    temps = [p for p in after if is_temp(p)]
    ok = named and not res.traceback and not left and not temps
    how = "tmpfs" if mounted else "RLIMIT_FSIZE" if kind == "full disk" else "chmod"
    echo(
        f"{'ok  ' if ok else 'FAIL'} {fault.name}, {kind} ({how}): "
        f"{lines[0] if len(lines) == 1 else res.stderr[-400:]}"
        + (f" changed: {left}" if left else "")
        + (" traceback" if res.traceback else "")
    )
    return 1, int(ok)


def _break(folder: Path, kept: Path, kind: str, mounted: bool, stack: contextlib.ExitStack):
    """Put the previous outputs (``kept``) back at ``folder`` on a full or read-only place;
    -> the child's preexec_fn (a file size limit) or None."""
    if mounted:
        stack.enter_context(_small_tmpfs(folder, 4096))
        shutil.copytree(kept, folder, symlinks=True, dirs_exist_ok=True)
        if kind == "full disk":
            _fill(folder)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        return None
    shutil.copytree(kept, folder, symlinks=True)
    if kind == "full disk":
        return _fsize_limit(4096)
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    for p in folders:
        p.chmod(0o555)
    stack.callback(lambda: [p.chmod(0o755) for p in folders])
    return None


def _rerun(fault: OutputFault, ws: Workspace, preexec) -> Result:
    """The command once more over its finished outputs (its output through a pipe: a size
    limit must not stop its own messages)."""
    args = fault.drill.args(ws, True)
    if fault.command == "train":
        args = [*args, "--override", "seed=8"]  # a new run over the finished one
    proc = spawn_entry(fault.command, args, None, preexec_fn=preexec)
    out, _ = proc.communicate(timeout=900)
    return Result(proc.returncode, "", out.decode(errors="replace"))


def run_faults(base: Workspace, scratch: Path, kills: int, seed: int, echo) -> tuple[int, int, int]:
    """-> (faults injected, survived, torn files)."""
    rng = random.Random(seed)
    total = survived = torn = 0
    for i, drill in enumerate(kill_drills()):
        n, ok, t = run_kill_drill(drill, base, scratch / f"kill{i}", kills, rng, echo)
        total, survived, torn = total + n, survived + ok, torn + t
    for kind in ("full disk", "read-only folder"):
        for i, fault in enumerate(output_faults()):
            n, ok = run_output_fault(fault, base, scratch / f"{kind[:4]}{i}", kind, echo)
            total, survived = total + n, survived + ok
    return total, survived, torn
