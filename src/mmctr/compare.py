"""Compare the runs under a folder: ``python -m mmctr.compare checkpoints/demo``.

Reads every run folder under the root (``<model_root>/<dataset_id>/<expid>/``, found at any
depth), prints one table sorted by the monitor metric, writes it as CSV and draws one plot
overlaying the valid-AUC curves (x: epoch, so runs with other batch sizes line up).

What a run folder holds (:mod:`mmctr.training.trainer`): ``config.yaml`` (resolved config,
written before the first batch), ``train.log`` (appended by every session), ``last.pt`` (after
each epoch), ``metrics.json`` (only when the run finished), ``model.pt``, event files.

- finished: ``metrics.json`` holds valid metrics (the best weights'), ``history``, ``epochs``,
  ``train_seconds``, ``epoch_seconds``;
- interrupted: a config.yaml or last.pt but no metrics.json; its evaluations so far are read
  from train.log (the ``eval @ epoch ...`` lines of the sessions since its last fresh start);
- anything else (no run file, a config.yaml or metrics.json that does not parse) is listed
  as "not a run" / "incomplete" with the reason, and never stops the comparison.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUN_FILES = ("metrics.json", "config.yaml", "last.pt", "train.log", "model.pt")
METRIC_COLUMNS = ("valid_AUC", "valid_logloss", "valid_gAUC", "test_AUC")
TAIL_COLUMNS = ("epochs", "wall_s", "samples_per_s", "status")
#: keys never shown as hyper-parameters (where the run lives, not what it is)
NOT_PARAMS = frozenset(
    {"expid", "_meta", "feature_cols", "label_col", "data_root", "train_data", "valid_data"}
    | {"test_data", "item_info", "tuner", "tensorboard", "num_threads", "verbose", "gpu"}
    | {"model_root", "num_workers", "pin_memory", "data_on_device", "cuda_graphs"}
)

_EVAL_RE = re.compile(
    r"eval @ epoch (?P<epoch>[\d.]+) step (?P<step>\d+): train_loss (?P<train_loss>\S+) \| "
    r"valid AUC (?P<AUC>\S+) logloss (?P<logloss>\S+) gAUC (?P<gAUC>\S+)"
)
_ROWS_RE = re.compile(r"data: \d+ items, (?P<rows>\d+) train rows")
_EPOCH_RE = re.compile(
    r"epoch (?P<epoch>\d+) done: (?P<samples>\d+) samples, .*?(?P<s>[\d.]+)s since"
)
_SESSION = "=" * 70


@dataclass
class Run:
    """One folder under the root: a run (finished / interrupted) or not."""

    path: Path
    status: str  # finished | interrupted | running? | incomplete: ... | not a run: ...
    expid: str = ""
    model: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    valid: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs: int | None = None
    wall_s: float | None = None
    samples_per_s: float | None = None
    monitor: Any = "AUC"
    monitor_mode: str = "max"

    @property
    def is_run(self) -> bool:
        return self.status in ("finished", "interrupted", "running?")


def find_run_folders(root: Path, max_depth: int = 4) -> list[Path]:
    """Folders under ``root`` (itself included) that hold a run file, or that hold no
    sub-folder (leaves: listed as not runs). Hidden folders are skipped."""
    out: list[Path] = []

    def walk(folder: Path, depth: int) -> None:
        try:
            children = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        except OSError:
            return
        names = {p.name for p in children}
        subdirs = [p for p in children if p.is_dir()]
        is_run = any(n in names for n in RUN_FILES) or any(
            n.startswith("events.out.tfevents.") for n in names
        )
        if is_run or (not subdirs and folder != root):
            out.append(folder)
            return
        if depth < max_depth:
            for sub in subdirs:
                walk(sub, depth + 1)

    walk(root, 0)
    return out


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _params_of(config: dict[str, Any]) -> tuple[dict[str, Any], Any, str]:
    """(hyper-parameters, monitor, monitor_mode) of a saved config.yaml, defaults filled in
    where it still loads."""
    flat = dict(config)
    try:
        import dataclasses

        from mmctr.config import ExperimentConfig

        cfg = ExperimentConfig.from_dict(config)
        flat = {"dataset_id": cfg.dataset.dataset_id}
        for part in (cfg.trainer, cfg.model):
            flat.update(dataclasses.asdict(part))
    except Exception:  # an old or foreign config: compare what it says
        pass
    params = {k: v for k, v in flat.items() if k not in NOT_PARAMS}
    return params, flat.get("monitor", "AUC"), str(flat.get("monitor_mode", "max"))


def _log_sessions(text: str) -> list[str]:
    """train.log's sessions since the last one that started fresh (not resumed)."""
    sessions = [s for s in text.split(_SESSION) if s.strip()]
    keep: list[str] = []
    for s in sessions:
        if "resumed from" not in s:
            keep = []
        keep.append(s)
    return keep


def _from_log(path: Path) -> tuple[list[dict[str, Any]], int | None, float | None]:
    """(evaluations, train rows, samples/s) of the current sessions of a train.log."""
    try:
        sessions = _log_sessions(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return [], None, None
    by_step: dict[int, dict[str, Any]] = {}
    rows = None
    samples = seconds = 0.0
    for session in sessions:
        last_since = 0.0
        for line in session.splitlines():
            if m := _EVAL_RE.search(line):
                rec: dict[str, Any] = {"step": int(m["step"]), "epoch": float(m["epoch"])}
                for k in ("train_loss", "AUC", "logloss", "gAUC"):
                    try:
                        rec[k] = float(m[k])
                    except ValueError:
                        rec[k] = float("nan")
                by_step[rec["step"]] = rec
            elif m := _ROWS_RE.search(line):
                rows = int(m["rows"])
            elif m := _EPOCH_RE.search(line):
                samples += int(m["samples"])
                since = float(m["s"])
                seconds += since - last_since
                last_since = since
    rate = samples / seconds if seconds > 0 else None
    return [by_step[k] for k in sorted(by_step)], rows, rate


def read_run(folder: Path) -> Run:
    """What ``folder`` holds; never raises for a bad or half-written folder."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if not any(n in names for n in RUN_FILES):
        has_events = any(n.startswith("events.out.tfevents.") for n in names)
        why = "event files only" if has_events else "no config.yaml, metrics.json or last.pt"
        return Run(folder, f"not a run: {why}", expid=folder.name)
    run = Run(folder, "interrupted", expid=folder.name)
    if "config.yaml" in names:
        try:
            import yaml

            config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
            if not isinstance(config, dict):
                raise ValueError("not a mapping")
        except Exception as exc:
            return Run(folder, f"incomplete: config.yaml unreadable ({exc})", expid=folder.name)
        run.expid = str(config.get("expid") or folder.name)
        run.model = str(config.get("model", ""))
        run.params, run.monitor, run.monitor_mode = _params_of(config)
    elif "metrics.json" not in names and "last.pt" not in names:
        return Run(folder, "incomplete: train.log only (stopped before training)", folder.name)
    history, rows, log_rate = _from_log(folder / "train.log")
    metrics = None
    if "metrics.json" in names:
        try:
            metrics = _read_json(folder / "metrics.json")
            if not isinstance(metrics, dict) or not isinstance(metrics.get("valid"), dict):
                raise ValueError("no valid metrics")
        except Exception as exc:
            return Run(folder, f"incomplete: metrics.json unreadable ({exc})", run.expid)
    if metrics is not None:
        run.status = "finished"
        run.valid = dict(metrics["valid"])
        run.test = dict(metrics.get("test") or {})
        run.history = [h for h in metrics.get("history", []) if isinstance(h, dict)] or history
        run.epochs = metrics.get("epochs")
        run.wall_s = metrics.get("train_seconds")
        loops = [e.get("loop_seconds", 0) for e in metrics.get("epoch_seconds", [])]
        if rows and sum(loops) > 0:
            run.samples_per_s = rows * len(loops) / sum(loops)
        else:
            run.samples_per_s = log_rate
    else:
        run.history = history
        run.samples_per_s = log_rate
        if history:
            run.epochs = int(math.floor(max(h["epoch"] for h in history)))
            run.valid = dict(_best(history, run.monitor, run.monitor_mode))
            run.valid.pop("step", None), run.valid.pop("epoch", None)
            run.valid.pop("train_loss", None)
        log = folder / "train.log"
        if log.is_file() and time.time() - log.stat().st_mtime < 120:
            run.status = "running?"
    return run


def _monitor(valid: dict[str, Any], monitor: Any) -> float | None:
    from mmctr.training.metrics import monitor_value

    try:
        value = monitor_value(valid, monitor)
    except (KeyError, TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def _best(history: list[dict[str, Any]], monitor: Any, mode: str) -> dict[str, Any]:
    scored = [(v, h) for h in history if (v := _monitor(h, monitor)) is not None]
    if not scored:
        return {}
    pick = max if mode == "max" else min
    return pick(scored, key=lambda t: t[0])[1]


def differing_params(runs: list[Run]) -> list[str]:
    """Hyper-parameters whose values are not the same in every run (absent counts); the
    model name has a column of its own."""
    keys = sorted({k for r in runs for k in r.params} - {"model"})
    out = []
    for k in keys:
        values = {
            json.dumps(r.params.get(k, "(absent)"), sort_keys=True, default=str) for r in runs
        }
        if len(values) > 1:
            out.append(k)
    return out


def ranked(runs: list[Run]) -> list[Run]:
    """Runs best first by the monitor (the first run's monitor and mode), runs without a
    value last, then the folders that are not runs."""
    real = [r for r in runs if r.is_run]
    if not real:
        return list(runs)
    monitor, mode = real[0].monitor, real[0].monitor_mode
    sign = -1.0 if mode == "max" else 1.0
    scored = [(_monitor(r.valid, monitor) if r.valid else None, i, r) for i, r in enumerate(real)]
    scored.sort(key=lambda t: (t[1] is None, sign * t[0] if t[0] is not None else 0.0, t[1]))
    return [r for _, _, r in scored] + [r for r in runs if not r.is_run]


def table_rows(runs: list[Run], root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, one dict per folder) of the comparison, best monitor first."""
    real = [r for r in runs if r.is_run]
    diff = differing_params(real)
    columns = ["expid", "model", *diff, *METRIC_COLUMNS, *TAIL_COLUMNS, "folder"]
    rows = []
    for r in ranked(runs):
        try:
            rel = str(r.path.relative_to(root)) or "."
        except ValueError:
            rel = str(r.path)
        row: dict[str, Any] = {"expid": r.expid, "model": r.model, "status": r.status}
        row["folder"] = rel
        if r.is_run:
            row.update({k: r.params.get(k) for k in diff})
            row.update(
                valid_AUC=r.valid.get("AUC"),
                valid_logloss=r.valid.get("logloss"),
                valid_gAUC=r.valid.get("gAUC"),
                test_AUC=r.test.get("AUC"),
                epochs=r.epochs,
                wall_s=round(r.wall_s, 1) if isinstance(r.wall_s, int | float) else None,
                samples_per_s=round(r.samples_per_s, 1) if r.samples_per_s else None,
            )
        rows.append(row)
    return columns, rows


def cell(value: Any, exact: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if exact:
            return repr(value)
        return f"{value:.5f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, list | dict):
        return json.dumps(value, default=str)
    return str(value)


def format_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row.get(c), exact=True) for c in columns])
    return buf.getvalue()


def plot_valid_auc(runs: list[Run], path: Path) -> bool:
    """One plot, the valid-AUC curve of every run with evaluations; False when none has
    any (or matplotlib is missing): nothing written."""
    curves = [r for r in ranked(runs) if r.is_run and r.history]
    if not curves:
        return False
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmctr.atomic import atomic_open

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in curves:
        pts = [(h.get("epoch"), h.get("AUC")) for h in r.history]
        pts = [(x, y) for x, y in pts if isinstance(x, int | float) and isinstance(y, int | float)]
        ax.plot(
            [x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{r.expid} ({r.status})"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid AUC")
    ax.set_title("valid AUC per evaluation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=100)
    plt.close(fig)
    return True


def compare(
    root: str | Path, csv_path: str | Path | None = None, plot_path: str | Path | None = None
) -> dict[str, Any]:
    """Read every folder under ``root``; write the CSV (default ``<root>/runs.csv``) and the
    plot (default ``<root>/runs_valid_auc.png``). Returns the table text, columns, rows,
    runs and the paths written."""
    from mmctr.atomic import atomic_write_text

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(2, "no such folder", str(root))
    runs = [read_run(p) for p in find_run_folders(root)]
    columns, rows = table_rows(runs, root)
    csv_out = Path(csv_path) if csv_path else root / "runs.csv"
    plot_out = Path(plot_path) if plot_path else root / "runs_valid_auc.png"
    atomic_write_text(csv_out, to_csv(columns, rows))
    plotted = plot_valid_auc(runs, plot_out)
    return {
        "table": format_table(columns, [r for r in rows if _is_run_row(r)]),
        "columns": columns,
        "rows": rows,
        "runs": runs,
        "csv": str(csv_out),
        "plot": str(plot_out) if plotted else None,
        "not_runs": [(r["folder"], r["status"]) for r in rows if not _is_run_row(r)],
    }


def _is_run_row(row: dict[str, Any]) -> bool:
    return row["status"] in ("finished", "interrupted", "running?")


if __name__ == "__main__":
    from mmctr.cli.compare import entry

    entry()
