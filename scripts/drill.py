#!/usr/bin/env python
"""The reliability drill (``make drill``): faults injected into every long-running command and
a corpus of bad inputs, on the tiny preset; ends with one line of counts, exit 1 if any falls
short. ``python scripts/drill.py -v`` prints a line per case; ``--only faults|inputs``.

See ``src/mmctr/drill/`` for what is injected and what counts as handled.
"""

from mmctr.drill import main

if __name__ == "__main__":
    raise SystemExit(main())
