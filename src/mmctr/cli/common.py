"""Shared command-line plumbing for the entry points (run_expid.py, prediction.py, ...).

    def main() -> int:
        parser = argparse.ArgumentParser(description=__doc__)
        add_experiment_args(parser)
        args = parser.parse_args()
        cfg = load_experiment(args)
        ...

    if __name__ == "__main__":
        run_cli(main)

Mistakes a user can fix (a bad config, a data file that breaks the data contract, a missing
file) end as one ``error: ...`` paragraph on stderr and exit code 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from mmctr.atomic import WRITE_FAILURES, OutputError
from mmctr.config.errors import ConfigError
from mmctr.device import DeviceError

if TYPE_CHECKING:
    from mmctr.config.loader import ExperimentConfig

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """Something the user asked for that cannot be done (not a bug): reported without a
    traceback by :func:`run_cli`."""


def add_experiment_args(parser: argparse.ArgumentParser) -> None:
    """``--config DIR --expid ID [--gpu N] [--override KEY=VALUE ...] [--threads N]
    [--allow-hash-mismatch]``."""
    parser.add_argument(
        "--config",
        required=True,
        metavar="DIR",
        help="config folder with model_config.yaml and dataset_config.yaml (e.g. config/demo)",
    )
    parser.add_argument(
        "--expid", required=True, metavar="ID", help="experiment id: a block of model_config"
    )
    parser.add_argument(
        "--gpu", type=int, default=-1, metavar="N", help="CUDA device index; -1 = CPU (default)"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a config key after merging, value read as YAML "
        "(repeatable): --override learning_rate=5e-4 --override dcn_hidden_units=[64,32]",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="CPU threads of a CPU run (the num_threads key); default: the physical cores "
        "this process may use, minus those other work keeps busy, or OMP_NUM_THREADS if set",
    )
    parser.add_argument(
        "--allow-hash-mismatch",
        action="store_true",
        help="run a tuner id <base>_<NNN>_<hash8> whose parameters no longer match its hash "
        "(the mismatch is recorded in the run's config)",
    )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def load_experiment(args: argparse.Namespace) -> ExperimentConfig:
    """``load_config`` from the arguments of :func:`add_experiment_args`."""
    from mmctr.config.loader import load_config

    return load_config(
        args.config,
        args.expid,
        overrides=overrides_of(args),
        allow_hash_mismatch=args.allow_hash_mismatch,
    )


def overrides_of(args: argparse.Namespace) -> list[str]:
    """``--override`` values, plus ``num_threads=N`` for ``--threads N``."""
    extra = [f"num_threads={args.threads}"] if getattr(args, "threads", None) else []
    return [*args.override, *extra]


def _user_error_types() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [
        ConfigError,
        UserError,
        FileNotFoundError,
        DeviceError,
        OutputError,
    ]
    # The data and training layers may not be imported; an exception of their classes can
    # only have been raised if its module is loaded, so look there instead of importing it.
    for module, name in (
        ("mmctr.data.contract", "DataContractError"),
        ("mmctr.training.trainer", "MonitorNotFinite"),
        ("mmctr.training.checkpoint", "CheckpointError"),
        ("mmctr.prediction.submission", "SubmissionError"),
    ):
        kind = getattr(sys.modules.get(module), name, None)
        if isinstance(kind, type) and issubclass(kind, BaseException):
            kinds.append(kind)
    return tuple(kinds)


def describe_user_error(exc: BaseException) -> str:
    """The one-paragraph message ``run_cli`` prints (without the ``error: `` prefix)."""
    if isinstance(exc, OutputError):
        return str(exc.strerror)
    if isinstance(exc, FileNotFoundError | PermissionError) and exc.filename is not None:
        return f"{exc.strerror or 'file not found'}: {exc.filename}"
    if _cannot_write(exc):
        return f"could not write {exc.filename}: {exc.strerror} (errno {exc.errno})"
    return str(exc) or type(exc).__name__


def _cannot_write(exc: BaseException) -> bool:
    """A full disk or a read-only / forbidden place for a named file (a folder being made)."""
    return isinstance(exc, OSError) and exc.errno in WRITE_FAILURES and exc.filename is not None


def run_cli(main: Callable[[], int | None]) -> NoReturn:
    """Run ``main()`` and exit with its return code (None = 0).

    User errors -> ``error: <paragraph>`` on stderr, exit 2; Ctrl-C -> exit 130; any other
    exception propagates with its traceback.
    """
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        if not (isinstance(exc, _user_error_types()) or _cannot_write(exc)):
            raise
        print(f"error: {describe_user_error(exc)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    sys.exit(0 if code is None else int(code))
