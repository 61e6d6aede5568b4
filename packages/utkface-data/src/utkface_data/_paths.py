"""Resolution of the UTKFace folder: argument -> ``UTKFACE_DIR`` environment variable -> error."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "get_data_dir"]

ENV_VAR = "UTKFACE_DIR"


def get_data_dir(directory: str | os.PathLike[str] | None = None) -> Path:
    """Return the UTKFace image folder as a ``Path``.

    Like scikit-learn's ``get_data_home``: an explicit ``directory`` wins, then the
    ``UTKFACE_DIR`` environment variable. There is no download, so without either an error says
    how to point the library at the images. The folder is checked to exist and be a directory.
    """
    if directory is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            raise FileNotFoundError(
                "no UTKFace folder given: pass directory=... (CLI: DIR) or set the "
                f"{ENV_VAR} environment variable to the folder of UTKFace images, e.g. "
                f"export {ENV_VAR}=/data/utkface/crop_part1"
            )
        directory = env
    path = Path(directory).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"UTKFace folder does not exist: {path}")
    if not path.is_dir():
        raise NotADirectoryError(f"UTKFace path is not a directory: {path}")
    return path
