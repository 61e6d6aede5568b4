"""Model A's layer structure, read from the layers; preprocessing equals keras.applications'."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from agegender_models import Preprocess, create_model


def test_model_a_matches_the_seed_description():
    model = create_model("custom_cnn", weights=None)
    assert model.input_shape == (None, 128, 128, 3)
    assert model.get_layer("preprocess").mode == "unit"  # [0, 1]

    backbone = model.get_layer("backbone")
    body = [la for la in backbone.layers if not isinstance(la, keras.layers.InputLayer)]
    assert len(body) == 12
    for i, filters in enumerate((64, 128, 256, 512)):
        conv, pool, bn = body[3 * i : 3 * i + 3]
        assert isinstance(conv, keras.layers.Conv2D)
        assert conv.filters == filters
        assert conv.kernel_size == (3, 3)
        assert conv.activation is keras.activations.relu
        assert isinstance(pool, keras.layers.MaxPooling2D)
        assert isinstance(bn, keras.layers.BatchNormalization)

    after = [la for la in model.layers if la.name not in ("image", "preprocess", "backbone")]
    kinds = [type(la).__name__ for la in after]
    assert kinds[:5] == ["Flatten", "Dense", "Dropout", "Dense", "Dropout"]
    for dense in (after[1], after[3]):
        assert dense.units == 512
        assert dense.activation is keras.activations.relu
    gender, age_dense = model.get_layer("gender"), model.get_layer("age_dense")
    assert gender.units == 1 and gender.activation is keras.activations.sigmoid
    assert age_dense.units == 1
    assert float(keras.ops.convert_to_numpy(age_dense.bias)[0]) == 33.0
    # both heads read the second dropout's output
    assert gender.input is after[4].output and age_dense.input is after[4].output


@pytest.mark.parametrize(
    ("mode", "reference"),
    [
        ("caffe", keras.applications.resnet50.preprocess_input),
        ("tf", keras.applications.mobilenet_v2.preprocess_input),
        ("torch", lambda x: keras.applications.imagenet_utils.preprocess_input(x, mode="torch")),
        ("unit", lambda x: x / 255.0),
    ],
)
def test_preprocessing_equals_keras_applications(mode, reference):
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.float32)
    got = keras.ops.convert_to_numpy(Preprocess(mode)(x.astype(np.uint8)))
    np.testing.assert_allclose(got, reference(x.copy()), rtol=1e-5, atol=1e-4)


def test_preprocess_rejects_unknown_mode():
    with pytest.raises(ValueError, match="Received: mode='bgr'"):
        Preprocess("bgr")
