#!/usr/bin/env python
"""Compare the runs under a folder: python compare_runs.py checkpoints/demo

The same as ``python -m mmctr.compare``; see ``src/mmctr/cli/compare.py`` (``--help``).
"""

from mmctr.cli.compare import entry

if __name__ == "__main__":
    entry()
