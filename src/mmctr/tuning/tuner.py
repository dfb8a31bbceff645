"""Grids of experiments from a FuxiCTR tuner file: expand, write, validate, run, tabulate.

    python run_param_tuner.py --config config/tuner/demo_tuner.yaml --gpu -1

The tuner file is FuxiCTR's, read unchanged::

    base_config: ./config/MMCTR/          # folder with model_config.yaml (+ dataset_config.yaml)
    base_expid: Transformer_DCN_rank1     # the expid block used as the base
    dataset_id: MicroLens_1M_x1           # optional: default = the base expid's dataset_id
    dataset_config:                       # optional: replaces the base folder's dataset block
        MicroLens_1M_x1: {data_root: ./data/, ...}
    tuner_space:
        learning_rate: [1.e-3, 5.e-4]     # a list = a grid axis (every list, as in FuxiCTR)
        embedding_dim: 64                 # a scalar = a fixed value

Relative paths (``base_config``, data paths, ``model_root``) are relative to the current
directory, as in FuxiCTR; ``base_config`` defaults to the tuner file's folder.

What :func:`run_tuner` does:

1. Expands the grid: the cartesian product of the axes, in the order they are written
   (tuner_space first, then list-valued keys of the tuner's dataset block; the last axis varies
   fastest). Every experiment is the base expid's resolved params (Base + block + dataset
   block) updated with its grid point. A tuned dataset key (a key of the dataset block or of
   ``DatasetConfig``) goes into a dataset block of its own, ``<dataset_id>_d<NNN>``, one per
   distinct dataset grid point; with no dataset axis the dataset_id is kept.
2. Names each experiment ``<base_expid>_<NNN>_<hash8>`` (:func:`mmctr.config.make_expid`, NNN
   from 001) over exactly the params ``load_config`` resolves, so the id verifies on reload.
3. Validates every grid point, then writes ``<tuner folder>/<tuner stem>/model_config.yaml``
   (Base + one block per expid) and ``dataset_config.yaml`` atomically, and reloads every
   expid with ``load_config``. A bad key fails the whole tuner before anything runs.
4. Runs ``run_expid.py --config DIR --expid ID --gpu G --no-progress`` as subprocesses, one per
   listed device at a time (``max_parallel`` per device), output appended to
   ``<model_root>/<name>/logs/<expid>.log``. A finished experiment (its run folder has
   metrics.json) is skipped unless ``rerun``; an interrupted one (last.pt, no metrics.json) is
   resumed with ``--resume``. A failed run is recorded and the others go on. ``rerun`` runs
   everything from the start (a finished run's metrics.json is kept as metrics.prev.json, so
   a failed rerun never looks finished). Ctrl-C / SIGTERM stop the runs and leave a valid CSV.
5. Rewrites ``<model_root>/<name>.csv`` atomically after each run, and prints the results
   sorted by the monitor with the command that predicts with the best experiment.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import yaml

from mmctr.atomic import atomic_write_text
from mmctr.config import (
    HASH_OK,
    ConfigError,
    DatasetConfig,
    ExperimentConfig,
    YamlLoader,
    build_config,
    experiment_hash,
    load_config,
    load_yaml,
    make_expid,
    parse_tuner_id,
)
from mmctr.config import loader as config_loader
from mmctr.device import check_gpu_exists
from mmctr.progress import Progress
from mmctr.threads import default_num_threads

TUNER_KEYS = ("base_config", "base_expid", "dataset_id", "dataset_config", "tuner_space")
METRIC_COLUMNS = ("valid_AUC", "valid_logloss", "valid_gAUC")
FINISHED, FAILED, SKIPPED, PENDING = "finished", "failed", "skipped", "pending"
RUN_EXPID = Path(__file__).resolve().parents[3] / "run_expid.py"

# Keys of a dataset block that are lists by nature, never grid axes inside dataset_config.
_LIST_DATASET_KEYS = frozenset({"feature_cols", "label_col"})
_DATASET_FIELDS = frozenset(f.name for f in fields(DatasetConfig)) - {"dataset_id"}
_POLL_SECONDS = 0.2


# ------------------------------------------------------------------------------ the grid


@dataclass
class TunerSpec:
    """A tuner file, read and checked: the base experiment and the grid axes."""

    path: Path
    name: str  # the tuner file's stem
    config_dir: Path  # where the expanded configs go: <tuner folder>/<name>
    base_config: Path
    base_expid: str
    dataset_id: str
    model_params: dict[str, Any]  # Base + base expid block, tuner scalars applied
    dataset_params: dict[str, Any]  # the dataset block, tuner scalars applied
    axes: dict[str, list[Any]]  # key -> values, in grid order
    dataset_keys: frozenset[str]  # the axis keys that belong to the dataset block
    notices: list[str] = field(default_factory=list)  # said once, by run_tuner
    n_points: int = 0  # grid points, duplicates included (set by plan_grid)


@dataclass
class Experiment:
    """One grid point: its id, the values of the axes, and where its files live."""

    index: int
    expid: str
    dataset_id: str
    tuned: dict[str, Any]
    model_block: dict[str, Any]  # dataset_id + tuned model keys (the expid block written)
    dataset_block: dict[str, Any]
    params: dict[str, Any]  # the resolved params, as load_config returns them
    cfg: ExperimentConfig | None = None


@dataclass
class _Running:
    exp: Experiment
    row: dict[str, Any]
    proc: subprocess.Popen
    log: IO[str]
    started: float


def read_tuner(tuner_file: str | os.PathLike) -> TunerSpec:
    """Read a FuxiCTR tuner file and its base experiment (no file is written)."""
    path = Path(tuner_file)
    doc = _tuner_doc(path)
    base_expid = doc.get("base_expid")
    if not isinstance(base_expid, str) or not base_expid:
        raise ConfigError(f"{path}: base_expid must name an expid block of the base config")
    base_config = Path(str(doc.get("base_config") or path.parent))
    if not base_config.is_dir():
        what = "is a file, not a folder" if base_config.exists() else "does not exist"
        raise ConfigError(
            f"{path}: base_config {str(base_config)!r} {what}; it names the folder with the "
            "base experiment's model_config.yaml (relative paths start at the current folder)"
        )
    space = doc.get("tuner_space") or {}
    if not isinstance(space, dict):
        raise ConfigError(f"{path}: tuner_space must be a mapping of config keys")
    if "dataset_id" in space:
        raise ConfigError(
            f"{path}: dataset_id goes at the top of the tuner file, not in tuner_space"
        )

    model_params = _base_model_params(base_config, base_expid)
    dataset_id = doc.get("dataset_id", model_params.get("dataset_id"))
    if not isinstance(dataset_id, str) or not dataset_id:
        raise ConfigError(
            f"{path}: no dataset_id: set it at the top of the tuner file or in the base "
            f"expid {base_expid!r}"
        )
    dataset_params = _dataset_block(path, doc.get("dataset_config"), base_config, dataset_id)

    axes, dataset_keys = _split_space(path, doc, space, model_params, dataset_params)
    model_params["dataset_id"] = dataset_id
    return TunerSpec(
        path=path,
        name=path.stem,
        config_dir=path.parent / path.stem,
        base_config=base_config,
        base_expid=base_expid,
        dataset_id=dataset_id,
        model_params=model_params,
        dataset_params=dataset_params,
        axes=axes,
        dataset_keys=frozenset(dataset_keys),
    )


def _tuner_doc(path: Path) -> dict[str, Any]:
    """The tuner file's mapping, its top-level keys checked."""
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"tuner file {str(path)!r} {what} (--config FILE.yaml)")
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a tuner file is a mapping with base_expid and tuner_space")
    unknown = [k for k in doc if k not in TUNER_KEYS]
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; a tuner file "
            f"has {', '.join(TUNER_KEYS)} (an inline model_config is not supported: put the "
            "base experiment in a config folder and name it in base_config)"
        )
    return doc


def _split_space(
    path: Path,
    doc: dict[str, Any],
    space: dict[str, Any],
    model_params: dict[str, Any],
    dataset_params: dict[str, Any],
) -> tuple[dict[str, list[Any]], set[str]]:
    """The grid axes (lists in tuner_space, and in an inline dataset_config) and which of
    them are dataset keys; single values go into the model or dataset params (in place)."""
    axes: dict[str, list[Any]] = {}
    dataset_keys: set[str] = set()
    for key, value in space.items():
        key = str(key)
        in_dataset = key in dataset_params or key in _DATASET_FIELDS
        if isinstance(value, list):
            if not value:
                raise ConfigError(f"{path}: tuner_space {key!r} is an empty list (no values)")
            axes[key] = value
            if in_dataset:
                dataset_keys.add(key)
        elif in_dataset:
            dataset_params[key] = value
        else:
            model_params[key] = value
    # Lists inside the tuner's dataset block are axes too (but feature_cols is a list itself).
    if isinstance(doc.get("dataset_config"), dict):
        for key, value in list(dataset_params.items()):
            if isinstance(value, list) and key not in _LIST_DATASET_KEYS and key not in axes:
                if not value:
                    raise ConfigError(f"{path}: dataset_config {key!r} is an empty list")
                axes[key] = value
                dataset_keys.add(key)
                del dataset_params[key]
    for key in axes:
        model_params.pop(key, None)
        if key in dataset_keys:
            dataset_params.pop(key, None)
    return axes, dataset_keys


def plan_grid(spec: TunerSpec) -> list[Experiment]:
    """Every grid point as an :class:`Experiment`, validated and named (nothing written).

    Raises ConfigError for the first grid point that is not a valid config.
    """
    keys = list(spec.axes)
    points = list(itertools.product(*(spec.axes[k] for k in keys)))
    n = spec.n_points = len(points)
    dataset_axes = [k for k in keys if k in spec.dataset_keys]
    dataset_ids: dict[str, str] = {}  # canonical JSON of the dataset point -> derived id
    experiments = []
    seen: dict[str, str] = {}  # full hash -> expid of the first grid point with it
    for index, point in enumerate(points, start=1):
        tuned = dict(zip(keys, copy.deepcopy(point)))
        if dataset_axes:
            ds_point = json.dumps({k: tuned[k] for k in dataset_axes}, sort_keys=True)
            dataset_id = dataset_ids.setdefault(
                ds_point, f"{spec.dataset_id}_d{len(dataset_ids) + 1:03d}"
            )
        else:
            dataset_id = spec.dataset_id
        model_block = {"dataset_id": dataset_id, "tuner": str(spec.path)}
        model_block.update({k: v for k, v in tuned.items() if k not in spec.dataset_keys})
        dataset_block = copy.deepcopy(spec.dataset_params)
        dataset_block.update({k: v for k, v in tuned.items() if k in spec.dataset_keys})
        # load_config's order: Base, then the expid block, then the dataset block.
        params = {**copy.deepcopy(spec.model_params), **model_block, **dataset_block}
        shown = ", ".join(f"{k}={_cell(v)}" for k, v in tuned.items()) or "no axes"
        origin = f"{spec.path}: grid point {index}/{n} ({shown})"
        sources = {k: f"{spec.base_config} {spec.base_expid}" for k in spec.model_params}
        sources.update({k: str(spec.path) for k in model_block})
        sources.update({k: f"dataset block {spec.dataset_id!r}" for k in spec.dataset_params})
        sources.update({k: f"{spec.path}:tuner_space" for k in tuned})
        cfg = build_config(spec.base_expid, params, sources=sources, origin=origin)
        expid = make_expid(spec.base_expid, index, cfg.params)
        first = seen.setdefault(experiment_hash(cfg.params), expid)
        if first != expid:
            spec.notices.append(
                f"grid point {index}/{n} ({shown}) is the same experiment as {first}: run once"
            )
            continue
        experiments.append(
            Experiment(
                index=index,
                expid=expid,
                dataset_id=dataset_id,
                tuned=tuned,
                model_block=model_block,
                dataset_block=dataset_block,
                params=cfg.params,
            )
        )
    return experiments


def expand_grid(tuner_file: str | os.PathLike) -> tuple[Path, list[tuple[str, dict[str, Any]]]]:
    """``(config_dir, [(expid, resolved params), ...])`` of a tuner file; writes nothing."""
    spec = read_tuner(tuner_file)
    return spec.config_dir, [(e.expid, e.params) for e in plan_grid(spec)]


def write_tuner_configs(
    spec: TunerSpec, experiments: list[Experiment], echo: Callable[[str], None] | None = None
) -> Path:
    """Write ``model_config.yaml`` and ``dataset_config.yaml`` into ``spec.config_dir`` and
    reload every expid with ``load_config`` (sets ``Experiment.cfg``). -> the folder."""
    out = spec.config_dir
    out.mkdir(parents=True, exist_ok=True)
    first = experiments[0].expid if experiments else spec.base_expid
    header = (
        f"# Written by run_param_tuner.py from {spec.path}; edit the tuner file, not this one\n"
        "# (each expid's hash covers its parameters, and load_config checks it).\n"
        f"# python run_expid.py --config {out} --expid {first} --gpu -1\n"
    )
    axes = ", ".join(spec.axes) or "none"
    shared = {k: v for k, v in spec.model_params.items() if k != "dataset_id"}
    parts = [header, f"# base: {spec.base_config} {spec.base_expid}; axes: {axes}\n"]
    parts.append(_dump({"Base": shared}))
    for exp in experiments:
        shown = ", ".join(f"{k}={_cell(v)}" for k, v in exp.tuned.items()) or "no axes"
        parts.append(f"\n# grid point {exp.index}/{spec.n_points}: {shown}\n")
        parts.append(_dump({exp.expid: exp.model_block}))
    blocks: dict[str, dict[str, Any]] = {}
    for exp in experiments:
        blocks.setdefault(exp.dataset_id, exp.dataset_block)
    dataset_text = header + "".join(_dump({k: v}) for k, v in blocks.items())
    atomic_write_text(out / "dataset_config.yaml", dataset_text)
    atomic_write_text(out / "model_config.yaml", "".join(parts))

    for exp in experiments:
        cfg = load_config(out, exp.expid)
        if cfg.hash_check != HASH_OK:  # load_config raises on a mismatch; belt and braces
            raise RuntimeError(f"{exp.expid}: hash check {cfg.hash_check!r} after writing")
        exp.cfg = cfg
    if echo is not None:
        echo(f"wrote {len(experiments)} experiment(s) to {out}/model_config.yaml")
    return out


# ------------------------------------------------------------------------------ running


def run_tuner(
    tuner_file: str | os.PathLike,
    gpus: Sequence[int] = (-1,),
    max_parallel: int | None = None,
    rerun: bool = False,
    dry_run: bool = False,
    run_expid_script: str | os.PathLike | None = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Expand, write and run a tuner file; returns one row per experiment, in grid order.

    ``gpus``: device indices for ``run_expid.py --gpu`` (-1 = CPU); each runs ``max_parallel``
    experiments at a time (default 1). Row keys: ``expid``, every axis key, ``valid_AUC``,
    ``valid_logloss``, ``valid_gAUC``, ``status`` (finished / failed / skipped), ``seconds``,
    and ``launched``, ``resumed``, ``exit_code``, ``run_dir``, ``log``, ``valid`` (the metrics).
    """
    gpus = [int(g) for g in gpus] or [-1]
    per_device = 1 if max_parallel is None else int(max_parallel)
    if per_device < 1:
        raise ConfigError(f"max_parallel must be at least 1, got {max_parallel}")
    if not dry_run:  # before anything is written: every run would fail on a missing GPU
        for g in sorted({g for g in gpus if g >= 0}):
            check_gpu_exists(g)
    spec = read_tuner(tuner_file)
    experiments = plan_grid(spec)
    if not experiments:
        raise ConfigError(f"{spec.path}: the grid is empty")
    for notice in spec.notices:
        echo(f"notice: {notice}")
    config_dir = write_tuner_configs(spec, experiments, echo)
    script = Path(run_expid_script) if run_expid_script else RUN_EXPID
    if not script.is_file():
        raise FileNotFoundError(2, "run_expid.py not found", str(script))

    first_cfg = experiments[0].cfg
    assert first_cfg is not None
    model_root = Path(first_cfg.trainer.model_root)
    csv_path = model_root / f"{spec.name}.csv"
    log_dir = model_root / spec.name / "logs"
    previous = _read_previous_csv(csv_path)
    columns = ["expid", *spec.axes, *METRIC_COLUMNS, "status", "seconds"]

    rows, todo = _plan_rows(experiments, spec, log_dir, previous, rerun, echo)
    n_done = len(rows) - len(todo)
    echo(
        f"{len(rows)} experiment(s): {len(todo)} to run, {n_done} already finished"
        + (" (--rerun: running all)" if rerun else "")
    )
    if dry_run:
        _dry_run(experiments, rows, config_dir, echo)
        return rows

    slots = [g for _ in range(per_device) for g in gpus]
    env = _child_env(slots)
    write_csv = _csv_writer(csv_path, columns, rows)
    write_csv()
    _run_all(todo, rows, slots, script, config_dir, rerun, env, spec.n_points, echo, write_csv)

    _report(rows, spec, first_cfg.trainer, config_dir, gpus[0], csv_path, log_dir, echo)
    return rows


def _plan_rows(
    experiments: list[Experiment],
    spec: TunerSpec,
    log_dir: Path,
    previous: dict[str, Any],
    rerun: bool,
    echo: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[tuple[Experiment, dict[str, Any]]]]:
    """One row per experiment, in grid order (finished ones filled in, also when the same
    experiment finished under another grid number), and the experiments to run."""
    rows: list[dict[str, Any]] = []
    todo: list[tuple[Experiment, dict[str, Any]]] = []
    for exp in experiments:
        assert exp.cfg is not None
        run_dir = exp.cfg.run_dir
        row = {"expid": exp.expid, **{k: exp.tuned[k] for k in spec.axes}}
        row.update({c: None for c in METRIC_COLUMNS})
        row.update(
            status=PENDING,
            seconds=None,
            launched=False,
            resumed=False,
            exit_code=None,
            run_dir=str(run_dir),
            log=str(log_dir / f"{exp.expid}.log"),
            valid=None,
        )
        metrics = _finished_metrics(run_dir)
        if metrics is None and not rerun:  # finished under another grid position?
            earlier = _finished_same_hash(exp.expid, run_dir.parent)
            if earlier is not None:
                run_dir, metrics = earlier
                row["run_dir"] = str(run_dir)
                echo(f"{exp.expid}: the same experiment finished as {run_dir.name}; reusing it")
        if metrics is not None and not rerun:
            _fill_metrics(row, metrics)
            row["status"] = FINISHED
            row["seconds"] = previous.get(exp.expid) or _round(metrics.get("train_seconds"))
        else:
            row["resumed"] = not rerun and (run_dir / "last.pt").is_file()
            todo.append((exp, row))
        rows.append(row)

    return rows, todo


def _dry_run(
    experiments: list[Experiment],
    rows: list[dict[str, Any]],
    config_dir: Path,
    echo: Callable[[str], None],
) -> None:
    """What a run would do, per experiment; every row not finished becomes skipped."""
    for exp, row in zip(experiments, rows):
        what = "skip (finished)" if row["status"] == FINISHED else "run"
        if row["resumed"]:
            what = "resume"
        echo(f"  {exp.expid}  {what:15s}  {_shown(exp.tuned)}")
    for row in rows:
        if row["status"] == PENDING:
            row["status"] = SKIPPED
    echo(f"dry run: configs written to {config_dir}; nothing was run")


def _run_all(
    todo: list[tuple[Experiment, dict[str, Any]]],
    rows: list[dict[str, Any]],
    slots: list[int],
    script: Path,
    config_dir: Path,
    rerun: bool,
    env: dict[str, str],
    n_points: int,
    echo: Callable[[str], None],
    write_csv: Callable[[], None],
) -> None:
    """Run ``todo`` on the slots (one experiment per slot at a time), the CSV rewritten after
    each; interrupted, what still runs is stopped and the CSV stays valid."""
    queue = deque(todo)
    running: dict[int, _Running] = {}
    restore = _sigterm_as_interrupt()
    # a line every ~20 s while runs go (their own output is in their logs)
    progress = Progress(len(todo), "tuner", unit="runs", bar=False, write=echo)
    try:
        while queue or running:
            for slot, gpu in enumerate(slots):
                if slot not in running and queue:
                    exp, row = queue.popleft()
                    running[slot] = _launch(
                        exp, row, gpu, script, config_dir, rerun, env, n_points, echo
                    )
            done = [slot for slot, r in running.items() if r.proc.poll() is not None]
            for slot in done:
                _finish(running.pop(slot), n_points, echo)
                write_csv()
                progress.update(1)
            if not done:
                progress.set_postfix(running=", ".join(r.exp.expid for r in running.values()))
                progress.refresh()
                time.sleep(_POLL_SECONDS)
    finally:
        for r in running.values():  # interrupted: stop what still runs, keep a valid CSV
            _stop(r.proc)
            r.log.close()
            r.row.update(status=FAILED, exit_code=r.proc.returncode)
            r.row["seconds"] = _round(time.perf_counter() - r.started)
        for row in rows:
            if row["status"] == PENDING:
                row["status"] = SKIPPED
        write_csv()
        restore()


def _report(
    rows: list[dict[str, Any]],
    spec: TunerSpec,
    trainer: Any,
    config_dir: Path,
    gpu: int,
    csv_path: Path,
    log_dir: Path,
    echo: Callable[[str], None],
) -> None:
    """The results table, the best experiment with the command that predicts with it, and
    the failures."""
    echo(f"results: {csv_path}")
    monitor, mode = trainer.monitor, trainer.monitor_mode
    echo(format_table(rows, list(spec.axes), monitor, mode))
    best = best_row(rows, monitor, mode)
    if best is not None:
        echo(f"best: {best['expid']} (valid AUC {_cell(best['valid_AUC'])})")
        command = (
            "predict with it: python prediction.py --config "
            f"{shlex.quote(str(config_dir))} --expid {best['expid']} --gpu {gpu}"
        )
        run_dir = Path(best["run_dir"])
        if run_dir.name != best["expid"]:  # reused: it finished under another grid number
            command += f" --checkpoint {shlex.quote(str(run_dir / 'model.pt'))}"
        echo(command)
    failed = [r["expid"] for r in rows if r["status"] == FAILED]
    if failed:
        echo(f"{len(failed)} failed: {', '.join(failed)} (see {log_dir})")


def _launch(
    exp: Experiment,
    row: dict[str, Any],
    gpu: int,
    script: Path,
    config_dir: Path,
    rerun: bool,
    env: dict[str, str],
    total: int,
    echo: Callable[[str], None],
) -> _Running:
    assert exp.cfg is not None
    run_dir = exp.cfg.run_dir
    if rerun:
        # A stale metrics.json would make a failed rerun look finished: keep it aside.
        old = run_dir / "metrics.json"
        if old.is_file():
            os.replace(old, run_dir / "metrics.prev.json")
    cmd = [sys.executable, str(script), "--config", str(config_dir), "--expid", exp.expid]
    cmd += ["--gpu", str(gpu), "--no-progress"]
    if row["resumed"]:
        cmd.append("--resume")
    log_path = Path(row["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in _finish / _stop
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    log.write(f"\n==== {stamp} run_param_tuner: {shlex.join(cmd)}\n")
    log.flush()
    device = "cpu" if gpu < 0 else f"gpu {gpu}"
    verb = "resume" if row["resumed"] else "start"
    echo(f"[{exp.index}/{total}] {verb} {exp.expid} on {device}: {_shown(exp.tuned)}")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    row["launched"] = True
    return _Running(exp=exp, row=row, proc=proc, log=log, started=time.perf_counter())


def _finish(r: _Running, total: int, echo: Callable[[str], None]) -> None:
    r.log.close()
    row = r.row
    row["exit_code"] = r.proc.returncode
    row["seconds"] = _round(time.perf_counter() - r.started)
    metrics = _finished_metrics(Path(row["run_dir"])) if r.proc.returncode == 0 else None
    tag = f"[{r.exp.index}/{total}]"
    if metrics is None:
        row["status"] = FAILED
        why = _last_line(Path(row["log"]))
        echo(f"{tag} FAILED {row['expid']} (exit {r.proc.returncode}): {why} -- {row['log']}")
        return
    _fill_metrics(row, metrics)
    row["status"] = FINISHED
    echo(
        f"{tag} finished {row['expid']} in {row['seconds']}s: valid AUC "
        f"{_cell(row['valid_AUC'])} logloss {_cell(row['valid_logloss'])}"
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _sigterm_as_interrupt() -> Callable[[], None]:
    """Make SIGTERM stop the tuner like Ctrl-C (runs stopped, CSV written); -> undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)


def _child_env(slots: list[int]) -> dict[str, str]:
    """The subprocesses' environment: unbuffered output; CPU runs side by side share the cores
    (each gets physical cores / CPU slots threads, mmctr.threads) unless the user set
    OMP_NUM_THREADS."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cpu_slots = sum(1 for g in slots if g < 0)
    if cpu_slots > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(default_num_threads(cpu_slots))
    return env


# ------------------------------------------------------------------------------ results


def _finished_same_hash(expid: str, folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """A finished run ``<base>_<other NNN>_<hash8>`` in ``folder`` with ``expid``'s base and
    hash (a grown grid renumbers its points; the hash names the experiment)."""
    parsed = parse_tuner_id(expid)
    if parsed is None or not folder.is_dir():
        return None
    base, _, hash8 = parsed
    for run_dir in sorted(folder.glob(f"*_{hash8}")):
        other = parse_tuner_id(run_dir.name)
        if other is not None and other[0] == base and other[2] == hash8:
            metrics = _finished_metrics(run_dir)
            if metrics is not None:
                return run_dir, metrics
    return None


def _finished_metrics(run_dir: Path) -> dict[str, Any] | None:
    """The run folder's metrics.json when the run finished (it holds valid metrics)."""
    try:
        data = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("valid"), dict):
        return None
    return data


def _fill_metrics(row: dict[str, Any], metrics: dict[str, Any]) -> None:
    valid = metrics["valid"]
    row["valid"] = valid
    for col in METRIC_COLUMNS:
        row[col] = valid.get(col.removeprefix("valid_"))


def monitor_of(row: dict[str, Any], monitor: str | dict[str, float]) -> float | None:
    """The row's monitor value (FuxiCTR's weighted sum), None when it has no metrics."""
    valid = row.get("valid")
    if not valid:
        return None
    from mmctr.training.metrics import monitor_value

    try:
        value = monitor_value(valid, monitor)
    except (KeyError, TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _ranked(
    rows: list[dict[str, Any]], monitor: str | dict[str, float], mode: str = "max"
) -> list[dict[str, Any]]:
    sign = -1.0 if mode == "max" else 1.0
    scored = [(monitor_of(r, monitor), i, r) for i, r in enumerate(rows)]
    scored.sort(key=lambda t: (t[0] is None, sign * t[0] if t[0] is not None else 0.0, t[1]))
    return [r for _, _, r in scored]


def best_row(
    rows: list[dict[str, Any]], monitor: str | dict[str, float], mode: str = "max"
) -> dict[str, Any] | None:
    """The finished row with the best monitor (max or min), None when none finished."""
    ranked = [r for r in _ranked(rows, monitor, mode) if r["status"] == FINISHED]
    return ranked[0] if ranked and monitor_of(ranked[0], monitor) is not None else None


def format_table(
    rows: list[dict[str, Any]],
    axes: list[str],
    monitor: str | dict[str, float] = "AUC",
    mode: str = "max",
) -> str:
    """The rows as an aligned text table, best monitor first."""
    columns = ["expid", *axes, *METRIC_COLUMNS, "status", "seconds"]
    cells = [[_cell(r.get(c)) for c in columns] for r in _ranked(rows, monitor, mode)]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _csv_writer(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> Callable[[], None]:
    def write() -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c), exact=True) for c in columns])
        atomic_write_text(path, buf.getvalue())

    return write


def _read_previous_csv(path: Path) -> dict[str, float]:
    """expid -> seconds of the finished rows of an earlier run of this tuner."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError, csv.Error), open(path, encoding="utf-8", newline="") as fh:
        for rec in csv.DictReader(fh):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                if rec["status"] == FINISHED and rec["seconds"]:
                    out[rec["expid"]] = float(rec["seconds"])
    return out


# ------------------------------------------------------------------------------ helpers


def _base_model_params(base_config: Path, base_expid: str) -> dict[str, Any]:
    """Base + the base expid's block, merged as ``load_config`` does (no dataset block)."""
    merged: dict[str, Any] = {}
    for _, block in config_loader.read_expid_blocks(base_config, base_expid, what="base_expid"):
        merged.update(block)
    return copy.deepcopy(merged)


def _dataset_block(path: Path, given: Any, base_config: Path, dataset_id: str) -> dict[str, Any]:
    """The tuner's own dataset block for ``dataset_id``, else the base folder's."""
    if given is not None:
        if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
            raise ConfigError(f"{path}: dataset_config must map dataset ids to dataset blocks")
        if dataset_id not in given:
            raise ConfigError(
                f"{path}: dataset_config has no block {dataset_id!r} (the dataset_id); it has "
                f"{', '.join(map(str, given)) or 'none'}"
            )
        block = given[dataset_id]
    else:
        _, block = config_loader.read_dataset_block(base_config, dataset_id)
    block = copy.deepcopy(block)
    if block.pop("dataset_id", dataset_id) != dataset_id:
        raise ConfigError(f"{path}: the dataset block {dataset_id!r} names another dataset_id")
    return block


class _Dumper(yaml.SafeDumper):
    """Writes YAML that :class:`YamlLoader` reads back to the same values: quotes strings it
    would read as floats (``"1e-3"``), and never writes anchors/aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        return super().increase_indent(flow, False)  # "- item" indented under its key


_Dumper.yaml_implicit_resolvers = YamlLoader.yaml_implicit_resolvers


def _dump(data: dict[str, Any]) -> str:
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=None, width=100, indent=4
    )


def _cell(value: Any, exact: bool = False) -> str:
    """A CSV (``exact``: floats by repr) or table cell (floats to 6 significant digits);
    lists, mappings and booleans as JSON, None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value) if exact or not math.isfinite(value) else f"{value:.6g}"
    return json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def _shown(tuned: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_cell(v)}" for k, v in tuned.items()) or "(no axes)"


def _round(seconds: Any) -> float | None:
    return None if seconds is None else round(float(seconds), 1)


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
        lines = [ln for ln in lines if ln]
        if lines:
            return lines[-1][:200]
    return "(no output)"


__all__ = [
    "Experiment",
    "TunerSpec",
    "best_row",
    "expand_grid",
    "format_table",
    "plan_grid",
    "read_tuner",
    "run_tuner",
    "write_tuner_configs",
]
