"""Reproduce the seed's Model B (ResNet50 transfer learning), done right: recipes/model-b-seed.toml.

    python examples/reproduce_model_b.py --data-dir ~/UTKFace/crop_part1 --out runs/model_b

ImageNet weights come from keras.applications' cache or a local file (``--weights PATH``); without
them the run stops with a message saying which file to put where. ResNet50's own preprocessing is
inside the model and its BatchNorm layers stay in inference mode while the last 30 layers train.
"""

import sys

from _common import run

from agegender.training import SEED_RECIPE

if __name__ == "__main__":
    sys.exit(run(__doc__, recipe="model-b-seed", seed_numbers=SEED_RECIPE["model_b"]))
