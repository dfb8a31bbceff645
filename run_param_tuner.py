#!/usr/bin/env python
"""Run a grid of experiments: python run_param_tuner.py --config config/tuner/demo_tuner.yaml --gpu -1

See ``src/mmctr/cli/param_tuner.py`` (``--help``) for every option.
"""

from mmctr.cli.param_tuner import entry

if __name__ == "__main__":
    entry()
