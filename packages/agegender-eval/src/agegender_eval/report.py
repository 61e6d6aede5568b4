"""`write_report`: ``report.md`` + ``metrics.json`` + one PNG per figure in a folder."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from agegender_eval.evaluate import EvalResult

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FORMATS = ("png", "svg", "pdf")


def write_report(
    result: EvalResult,
    figures: Mapping[str, Figure] | None,
    out_dir: str | Path,
    *,
    title: str = "Age and gender evaluation",
    extra: Mapping[str, Any] | None = None,
    formats: Iterable[str] = ("png",),
    dpi: int = 120,
) -> Path:
    """Write ``report.md``, ``metrics.json`` and ``<name>.png`` per figure into ``out_dir``.

    ``report.md`` embeds the figures with relative links, so the folder renders on GitHub as is;
    it shows the overall + age-group table first, then gender, fine age bins and fairness tables.
    ``metrics.json`` is ``result.to_dict()`` plus the ``extra`` top-level keys (e.g. the run
    config); ``extra`` may not overwrite a metric key. ``formats`` adds e.g. ``"svg"`` copies
    (PNG is always written, the report links it). Existing files of the same name are overwritten.

    Returns the path of ``report.md``.
    """
    if not isinstance(result, EvalResult):
        raise ValueError(f"`result` must be an EvalResult (from evaluate). Received: result of type {type(result).__name__}")
    figures = {} if figures is None else figures
    if not isinstance(figures, Mapping):
        raise ValueError(f"`figures` must be a mapping name -> Figure. Received: figures of type {type(figures).__name__}")
    for name, fig in figures.items():
        if not isinstance(name, str) or not _NAME.match(name) or name in ("report", "metrics"):
            raise ValueError(
                "Figure names must be file-name safe (letters, digits, '_', '-', '.'; not 'report'/'metrics'). "
                f"Received: name={name!r}"
            )
        if not isinstance(fig, Figure):
            raise ValueError(f"`figures` values must be matplotlib Figures. Received: figures[{name!r}] of type {type(fig).__name__}")
    fmts = [formats] if isinstance(formats, str) else list(formats)
    bad = [f for f in fmts if f not in _FORMATS]
    if bad:
        raise ValueError(f"`formats` must be among {_FORMATS}. Received: formats={fmts!r}")
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"`title` must be a non-empty string. Received: title={title!r}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_json = result.to_json(extra=extra)  # validates `extra` before anything is written
    images: dict[str, str] = {}
    for name, fig in figures.items():
        for fmt in dict.fromkeys(["png", *fmts]):
            fig.savefig(out / f"{name}.{fmt}", dpi=dpi, format=fmt)
        images[name] = f"{name}.png"
    (out / "metrics.json").write_text(metrics_json + "\n", encoding="utf-8")
    md = result.to_markdown(title=title, images=images)
    if extra:
        md += "\n## Run\n\n" + _extra_table(extra) + "\n\nAll numbers are also in [metrics.json](metrics.json).\n"
    else:
        md += "\nAll numbers are also in [metrics.json](metrics.json).\n"
    report = out / "report.md"
    report.write_text(md, encoding="utf-8")
    return report


def _extra_table(extra: Mapping[str, Any]) -> str:
    lines = ["| key | value |", "|:---|:---|"]
    for k, v in extra.items():
        raw = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
        text = raw.replace("|", "\\|").replace("\n", " ").replace("`", "'")
        if len(text) > 120:
            text = text[:117] + "…"
        lines.append(f"| {str(k).replace('|', chr(92) + '|')} | `{text}` |")
    return "\n".join(lines)
