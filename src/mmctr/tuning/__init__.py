"""Hyper-parameter grids: FuxiCTR tuner files expanded into verified expids, run, tabulated.

Example::

    from mmctr.tuning import run_tuner
    rows = run_tuner("config/tuner/demo_tuner.yaml", gpus=[-1])
"""

from mmctr.tuning.tuner import (
    Experiment,
    TunerSpec,
    best_row,
    expand_grid,
    format_table,
    plan_grid,
    read_tuner,
    run_tuner,
    write_tuner_configs,
)

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
