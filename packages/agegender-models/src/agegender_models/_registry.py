"""Backbone registry, modelled on timm's ``_registry.py``.

A backbone is a small *entry-point function* decorated with :func:`register_backbone`.
It returns a ``keras.Model`` that maps an already-preprocessed float image batch of
``input_shape`` to a feature map or feature vector; the factory (:func:`create_model`)
adds the preprocessing layer in front and the age/gender head behind it.

Per-backbone defaults (input size, preprocessing mode, weights, head, ...) are a plain
dict passed to the decorator; caller keyword arguments to ``create_model`` override them.

Third-party packages add backbones without touching this package by declaring an entry
point in the ``agegender_models.backbones`` group, e.g. in their ``pyproject.toml``::

    [project.entry-points."agegender_models.backbones"]
    my_net = "my_package.backbones:my_net"

The target is either a function already decorated with ``@register_backbone`` (importing
it registers it) or a plain entry-point function, which is then registered under the entry
point's name with default settings.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

ENTRY_POINT_GROUP = "agegender_models.backbones"

# Defaults every backbone starts from; a backbone's own dict overrides these.
BASE_CFG: dict[str, Any] = {
    "input_shape": (224, 224, 3),
    # one of agegender_models.layers.PREPROCESSING_MODES
    "preprocessing": "unit",
    # None, "imagenet" or a path
    "weights": None,
    # file names keras.applications stores its ImageNet weights under (first one is named in errors)
    "imagenet_files": (),
    # None = whole backbone trainable; int N = only the last N backbone layers
    "trainable_layers": None,
    # smallest height/width the backbone accepts
    "min_size": 32,
    # True for pretrained keras.applications backbones: every BatchNormalization stays in
    # inference mode (frozen statistics), also while fine-tuning
    "bn_inference": True,
    # head: pooling ("flatten" | "avg" | "max"), dense widths, dropout after each dense
    "head": "avg",
    "dense": (256,),
    "dropout": 0.3,
}


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone: its entry-point function and its default settings."""

    name: str
    fn: Callable[..., Any]
    default_cfg: Mapping[str, Any] = field(default_factory=dict)
    source: str = "builtin"

    def cfg(self) -> dict[str, Any]:
        return {**BASE_CFG, **self.default_cfg}


_backbones: dict[str, BackboneSpec] = {}
_plugins_loaded = False


def register_backbone(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    default_cfg: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Any:
    """Register a backbone entry-point function (usable bare or with arguments).

    ``fn(*, input_shape, name)`` must return a ``keras.Model`` whose input is a float image
    batch already preprocessed as ``default_cfg["preprocessing"]`` says.

    Example::

        @register_backbone(default_cfg={"input_shape": (96, 96, 3), "preprocessing": "tf"})
        def tiny_net(*, input_shape, name="backbone"):
            ...
    """

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        key = name or func.__name__
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"Backbone names must be identifiers. Received: name={key!r}")
        if key in _backbones and not overwrite and _backbones[key].fn is not func:
            raise ValueError(
                f"A backbone named {key!r} is already registered "
                f"(by {_backbones[key].source}). Pass overwrite=True to replace it."
            )
        unknown = set(default_cfg or {}) - set(BASE_CFG)
        if unknown:
            raise ValueError(
                f"Unknown default_cfg keys for backbone {key!r}: {sorted(unknown)}. "
                f"Valid keys: {sorted(BASE_CFG)}"
            )
        _backbones[key] = BackboneSpec(
            key, func, dict(default_cfg or {}), source=getattr(func, "__module__", "?")
        )
        return func

    if fn is not None:
        return decorator(fn)
    return decorator


def load_backbone_plugins(*, reload: bool = False) -> list[str]:
    """Import backbones declared by installed packages (entry-point group
    ``agegender_models.backbones``). Called automatically on first registry use;
    returns the names that are registered by plugins. A broken plugin is skipped with a warning.
    """
    global _plugins_loaded
    from . import backbones  # noqa: F401  (the built-in backbones register first, on first use)

    if _plugins_loaded and not reload:
        return [k for k, s in _backbones.items() if s.source.startswith("plugin:")]
    _plugins_loaded = True
    added: list[str] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        before = set(_backbones)
        try:
            obj = ep.load()
        except Exception as exc:  # a third-party bug must not break our registry
            warnings.warn(
                f"Could not load backbone plugin {ep.name!r} ({ep.value}): {exc!r}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if ep.name not in _backbones and callable(obj) and ep.name not in before:
            register_backbone(obj, name=ep.name)
        for key in set(_backbones) - before:
            spec = _backbones[key]
            _backbones[key] = BackboneSpec(
                spec.name, spec.fn, spec.default_cfg, source=f"plugin:{ep.value}"
            )
            added.append(key)
    return added


def list_backbones(pattern: str = "*") -> list[str]:
    """Sorted names of registered backbones matching a shell-style ``pattern``."""
    load_backbone_plugins()
    return sorted(n for n in _backbones if fnmatch.fnmatchcase(n, pattern))


def get_backbone(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` for ``name``; ``ValueError`` listing valid names if unknown."""
    load_backbone_plugins()
    if not isinstance(name, str) or name not in _backbones:
        raise ValueError(
            f"Unknown backbone. Valid backbones: {', '.join(sorted(_backbones))}. "
            f"Received: backbone={name!r}"
        )
    return _backbones[name]


def backbone_defaults(name: str) -> dict[str, Any]:
    """The merged default settings of a backbone (a copy; safe to modify)."""
    return get_backbone(name).cfg()
