"""Blend a trained model with read-outs of dlib's face descriptor (``agegender fit-readouts``).

The last step of the shipped default model: the trained MobileNetV2 stays as it is; dlib's face
recognition network (:mod:`agegender_models.face_descriptor`) turns each training image into 256
features; a logistic regression reads gender from them and a one-hidden-layer network age; the
two are blended into the model's outputs
(:func:`agegender_models.face_descriptor.with_descriptor_readouts`). The descriptor is not
trained, so the step takes about a minute on 2 CPU cores (4,250 images).

scikit-learn fits the read-outs (features standardised, then ``LogisticRegression(C)`` and
``MLPRegressor`` with ReLU, L2 ``alpha``, early stopping on 10 % of the images, seed 0); the
standardisation is folded into each read-out's first weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# chosen on the validation split with a MobileNetV2 trained on the training split alone
# (results/NOTEBOOK.md, "A face descriptor for gender and age"); the command's defaults
DEFAULTS = {"gender_c": 0.01, "age_hidden": 256, "age_alpha": 3.0, "gate_age": 10.0,
            "gate_width": 4.0, "age_weight": 0.4}
# the age network stops early on 10 % of the images: below this there is too little to hold out
MIN_IMAGES = 20


class ReadoutError(ValueError):
    """The read-outs cannot be fitted as asked (missing split, too few images of a gender)."""


def descriptor_features(descriptor, frame, root: Path, *, image_size: int,
                        batch_size: int = 64) -> np.ndarray:
    """The descriptor's features of every row of a split frame, read at ``image_size`` exactly as
    evaluation reads them and resized inside as the blended model resizes them."""
    import keras

    import utkface_data
    from agegender_models.face_descriptor import DESCRIPTOR_INPUT

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    if image_size != DESCRIPTOR_INPUT:
        x = keras.ops.image.resize(x, (DESCRIPTOR_INPUT, DESCRIPTOR_INPUT), interpolation="bilinear")
    features = keras.Model(inputs, descriptor(x))
    dataset = utkface_data.make_dataset(frame, root=root, image_size=(image_size, image_size),
                                        batch_size=batch_size, scaling="uint8")
    return np.asarray(features.predict(dataset, verbose=0), dtype="float64")


def fit_readouts(features: np.ndarray, gender: np.ndarray, age: np.ndarray, *,
                 gender_c: float = DEFAULTS["gender_c"], age_hidden: int = DEFAULTS["age_hidden"],
                 age_alpha: float = DEFAULTS["age_alpha"], seed: int = 0) -> dict[str, Any]:
    """``{"gender": (coef, intercept), "age": [(kernel, bias), ...]}`` on raw features: a
    logistic regression of gender (1 = female) and an MLP regression of age (years; ``age_hidden``
    ReLU units, 0: a ridge regression with ``age_alpha``), each fitted on standardised features
    with the standardisation folded back into its first weights."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.neural_network import MLPRegressor
    from sklearn.preprocessing import StandardScaler

    if len(features) < MIN_IMAGES:
        raise ReadoutError(f"the read-outs need at least {MIN_IMAGES} images to fit on. "
                           f"Received: {len(features)}")
    gender = np.asarray(gender).astype(int)
    counts = np.bincount(gender, minlength=2)
    if len(counts) > 2 or counts.min() < 2:
        raise ReadoutError(f"gender must hold 0 (male) and 1 (female), at least 2 images each. "
                           f"Received counts {counts.tolist()}")
    scaler = StandardScaler().fit(features)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    z = (features - scaler.mean_) / scale

    def unscaled(kernel: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # (x - mean) / scale @ K + b  ==  x @ (K / scale) + (b - mean / scale @ K)
        kernel = np.asarray(kernel).reshape(len(scale), -1) / scale[:, None]
        return kernel, np.ravel(bias) - scaler.mean_ @ kernel

    logistic = LogisticRegression(C=gender_c, max_iter=5000).fit(z, gender)
    coef, intercept = unscaled(logistic.coef_.T, logistic.intercept_)
    age = np.asarray(age, dtype="float64")
    if age_hidden:
        mlp = MLPRegressor(hidden_layer_sizes=(age_hidden,), alpha=age_alpha, early_stopping=True,
                           max_iter=500, random_state=seed).fit(z, age)
        stack = [unscaled(mlp.coefs_[0], mlp.intercepts_[0]),
                 *[(k, b) for k, b in zip(mlp.coefs_[1:], mlp.intercepts_[1:], strict=True)]]
    else:
        ridge = Ridge(alpha=age_alpha).fit(z, age)
        stack = [unscaled(ridge.coef_.T, np.atleast_1d(ridge.intercept_))]
    return {"gender": (coef.ravel(), float(intercept[0])), "age": stack}


def age_readout(stack: list[tuple[np.ndarray, np.ndarray]], features: np.ndarray) -> np.ndarray:
    """The age read-out of :func:`fit_readouts` (its ``"age"`` layers) applied to raw features, in
    numpy: what the blended model computes inside, for analyses outside it."""
    x = np.asarray(features, dtype="float64")
    for i, (kernel, bias) in enumerate(stack):
        x = x @ kernel + bias
        if i < len(stack) - 1:
            x = np.maximum(x, 0.0)
    return x.reshape(-1)


def gender_blend(p_model: np.ndarray, p_descriptor: np.ndarray, age_model: np.ndarray, *,
                 gate_age: float = DEFAULTS["gate_age"],
                 gate_width: float = DEFAULTS["gate_width"]) -> np.ndarray:
    """P(female) as the blended model computes it inside, in numpy, for analyses outside it: the
    descriptor's P(female) trusted ``sigmoid((age_model - gate_age) / gate_width)`` of the way
    from the model's own (:func:`agegender_models.face_descriptor.with_descriptor_readouts`)."""
    p_model = np.asarray(p_model, dtype="float64")
    trust = 1 / (1 + np.exp(-(np.asarray(age_model, dtype="float64") - gate_age) / gate_width))
    return p_model + trust * (np.asarray(p_descriptor, dtype="float64") - p_model)


def _split_frames(splits: Path, root: Path, names: list[str]) -> dict[str, Any]:
    import utkface_data

    frames = {}
    for name in names:
        path = splits / f"{name}.csv"
        if not path.is_file():
            raise ReadoutError(f"split file not found: {path}")
        frames[name] = utkface_data.load_split_file(path, root=root)
    return frames


def run_fit_readouts(*, model_paths: Sequence[Path], face_api: Path, data_dir: Path, splits: Path,
                     out: Path, fit_on: str = "train+val", int8_kernels: bool = False,
                     fold_batchnorm: bool = False, **options: float) -> dict[str, Any]:
    """Fit the read-outs on ``fit_on`` (``train`` or ``train+val``) of ``splits``, blend them into
    the model at ``model_paths`` (several: their ensemble, outputs averaged) and write
    ``out/model.keras`` (no optimizer state, deflated), ``out/config.json``, ``out/metrics.json``
    (the config, the time taken and, when ``splits`` has a test split, the blended model's
    figures on it) and then that test report (``out/report/``). ``int8_kernels``: the model's
    large convolution and dense kernels are stored as int8 codes
    (:func:`agegender_models.layers.quantized_copy`; the descriptor's always are);
    ``fold_batchnorm``: each model's BatchNormalization and ReLU6 layers are folded into the
    convolutions (:func:`agegender_models.layers.folded_copy`: same outputs, loads faster), before
    the int8 storage. Returns the metrics. A model that already holds a face descriptor is refused."""
    from agegender.evaluation import write_evaluation
    from agegender_models import ensemble, load_model, save_model
    from agegender_models.face_descriptor import face_descriptor_model, with_descriptor_readouts
    from agegender_models.layers import folded_copy, quantized_copy

    settings = {**DEFAULTS, **options}
    fit_names = fit_on.split("+")
    if not fit_names or set(fit_names) - {"train", "val"}:
        raise ReadoutError(f"--fit-on must be 'train' or 'train+val'. Received: {fit_on!r}")
    started = time.perf_counter()
    descriptor = face_descriptor_model(face_api)
    has_test = (splits / "test.csv").is_file()
    frames = _split_frames(splits, data_dir, fit_names + (["test"] if has_test else []))
    members = [load_model(path) for path in model_paths]
    for path, member in zip(model_paths, members, strict=True):
        if any(layer.name == "face_descriptor" for layer in member._flatten_layers(recursive=True)):
            raise ReadoutError(f"{path} already holds dlib's face descriptor (it was blended "
                               "before); pass the model it was made from")
    if fold_batchnorm:
        members = [folded_copy(member) for member in members]
    base = members[0] if len(members) == 1 else ensemble(members)
    if int8_kernels:
        base = quantized_copy(base)
    size = int(base.inputs[0].shape[1])
    fit = [frames[name] for name in fit_names]
    features = np.concatenate([descriptor_features(descriptor, f, data_dir, image_size=size)
                               for f in fit])
    readouts = fit_readouts(
        features, np.concatenate([f["gender"].to_numpy() for f in fit]),
        np.concatenate([f["age"].to_numpy() for f in fit]),
        gender_c=settings["gender_c"], age_hidden=int(settings["age_hidden"]),
        age_alpha=settings["age_alpha"])
    model = with_descriptor_readouts(
        base, descriptor, gender=readouts["gender"], age=readouts["age"],
        gate_age=settings["gate_age"], gate_width=settings["gate_width"],
        age_weight=settings["age_weight"])
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / "model.keras", include_optimizer=False, compress=True)
    config = {"model": " + ".join(map(str, model_paths)), "int8_kernels": int8_kernels,
              "fold_batchnorm": fold_batchnorm,
              "face_api": str(face_api), "data_dir": str(data_dir), "splits": str(splits),
              "fit_on": fit_on, "images": int(len(features)), **settings}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    metrics: dict[str, Any] = {"config": config}
    if has_test:
        result = write_evaluation(model, frames["test"], data_dir, out / "report", image_size=size,
                                  title=f"{config['model']} blended with dlib face descriptor read-outs",
                                  extra=config)
        metrics["test"] = result.to_dict()
    metrics["wall_s"] = round(time.perf_counter() - started, 1)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics
