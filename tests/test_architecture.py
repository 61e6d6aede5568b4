"""The arrows between the packages point one way (see ../shared/STYLE.md).

`utkface_data` and `agegender_eval` never import `agegender_models`; `agegender_eval` never imports
TensorFlow/Keras or `utkface_data`; `agegender_models` never imports the other two; no library
imports the application (`agegender`), which alone composes all three. No module is exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ROOT / "packages"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _sources(dist: str, import_name: str) -> list[Path]:
    files = sorted((PACKAGES / dist / "src" / import_name).rglob("*.py"))
    assert files, f"no sources found for {dist}"
    return files


FORBIDDEN = {
    ("utkface-data", "utkface_data"): {"agegender_models", "agegender_eval", "agegender"},
    ("agegender-eval", "agegender_eval"): {"agegender_models", "utkface_data", "tensorflow", "keras",
                                           "agegender"},
    ("agegender-models", "agegender_models"): {"utkface_data", "agegender_eval", "agegender"},
}


@pytest.mark.parametrize(("package", "forbidden"), FORBIDDEN.items(), ids=lambda p: str(p))
def test_one_way_arrows(package: tuple[str, str], forbidden: set[str]) -> None:
    dist, import_name = package
    offenders = []
    for path in _sources(dist, import_name):
        bad = _imports(path) & forbidden
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not offenders, "arrows point the wrong way:\n" + "\n".join(offenders)


def test_arrow_checker_sees_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom agegender_models.factory import x\nfrom . import y\n")
    assert _imports(module) == {"os", "agegender_models"}


def test_library_metadata_names_no_sibling() -> None:
    """`pip install ./packages/agegender-models` stays lean: no extra pulls in a sibling."""
    import tomllib

    for dist in ("utkface-data", "agegender-eval", "agegender-models"):
        project = tomllib.loads((PACKAGES / dist / "pyproject.toml").read_text())["project"]
        required = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            required += extra
        siblings = {"utkface-data", "agegender-eval", "agegender-models", "agegender"} - {dist}
        named = {r.split("[")[0].split(" ")[0].split("@")[0].strip() for r in required}
        assert not named & siblings, f"{dist} depends on {sorted(named & siblings)}"
