from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from utkface_data import (
    DatasetError,
    Splits,
    index_folder,
    load_splits,
    save_splits,
    split_frame,
    subset,
)
from utkface_data.splits import leaves_folder, load_split_file, stratum


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "path": [f"{i:05d}_{rng.integers(1_000_000)}.jpg" for i in range(n)],
            "age": rng.integers(0, 117, n),
            "gender": rng.integers(0, 2, n),
            "race": rng.integers(0, 5, n),
            "datetime": ["20170103200329407"] * n,
        }
    )


frames = st.builds(_frame, st.integers(0, 400), st.integers(0, 2**32 - 1))
fractions = st.sampled_from([0.0, 0.1, 0.15, 0.2, 0.25, 0.3])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frame=frames,
    val=fractions,
    test=fractions,
    seed=st.integers(0, 2**31),
    shuffle_seed=st.integers(0, 1000),
)
def test_split_properties(
    frame: pd.DataFrame, val: float, test: float, seed: int, shuffle_seed: int
) -> None:
    n = len(frame)
    if n and round(n * val) + round(n * test) >= n:
        with pytest.raises(ValueError, match="nothing left to train"):
            split_frame(frame, val=val, test=test, seed=seed)
        return
    s = split_frame(frame, val=val, test=test, seed=seed)
    parts = [set(df["path"]) for df in s]
    # disjoint and covering
    assert sum(len(p) for p in parts) == n
    assert set().union(*parts) == set(frame["path"])
    # exact sizes
    assert len(s.test) == round(n * test) and len(s.val) == round(n * val)
    # stratified: every stratum's share within 2 rows of its expected size
    strata = stratum(frame).value_counts()
    for df, frac in ((s.test, test), (s.val, val)):
        got = stratum(df).value_counts() if len(df) else pd.Series(dtype=int)
        for key, size in strata.items():
            assert abs(got.get(key, 0) - size * frac) <= 2.0
    # stable under re-ordering of the input rows
    shuffled = frame.sample(frac=1.0, random_state=shuffle_seed)
    s2 = split_frame(shuffled, val=val, test=test, seed=seed)
    for a, b in zip(s, s2, strict=True):
        pd.testing.assert_frame_equal(a, b)


@settings(max_examples=30, deadline=None)
@given(frame=frames.filter(lambda f: len(f) > 0), data=st.data())
def test_subset_properties(frame: pd.DataFrame, data: st.DataObject) -> None:
    n = data.draw(st.integers(1, len(frame)))
    seed = data.draw(st.integers(0, 100))
    sub = subset(frame, n, seed=seed)
    assert len(sub) == n and sub["path"].is_unique and set(sub["path"]) <= set(frame["path"])
    for key, size in stratum(frame).value_counts().items():
        assert abs((stratum(sub) == key).sum() - size * n / len(frame)) <= 1.0
    pd.testing.assert_frame_equal(sub, subset(frame.iloc[::-1], n, seed=seed))


def test_seed_changes_split() -> None:
    frame = _frame(300, 1)
    a, b = split_frame(frame, seed=0), split_frame(frame, seed=1)
    assert set(a.test["path"]) != set(b.test["path"])
    assert set(subset(frame, 100, seed=0)["path"]) != set(subset(frame, 100, seed=1)["path"])


def test_split_known_values() -> None:
    # Pinned output: a change here changes every saved split, on purpose only.
    frame = _frame(40, 7)
    s = split_frame(frame, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (28, 6, 6)
    assert list(s.test["path"]) == [
        "00006_833651.jpg",
        "00008_55531.jpg",
        "00015_821228.jpg",
        "00016_131440.jpg",
        "00032_509447.jpg",
        "00033_995500.jpg",
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"val": 1.2}, "Received: val=1.2"),
        ({"test": -0.1}, "Received: test=-0.1"),
        ({"val": 0.5, "test": 0.5}, "val \\+ test"),
        ({"seed": 1.5}, "Received: seed=1.5"),
    ],
)
def test_split_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        split_frame(_frame(10, 0), **kwargs)


def test_subset_validation() -> None:
    with pytest.raises(ValueError, match="Received: n=11"):
        subset(_frame(10, 0), 11)
    with pytest.raises(ValueError, match="Received: n=0"):
        subset(_frame(10, 0), 0)
    dup = pd.concat([_frame(3, 0)] * 2)
    with pytest.raises(ValueError, match="duplicate"):
        subset(dup, 2)


def test_save_load_roundtrip_byte_identical(utk_folder: Path, tmp_path: Path) -> None:
    idx = index_folder(utk_folder, progress=False)
    s = split_frame(idx.frame, val=0.25, test=0.25, seed=3)
    save_splits(s, tmp_path / "a")
    save_splits(split_frame(idx.frame.iloc[::-1], val=0.25, test=0.25, seed=3), tmp_path / "b")
    for name in ("train", "val", "test"):
        a = (tmp_path / "a" / f"{name}.csv").read_bytes()
        assert a == (tmp_path / "b" / f"{name}.csv").read_bytes()
        assert a.startswith(b"path,age,gender,race,datetime\n") and b"\r" not in a
    loaded = load_splits(tmp_path / "a", root=utk_folder)
    assert isinstance(loaded, Splits)
    for got, want in zip(loaded, s, strict=True):
        pd.testing.assert_frame_equal(got, want[got.columns.tolist()], check_dtype=False)
    assert loaded.train["datetime"].iloc[0].startswith("2017")


def test_load_splits_missing_image(utk_folder: Path, tmp_path: Path) -> None:
    idx = index_folder(utk_folder, progress=False)
    s = split_frame(idx.frame, val=0.25, test=0.25, seed=0)
    save_splits(s, tmp_path / "splits")
    gone = s.val["path"].iloc[0]
    (utk_folder / gone).unlink()
    with pytest.raises(DatasetError) as info:
        load_splits(tmp_path / "splits", root=utk_folder)
    assert "val.csv" in str(info.value) and gone in str(info.value)
    assert len(load_splits(tmp_path / "splits", root=utk_folder, check_files=False).val) == len(
        s.val
    )


def test_load_splits_bad_files(tmp_path: Path, utk_folder: Path) -> None:
    with pytest.raises(FileNotFoundError, match="split folder"):
        load_splits(tmp_path / "none", root=utk_folder)
    (tmp_path / "s").mkdir()
    with pytest.raises(FileNotFoundError, match="train.csv"):
        load_splits(tmp_path / "s", root=utk_folder)
    for name in ("train", "val", "test"):
        (tmp_path / "s" / f"{name}.csv").write_text("path,age\nx.jpg,3\n")
    with pytest.raises(DatasetError, match="train.csv: missing column"):
        load_splits(tmp_path / "s", root=utk_folder)


@pytest.mark.slow
def test_real_subset_split_is_stable(shared_dir: Path, tmp_path: Path) -> None:
    idx = index_folder(shared_dir, progress=False)
    sub = subset(idx.frame, 1000, seed=0)
    s = split_frame(sub, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (700, 150, 150)
    save_splits(s, tmp_path / "a")
    load_splits(tmp_path / "a", root=shared_dir)


def test_load_splits_refuses_leaking_or_out_of_range_splits(tmp_path) -> None:
    import pandas as pd
    import pytest

    from utkface_data import DatasetError, load_splits

    rows = {"path": ["a.jpg", "b.jpg"], "age": [30, 40], "gender": [0, 1], "race": [0, 2]}
    for name, frame in (("train", rows), ("val", {k: v[:1] for k, v in rows.items()}),
                        ("test", {"path": ["c.jpg"], "age": [5], "gender": [1], "race": [4]})):
        pd.DataFrame(frame).to_csv(tmp_path / f"{name}.csv", index=False)
    with pytest.raises(DatasetError, match=r"both train.csv and val.csv .* a.jpg"):
        load_splits(tmp_path, check_files=False)
    pd.DataFrame({"path": ["d.jpg"], "age": [30], "gender": [2], "race": [0]}).to_csv(tmp_path / "val.csv", index=False)
    with pytest.raises(DatasetError, match=r"val.csv: 1 row\(s\) with gender out of range, e.g. d.jpg: gender=2"):
        load_splits(tmp_path, check_files=False)


# --- split files cannot reach outside the image folder -----------------------------------------


@pytest.mark.parametrize(
    "escape",
    ["../outside.jpg", "sub/../../outside.jpg", "{outside}", "..\\outside.jpg", "C:\\x.jpg"],
)
def test_split_paths_leaving_the_folder_are_refused(tmp_path: Path, escape: str) -> None:
    root = tmp_path / "images"
    root.mkdir()
    exists = tmp_path / "outside.jpg"
    exists.write_bytes(b"\xff\xd8\xff")
    escape = escape.format(outside=exists)  # an absolute path
    messages = []
    for target in (escape, escape.replace("outside", "missing")):  # one exists, one does not
        split = tmp_path / "val.csv"
        pd.DataFrame({"path": [target], "age": [30], "gender": [0], "race": [0]}).to_csv(
            split, index=False
        )
        for check_files in (True, False):
            with pytest.raises(DatasetError, match="leave the image folder") as info:
                load_split_file(split, root=root, check_files=check_files)
            messages.append(str(info.value).replace("missing", "outside"))
    # the same answer whether the outside file exists or not: nothing about it is revealed
    assert len(set(messages)) == 1 and "not found" not in messages[0]


@given(st.lists(st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True), min_size=1,
                max_size=4))
def test_relative_paths_inside_the_folder_are_accepted(parts: list[str]) -> None:
    path = "/".join(parts)
    assert leaves_folder(path) == (".." in parts)
    assert leaves_folder("../" + path) and leaves_folder("/" + path)
