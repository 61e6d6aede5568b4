"""Photos people would rather look at: every face boxed and labelled (``F 31``, ``M 8``).

    agegender predict photos/ --annotate out/      # out/<photo name>.jpg, one per input photo

The box line and the label's size follow the photo's size (readable on a 300-pixel thumbnail and
on a 4,000-pixel photo alike), the label no taller or much wider than its face (a crowd stays
legible); it sits above the box (else inside its top edge, else below it, where it would cover
another face or a label already drawn), and moves left where the photo's right edge would cut
it. Boxes are drawn first, labels over them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

COLOURS = {"female": (230, 60, 140), "male": (40, 120, 230)}
MARK = b"annotated by agegender predict --annotate"
"""The JPEG comment of every annotated copy: only a file that carries it is ever written over."""


def _ours(path: Path) -> bool:
    """Whether ``path`` is an annotated copy written before (a later run may replace it)."""
    try:
        with Image.open(path) as image:
            return image.info.get("comment") == MARK
    except Exception:  # a folder, an unreadable or foreign file: not ours
        return False


def label(prediction: dict[str, Any]) -> str:
    """``F 31`` / ``M 8``: the gender's initial and the age in whole years."""
    return f"{prediction['gender'][0].upper()} {round(float(prediction['age']))}"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # FreeType's scalable default (Pillow >= 10.1)
    except (TypeError, OSError):  # pragma: no cover - a Pillow without FreeType
        return ImageFont.load_default()


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _free(rect: tuple[int, int, int, int], taken: list[tuple[int, int, int, int]]) -> bool:
    return not any(_overlaps(rect, other) for other in taken)


def annotate(image: Image.Image, faces: Iterable[dict[str, Any]]) -> Image.Image:
    """A copy of ``image`` (RGB) with each face's ``box`` ([x, y, w, h]) drawn and labelled."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    side = max(out.size)
    line = max(2, round(side / 300))
    fonts: dict[int, ImageFont.ImageFont] = {}
    faces = list(faces)
    boxes = [tuple(int(v) for v in face["box"]) for face in faces]
    for (x, y, w, h), face in zip(boxes, faces, strict=True):
        draw.rectangle([x, y, x + w, y + h], outline=COLOURS.get(face["gender"], (250, 200, 0)),
                       width=line)
    placed: list[tuple[int, int, int, int]] = []
    for i, ((x, y, w, h), face) in enumerate(zip(boxes, faces, strict=True)):
        colour = COLOURS.get(face["gender"], (250, 200, 0))
        # readable on a large photo, and in a crowd no taller than the face nor much wider
        # ("M 55" is about 2.2 font sizes wide; 11 px at least)
        size = max(11, min(round(side / 35), round(0.9 * h), round(0.5 * w)))
        font = fonts.setdefault(size, _font(size))
        text = label(face)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        pad = max(2, th // 5)
        lw, lh = tw + 2 * pad, th + 2 * pad
        # kept inside the photo: a face at its right or left edge keeps its whole label
        tx = max(0, min(x, out.width - lw))
        # above the box, else inside its top edge, else below it: the first that covers no
        # other face and no label already drawn, else the first that covers no label (in a
        # crowd, labels would otherwise hide the faces and labels of the row above)
        spots = [ty for ty in (y - lh, y, y + h) if 0 <= ty <= out.height - lh] or [max(0, y - lh)]
        faces_around = [(bx, by, bx + bw, by + bh) for j, (bx, by, bw, bh) in enumerate(boxes) if j != i]
        ty = next((ty for ty in spots if _free((tx, ty, tx + lw, ty + lh), placed + faces_around)),
                  next((ty for ty in spots if _free((tx, ty, tx + lw, ty + lh), placed)), spots[0]))
        placed.append((tx, ty, tx + lw, ty + lh))
        draw.rectangle([tx, ty, tx + lw, ty + lh], fill=colour)
        draw.text((tx + pad - left, ty + pad - top), text, fill=(255, 255, 255), font=font)
    return out


def write_annotated(predictions: Iterable[dict[str, Any]], files: Iterable[str], out_dir: str | Path,
                    *, read=None, roots: Iterable[str | Path] = ()) -> list[Path]:
    """One annotated JPEG per file in ``out_dir`` (named after the file), with the faces of
    ``predictions`` that belong to it (``<stem>.jpg``; ``<stem>-2.jpg`` and on when that name
    is taken by an earlier file, an input or any file that is not an annotated copy: a photo
    already in ``out_dir`` is never written over); a photo without a face is written unboxed.
    A file inside one of the folders ``roots`` keeps its place below it (``photos/2024/a.jpg``
    read from ``photos`` -> ``out_dir/2024/a.jpg``). ``read(path)`` opens a photo upright
    (default: Pillow with EXIF orientation applied). Returns the paths."""
    from PIL import ImageOps

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_file: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        if "box" in p:
            by_file.setdefault(p["file"], []).append(p)
    written: list[Path] = []
    files = list(files)
    inputs = {Path(f).resolve() for f in files}  # never written over
    roots = [Path(root) for root in roots]
    for file in files:
        if read is not None:
            image = read(file)
        else:
            with Image.open(file) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
        # the first root the file lies in: its subfolders below the root, kept
        folder = next((out_dir / Path(file).parent.relative_to(root) for root in roots
                       if Path(file).is_relative_to(root)), out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{Path(file).stem}.jpg"
        n = 2
        # two inputs of the same name from different folders, an input in out_dir, or a file
        # there that an earlier run did not write (a user's photo)
        while (target in written or target.resolve() in inputs
               or (os.path.lexists(target) and not _ours(target))):
            target = folder / f"{Path(file).stem}-{n}.jpg"
            n += 1
        annotate(image, by_file.get(file, [])).save(target, quality=90, comment=MARK)
        written.append(target)
    return written
