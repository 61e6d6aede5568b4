"""Reproduce the seed's Model A (custom CNN): the recipe recipes/model-a-seed.toml on a UTKFace folder.

    python examples/reproduce_model_a.py --data-dir ~/UTKFace/crop_part1 --out runs/model_a
    python examples/reproduce_model_a.py --recipe model-a-improved --data-dir DIR --out runs/a2

The seed's setup: 5,000 images, 128x128, Adam 1e-3, BCE + MAE, early stopping with patience 10
(``--epochs`` is the maximum). Any ``agegender train`` flag overrides the recipe.
"""

import sys

from _common import run

from agegender.training import SEED_RECIPE

if __name__ == "__main__":
    sys.exit(run(__doc__, recipe="model-a-seed", seed_numbers=SEED_RECIPE["model_a"]))
