"""``utkface-data`` command line: ``index DIR`` (report) and ``split DIR --out OUT``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__
from .errors import DatasetError
from .index import index_folder
from .splits import save_splits, split_frame, subset

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="utkface-data",
        description="Index and split a folder of UTKFace images (labels in the file names).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("dir", nargs="?", default=None, help="image folder (default: $UTKFACE_DIR)")
        p.add_argument("--recursive", action="store_true", help="also index sub-folders")
        p.add_argument(
            "--verify-images",
            action="store_true",
            help="decode every image; quarantine unreadable ones",
        )
        p.add_argument(
            "--corrections",
            default=None,
            help="CSV file,age,gender,race[,datetime] giving labels for named files",
        )
        p.add_argument(
            "--strict", action="store_true", help="fail on any malformed or unreadable file"
        )
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p_index = sub.add_parser("index", help="scan a folder and print a report")
    common(p_index)
    p_index.add_argument(
        "--json", action="store_true", help="print one JSON object instead of text"
    )

    p_split = sub.add_parser("split", help="write train/val/test CSV files (paths relative to DIR)")
    common(p_split)
    p_split.add_argument(
        "--n", type=int, default=None, help="stratified subset size (default: all images)"
    )
    p_split.add_argument("--seed", type=int, default=0)
    p_split.add_argument("--val", type=float, default=0.15)
    p_split.add_argument("--test", type=float, default=0.15)
    p_split.add_argument(
        "--out", required=True, help="output folder for train.csv, val.csv, test.csv"
    )
    p_split.add_argument("--json", action="store_true", help="print the counts as JSON")
    return parser


def _run(args: argparse.Namespace) -> int:
    idx = index_folder(
        args.dir,
        recursive=args.recursive,
        verify_images=args.verify_images,
        corrections=args.corrections,
        strict=args.strict,
        progress=not args.no_progress,
    )
    if args.command == "index":
        print(
            json.dumps(idx.report.to_dict(), ensure_ascii=False) if args.json else str(idx.report)
        )
        return 0
    frame = idx.frame
    if args.n is not None:
        frame = subset(frame, args.n, seed=args.seed)
    splits = split_frame(frame, val=args.val, test=args.test, seed=args.seed)
    written = save_splits(splits, args.out)
    counts = {name: len(df) for name, df in zip(written, splits, strict=True)}
    if args.json:
        print(
            json.dumps(
                {
                    "root": str(idx.root),
                    "out": str(args.out),
                    "counts": counts,
                    "quarantined": len(idx.report.quarantined),
                }
            )
        )
    else:
        print(
            f"{sum(counts.values())} images from {idx.root} "
            f"({len(idx.report.quarantined)} quarantined): "
            + ", ".join(f"{k} {v} -> {written[k]}" for k, v in counts.items())
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. Returns 0 on success, 1 with a one-line message on stderr for unusable input."""
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (DatasetError, FileNotFoundError, NotADirectoryError, ValueError, OSError) as exc:
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"utkface-data: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
