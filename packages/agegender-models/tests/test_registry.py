"""Registry: listing, unknown names, overrides, third-party backbones via entry points."""

from __future__ import annotations

import sys
import textwrap

import keras
import pytest

import agegender_models
from agegender_models import (
    ENTRY_POINT_GROUP,
    _registry,
    backbone_defaults,
    create_model,
    list_backbones,
    load_backbone_plugins,
    register_backbone,
)


def test_public_contract_imports():
    for name in ("create_model", "list_backbones", "register_backbone", "load_model"):
        assert callable(getattr(agegender_models, name))


def test_list_backbones_pattern():
    assert list_backbones("mobilenet*") == ["mobilenet_v2", "mobilenet_v3_small"]
    assert list_backbones() == sorted(list_backbones())


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="Unknown backbone") as info:
        create_model("resnet5O")
    for name in list_backbones():
        assert name in str(info.value)
    assert "resnet5O" in str(info.value)


def test_duplicate_registration_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(lambda **kw: None, name="custom_cnn")
    with pytest.raises(ValueError, match="Unknown default_cfg keys"):
        register_backbone(lambda **kw: None, name="bad_cfg", default_cfg={"input_size": 3})


def test_caller_kwargs_override_defaults():
    assert backbone_defaults("custom_cnn")["dense"] == (512, 512)
    model = create_model("custom_cnn", input_shape=(32, 48, 3), dense=(16,), dropout=0.0,
                         head="avg", age_range=(1.0, 116.0), name="small")
    assert model.name == "small"
    assert model.input_shape == (None, 32, 48, 3)
    assert model.get_layer("dense1").units == 16
    assert model.get_layer("avg_pool")
    assert not [la for la in model.layers if isinstance(la, keras.layers.Dropout)]
    with pytest.raises(ValueError):
        model.get_layer("dense2")
    assert model.get_layer("age").max_age == 116.0


PLUGIN = '''
import keras
from agegender_models import register_backbone


@register_backbone(default_cfg={"input_shape": (32, 32, 3), "preprocessing": "tf",
                                "bn_inference": False, "min_size": 8})
def tiny_plugin_net(*, input_shape, name="backbone"):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(4, 3, strides=2, name="c1")(inputs)
    return keras.Model(inputs, x, name=name)


def bare_plugin_net(*, input_shape, name="backbone"):
    inputs = keras.Input(input_shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, x, name=name)
'''


@pytest.fixture()
def plugin_package(tmp_path, monkeypatch):
    """A tiny installed distribution that declares two backbones in our entry-point group."""
    load_backbone_plugins()  # whatever is installed already, before the tiny package appears
    (tmp_path / "tiny_plugin_mod.py").write_text(PLUGIN)
    dist = tmp_path / "tiny_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tiny-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(f"""\
        [{ENTRY_POINT_GROUP}]
        tiny_plugin_net = tiny_plugin_mod:tiny_plugin_net
        bare_plugin_net = tiny_plugin_mod:bare_plugin_net
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("tiny_plugin_net", "bare_plugin_net"):
        _registry._backbones.pop(name, None)
    sys.modules.pop("tiny_plugin_mod", None)


def test_entry_point_plugin_adds_backbones(plugin_package):
    assert "tiny_plugin_net" not in list_backbones()
    added = load_backbone_plugins(reload=True)
    assert {"tiny_plugin_net", "bare_plugin_net"} <= set(added)
    assert {"tiny_plugin_net", "bare_plugin_net"} <= set(list_backbones())
    assert _registry.get_backbone("tiny_plugin_net").source.startswith("plugin:")
    model = create_model("tiny_plugin_net", weights=None)
    assert model.input_shape == (None, 32, 32, 3)
    assert model.get_layer("preprocess").mode == "tf"
    out = model(keras.ops.zeros((2, 32, 32, 3)))
    assert set(out) == {"gender", "age"}
    # a bare function is registered under its entry-point name with default settings
    bare = create_model("bare_plugin_net", weights=None, input_shape=(32, 32, 3))
    assert set(bare(keras.ops.zeros((1, 32, 32, 3)))) == {"gender", "age"}
