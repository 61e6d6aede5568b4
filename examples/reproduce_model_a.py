"""Reproduce the seed's Model A (custom CNN) end to end.

    python examples/reproduce_model_a.py --data-dir ~/UTKFace/crop_part1 --out runs/model_a

Defaults are the seed's setup: 5,000 images, 128x128, Adam 1e-3, BCE + MAE, early stopping with
patience 10 (``--epochs`` is the maximum). See ``--help`` for the improved recipe's options.
"""

import sys

from _common import run

from agegender.training import SEED_RECIPE

if __name__ == "__main__":
    sys.exit(run(__doc__, backbone="custom_cnn", seed_numbers=SEED_RECIPE["model_a"]))
