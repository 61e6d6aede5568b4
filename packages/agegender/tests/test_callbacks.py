"""The resume files of a run (``best.weights.h5``, the BackupAndRestore backup) are replaced whole:
a process killed while it writes one leaves the previous one, never half a file. No training: a
tiny model, the callbacks called as Keras calls them at an epoch's end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from agegender.callbacks import whole_file_callbacks  # noqa: E402


def _model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _loaded(path: Path) -> list[np.ndarray]:
    """The weights in ``path``, loaded into a fresh model (a ``.bkp`` by way of a copy: Keras
    reads ``*.weights.h5`` only)."""
    import shutil

    if not path.name.endswith(".weights.h5"):
        path = Path(shutil.copyfile(path, path.parent.parent / f"copy-{path.name}.weights.h5"))
    fresh = _model(seed=1)
    fresh.load_weights(path)
    return fresh.get_weights()


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _killed_midway(monkeypatch: pytest.MonkeyPatch, model) -> None:
    """From now on ``save_weights`` writes half of its file where it was asked to, then dies."""
    real = type(model).save_weights

    def half_then_die(self, filepath, *args, **kwargs):
        real(self, filepath, *args, **kwargs)
        path = Path(filepath)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(type(model), "save_weights", half_then_die)


def _writing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("writing"))


def test_best_checkpoint_killed_while_writing_keeps_the_previous_best(tmp_path: Path,
                                                                     monkeypatch) -> None:
    checkpoint, _ = whole_file_callbacks()
    target = tmp_path / "best.weights.h5"
    model = _model()
    best = checkpoint(target, monitor="val_loss", mode="min", save_best_only=True,
                      save_weights_only=True)
    best.set_model(model)
    best.on_epoch_end(0, {"val_loss": 2.0})
    saved = model.get_weights()
    assert _same(_loaded(target), saved)
    assert _writing(tmp_path) == []  # written beside it, renamed over it

    model.set_weights([w + 1 for w in saved])
    best.on_epoch_end(1, {"val_loss": 3.0})  # not better: the file stays the epoch-0 one
    assert _same(_loaded(target), saved)
    best.on_epoch_end(2, {"val_loss": 1.0})
    assert _same(_loaded(target), model.get_weights())
    assert _writing(tmp_path) == []

    kept = model.get_weights()
    model.set_weights([w + 1 for w in kept])
    _killed_midway(monkeypatch, model)
    with pytest.raises(KeyboardInterrupt):
        best.on_epoch_end(3, {"val_loss": 0.5})
    assert _same(_loaded(target), kept)  # the previous best, whole

    monkeypatch.undo()  # started again: the half-written file beside it is dropped
    checkpoint(target, save_weights_only=True)
    assert _writing(tmp_path) == []


def _backed_up(folder: Path, epochs: int, double_checkpoint: bool):
    """A whole-file backup callback after ``epochs`` epochs, each changing the weights:
    ``(the callback class, model, callback, {epoch: weights})``; no half file left after any."""
    _, backup = whole_file_callbacks()
    model = _model()
    callback = backup(str(folder), double_checkpoint=double_checkpoint)
    callback.set_model(model)
    by_epoch = {}
    for epoch in range(epochs):
        model.set_weights([w + 1 for w in model.get_weights()])
        by_epoch[epoch + 1] = model.get_weights()
        callback.on_epoch_end(epoch)
        assert _writing(folder) == []
    return backup, model, callback, by_epoch


def _restarted(backup, folder: Path, double_checkpoint: bool):
    """A new model (other initial weights) restored by a new backup callback, as a restarted
    process's ``fit`` does at its start."""
    restarted = _model(seed=2)
    again = backup(str(folder), double_checkpoint=double_checkpoint)
    again.set_model(restarted)
    again.on_train_begin()
    return restarted


@pytest.mark.parametrize("double_checkpoint", [False, True])
def test_backup_killed_while_writing_resumes_from_the_last_whole_backup(
        tmp_path: Path, monkeypatch, double_checkpoint: bool) -> None:
    folder = tmp_path / "backup"
    backup, model, callback, by_epoch = _backed_up(folder, 2, double_checkpoint)
    assert json.loads((folder / "training_metadata.json").read_text())["epoch"] == 2
    assert _same(_loaded(folder / "latest.weights.h5"), by_epoch[2])
    if double_checkpoint:  # the epoch before, kept whole too
        assert json.loads((folder / "training_metadata.json.bkp").read_text())["epoch"] == 1
        assert _same(_loaded(folder / "latest.weights.h5.bkp"), by_epoch[1])

    model.set_weights([w + 1 for w in model.get_weights()])
    _killed_midway(monkeypatch, model)
    with pytest.raises(KeyboardInterrupt):
        callback.on_epoch_end(2)
    monkeypatch.undo()

    restarted = _restarted(backup, folder, double_checkpoint)
    assert restarted._initial_epoch == 2
    assert _same(restarted.get_weights(), by_epoch[2])


def test_backup_killed_between_its_two_renames_goes_back_to_the_epoch_before(tmp_path: Path) -> None:
    """Epoch 3's weights in place, the epoch file still epoch 2's: the weights are not the
    epoch's, so the restart takes the pair kept from epoch 2 (``double_checkpoint``)."""
    import shutil

    folder = tmp_path / "backup"
    backup, model, callback, by_epoch = _backed_up(folder, 3, True)
    shutil.copyfile(folder / "training_metadata.json.bkp", folder / "training_metadata.json")

    restarted = _restarted(backup, folder, True)
    assert restarted._initial_epoch == 2
    assert _same(restarted.get_weights(), by_epoch[2])
