#!/usr/bin/env python
"""Write the submission: python prediction.py --config config/demo --expid Transformer_DCN_demo --gpu -1

See ``src/mmctr/cli/predict.py`` (``--help``) for every option.
"""

from mmctr.cli.predict import entry

if __name__ == "__main__":
    entry()
