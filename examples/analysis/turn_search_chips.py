"""How often the YuNet detectors' search for sideways photos runs, and turns, on UTKFace chips
(all upright, so every turn is a mistake): detection only, no labels, no model.

    python examples/analysis/turn_search_chips.py --data-dir ../shared/utkface/crop_part1_5000 \\
        --split results/model_a/splits/train.csv [--detect yunet-onet]

A chip is searched when its best face scores under ``turn_below`` (0.9), and turned when the
search keeps a turn (``detect_faces_turned``). Prints counts, and each turned chip's path, as
JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--detect", default="yunet-onet")
    args = parser.parse_args(argv)

    from agegender_models.detect import get_detector
    from agegender_models.imageio import read_image

    detector = get_detector(args.detect)
    paths = pd.read_csv(args.split)["path"]
    searched, turned, no_face = 0, [], 0
    for path in paths:
        faces, turns = detector.detect_faces_turned(read_image(args.data_dir / path))
        no_face += not faces
        searched += turns is not None
        if turns:
            turned.append(path)
    print(json.dumps({"split": str(args.split), "detect": args.detect, "turn_below": detector.turn_below,
                      "chips": len(paths), "no_face": no_face, "searched": searched,
                      "turned": len(turned), "turned_paths": turned}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
