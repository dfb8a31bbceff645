"""What the drill's cases share: a tiny experiment on disk, the entry points, file checks.

:class:`Workspace` is one folder holding the tiny preset's data, a config folder for it, and
(made on demand) a tiny random CLIP and a trained run. :func:`run_entry` runs an entry point
in this process exactly as ``python <script> ...`` would (through :func:`run_cli`), capturing
what it prints; :func:`spawn_entry` starts it as a real process (for SIGKILL).
:func:`snapshot`, :func:`changes` and :func:`torn_files` tell what a command left on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import traceback
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]  # the repository (run_expid.py, prediction.py, ...)
SCRIPTS = {
    "train": "run_expid.py",
    "predict": "prediction.py",
    "embed": "generate_embeddings.py",
    "tune": "run_param_tuner.py",
}
EXPID = "drill_tiny"
DATASET_ID = "tiny"
TINY_MODEL: dict[str, Any] = {
    "model": "Transformer_DCN",
    "dataset_id": DATASET_ID,
    "embedding_dim": 4,
    "pretrained_proj_dim": 4,
    "transformer_layers": 1,
    "num_heads": 1,
    "dim_feedforward": 8,
    "transformer_dropout": 0.1,
    "first_k_cols": 2,
    "dcn_cross_layers": 1,
    "dcn_hidden_units": [8],
    "mlp_hidden_units": [4],
    "net_dropout": 0.1,
    "batch_size": 128,
    "max_len": 16,
    "epochs": 2,
    "learning_rate": 2.0e-3,
    "early_stop_patience": 5,
    "seed": 7,
    "bf16": False,  # bitwise comparisons must not depend on the CPU's bf16 support
}


@dataclass
class Workspace:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def model_root(self) -> Path:
        return self.root / "ckpt"

    @property
    def run_dir(self) -> Path:
        return self.model_root / DATASET_ID / EXPID

    def experiment_args(self, **extra: str) -> list[str]:
        args = ["--config", str(self.config), "--expid", EXPID, "--gpu", "-1", "--no-progress"]
        for key, value in extra.items():
            args += [f"--{key.replace('_', '-')}", value]
        return args


def make_workspace(root: Path, images: bool = False, **params: Any) -> Workspace:
    """The tiny preset (seed 2025) and a config folder ``config/`` with expid ``drill_tiny``."""
    from mmctr.data.demo import generate

    ws = Workspace(Path(root))
    generate(ws.data, preset="tiny", seed=2025, images=images)
    write_config(ws, **params)
    return ws


def write_config(ws: Workspace, **params: Any) -> None:
    from mmctr.data.contract import microlens_dataset_config

    ws.config.mkdir(parents=True, exist_ok=True)
    ds = asdict(microlens_dataset_config(ws.data, dataset_id=DATASET_ID))
    ds.pop("dataset_id")
    block = {**TINY_MODEL, "model_root": str(ws.model_root), **params}
    dump = {"sort_keys": False, "default_flow_style": None}
    (ws.config / "dataset_config.yaml").write_text(yaml.safe_dump({DATASET_ID: ds}, **dump))
    (ws.config / "model_config.yaml").write_text(yaml.safe_dump({"Base": {}, EXPID: block}, **dump))


def copy_workspace(src: Workspace, dst: Path) -> Workspace:
    """A private copy (paths in the config rewritten to the copy)."""
    shutil.copytree(src.root, dst, symlinks=True)
    for name in ("model_config.yaml", "dataset_config.yaml"):
        path = dst / "config" / name
        path.write_text(path.read_text().replace(str(src.root), str(dst)))
    return Workspace(Path(dst))


# ---- running the entry points ---------------------------------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """``error: ...`` lines (argparse's ``prog: error: ...`` included)."""
        return [ln for ln in self.stderr.splitlines() if _is_error(ln)]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr


def _is_error(line: str) -> bool:
    return line.startswith("error: ") or (
        ": error: " in line and line.split(": error: ")[0] in SCRIPTS.values()
    )


_mains: dict[str, Any] = {}


def _entry_main(command: str):
    """The ``main(argv)`` of a top-level script (loaded from its file, as python runs it)."""
    if command not in _mains:
        path = ROOT / SCRIPTS[command]
        spec = importlib.util.spec_from_file_location(f"_drill_{command}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        main = getattr(module, "main", None)
        if main is None:  # the thin scripts call entry() of the package's cli module
            from mmctr.cli import param_tuner, predict, run_expid

            main = {"train": run_expid, "predict": predict, "tune": param_tuner}[command].main
        _mains[command] = main
    return _mains[command]


def run_entry(command: str, args: list[str]) -> Result:
    """``python <script> args`` in this process: the exit code and what it printed, a
    traceback included when one would have been printed."""
    from mmctr.cli.common import run_cli

    main = _entry_main(command)
    prog = SCRIPTS[command]
    out, err = io.StringIO(), io.StringIO()
    argv0 = sys.argv
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        sys.argv = [prog, *args]
        try:
            run_cli(lambda: main(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # python would print this and exit 1
            traceback.print_exc(file=err)
            code = 1
        finally:
            sys.argv = argv0
    return Result(int(code), out.getvalue(), err.getvalue())


def spawn_entry(command: str, args: list[str], log: Path | None, **kwargs: Any) -> subprocess.Popen:
    """``python <script> args`` as a child process, stdout and stderr appended to ``log``
    (None: to a pipe)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    src = str(ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    sink = subprocess.PIPE if log is None else open(log, "ab")  # noqa: SIM115 (the child holds it)
    try:
        return subprocess.Popen(
            [sys.executable, str(ROOT / SCRIPTS[command]), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=kwargs.pop("cwd", ROOT),
            env=env,
            **kwargs,
        )
    finally:
        if log is not None:
            sink.close()


# ---- what a command left on disk ------------------------------------------------------


def _digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot(*roots: Path) -> dict[str, str]:
    """path -> content digest of every file under ``roots`` (folders as ``<dir>``)."""
    found: dict[str, str] = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                found[os.path.join(dirpath, d)] = "<dir>"
            for f in filenames:
                p = Path(dirpath, f)
                found[str(p)] = "<link>" if p.is_symlink() else _digest(p)
    return found


def is_temp(path: str | Path) -> bool:
    """A temp file of :func:`mmctr.utils.atomic_open` (``.<name>.<random>.tmp``)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(".tmp")


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Files created, changed or removed; logs (appended, never outputs) are left out."""
    keys = set(before) | set(after)
    return sorted(k for k in keys if before.get(k) != after.get(k) and not k.endswith(".log"))


def torn_files(*roots: Path) -> list[str]:
    """Output files under ``roots`` that do not read back whole, each as ``path (why)``."""
    torn = []
    for path_text, digest in snapshot(*roots).items():
        path = Path(path_text)
        if digest in ("<dir>", "<link>") or is_temp(path):
            continue
        why = incomplete(path)
        if why:
            torn.append(f"{path} ({why})")
    return torn


def incomplete(path: Path) -> str | None:
    """Why ``path`` is not a whole file of its kind (None: whole, or a kind not checked)."""
    checks = {
        ".parquet": _parquet_whole,
        ".csv": _csv_whole,
        ".zip": _zip_whole,
        ".npz": _npz_whole,
        ".pt": _checkpoint_whole,
        ".json": lambda p: json.loads(p.read_text()),
        ".yaml": lambda p: yaml.safe_load(p.read_text()),
        ".png": _png_whole,
    }
    check = checks.get(path.suffix)
    if check is None:
        return None
    try:
        check(path)
    except Exception as exc:
        return f"{type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    return None


def _parquet_whole(path: Path) -> None:
    import pyarrow.parquet as pq

    pq.read_table(path)


def _csv_whole(path: Path) -> None:
    import csv

    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("the last line is cut off")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ValueError("empty")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"rows of {sorted(widths)} fields")


def _zip_whole(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        bad = zf.testzip()
        if bad is not None or not zf.namelist():
            raise ValueError(f"bad member {bad}")


def _npz_whole(path: Path) -> None:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            z[key]


def _checkpoint_whole(path: Path) -> None:
    from mmctr.training.checkpoint import load_checkpoint

    load_checkpoint(path)


def _png_whole(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
