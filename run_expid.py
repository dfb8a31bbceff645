#!/usr/bin/env python
"""Train one experiment: python run_expid.py --config config/demo --expid Transformer_DCN_demo --gpu -1

See ``src/mmctr/cli/run_expid.py`` (``--help``) for every option.
"""

from mmctr.cli.run_expid import entry

if __name__ == "__main__":
    entry()
