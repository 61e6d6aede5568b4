"""The data of a training run: index, subset and split a UTKFace folder, and batch it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import utkface_data
from agegender.config import TrainConfig


def fingerprint(frame) -> str:
    """SHA-256 over the sorted (path, age, gender, race) rows of the images used."""
    digest = hashlib.sha256()
    for row in frame.sort_values("path").itertuples(index=False):
        digest.update(f"{row.path},{row.age},{row.gender},{row.race}\n".encode())
    return digest.hexdigest()


def prepare_splits(config: TrainConfig, out: Path):
    """Index + subset + split (or load the given split files) and write ``out/splits``;
    returns (splits, root, index report or None)."""
    splits_out = out / "splits"
    if config.splits is not None or (splits_out / "train.csv").exists():
        # Given split files, or resuming: keep exactly the split the run started with.
        root = utkface_data.get_data_dir(config.data_dir)
        splits = utkface_data.load_splits(config.splits or splits_out, root=root)
        report = None
    else:
        index = utkface_data.index_folder(config.data_dir, progress=False)
        root = index.root
        frame = index.frame
        if config.n is not None and config.n < len(frame):
            frame = utkface_data.subset(frame, config.n, seed=config.seed)
        splits = utkface_data.split_frame(frame, val=config.val, test=config.test, seed=config.seed)
        report = index.report
    empty = [name for name, part in zip(("train", "val", "test"), splits, strict=True) if len(part) == 0]
    if empty:
        raise ValueError(
            f"the {'/'.join(empty)} split would be empty with n={config.n}, val={config.val}, "
            f"test={config.test}: use more images or larger fractions"
        )
    utkface_data.save_splits(splits, splits_out)
    return splits, Path(root), report


def index_summary(report) -> dict[str, Any]:
    """What the index saw, for config.json (files set aside are listed, never silently dropped)."""
    return {
        "files_seen": report.files_seen,
        "indexed": report.indexed,
        "quarantined": list(report.quarantined),
        "not_images": list(report.not_images),
        "set_aside": list(report.set_aside),
    }


def batches(frame, root: Path, config: TrainConfig, *, training: bool, replicas: int = 1,
            augment: bool | None = None):
    """Training/validation batches (``augment``: default ``config.augment`` when training).

    With several replicas the last partial batch is dropped (Keras' ``tf.distribute`` path fails
    on a batch that does not split evenly), and the batch is shrunk when the split is smaller than
    one batch. This affects only the per-epoch figures; the final validation and test metrics
    are computed on every image with the best model, outside the strategy.
    """
    batch_size = config.batch_size
    if replicas > 1:
        batch_size = max(replicas, min(batch_size, len(frame) // replicas * replicas))
    if augment is None:
        augment = config.augment
    dataset = utkface_data.make_dataset(
        frame,
        root=root,
        image_size=(config.image_size, config.image_size),
        batch_size=batch_size,
        scaling="uint8",
        shuffle=training,
        augment=training and augment,
        degrade=config.degrade,
        tight_crop=config.tight_crop,
        cache="memory" if config.cache else None,
        seed=config.seed,
        drop_remainder=replicas > 1,
    )
    if training and config.child_gender_weight != 1:
        dataset = _with_child_gender_weights(dataset, frame, config.child_gender_weight)
    if replicas > 1:
        # Several workers: each reads the same (seeded) order and keeps its own part of every
        # batch. Said explicitly: TensorFlow would first try to split by file, which a folder of
        # images read through a map cannot be, and warn before falling back to this.
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    return dataset


def _with_child_gender_weights(dataset, frame, weight: float):
    """Batches with per-image loss weights: the gender loss of an image under 10 years counts
    ``weight`` times another's, scaled so that the mean over ``frame`` is 1 (the gender loss as a
    whole keeps its size against the age loss); the age loss is unweighted."""
    import tensorflow as tf

    under = list(utkface_data.AGE_GROUPS.values())[1]  # 10: where the first age group ends
    children = float((frame["age"] < under).mean())
    scale = 1.0 / (children * weight + (1.0 - children))
    child, other = weight * scale, scale

    def add_weights(images, targets):
        gender = tf.where(targets["age"] < under, child, other)
        return images, targets, {"gender": gender, "age": tf.ones_like(targets["age"])}

    return dataset.map(add_weights, num_parallel_calls=tf.data.AUTOTUNE)
