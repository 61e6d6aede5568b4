from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from utkface_data import FaceLabels, MalformedNameError, load_corrections, parse_filename
from utkface_data.naming import looks_like_image


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("10_0_0_20170103200329407.jpg.chip.jpg", FaceLabels(10, 0, 0, "20170103200329407")),
        ("116_1_4_20170103200329407.jpg", FaceLabels(116, 1, 4, "20170103200329407")),
        ("0_1_2_2017010320032940.JPG", FaceLabels(0, 1, 2, "2017010320032940")),
        ("5_0_3_20170103200329407.png", FaceLabels(5, 0, 3, "20170103200329407")),
        ("5_0_3_20170103200329407.JPEG", FaceLabels(5, 0, 3, "20170103200329407")),
        ("sub/dir/7_1_1_20170103200329407.jpg", FaceLabels(7, 1, 1, "20170103200329407")),
    ],
)
def test_parse_valid(name: str, expected: FaceLabels) -> None:
    assert parse_filename(name) == expected


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("61_1_20170109142408075.jpg.chip.jpg", "field is missing"),
        ("61_3_20170109150557335.jpg.chip.jpg", "field is missing"),
        ("39_1_20170116174525125.jpg.chip.jpg", "field is missing"),
        ("53__0_20170116184028385.jpg", "empty label field"),
        ("55_0_0_20170116232725357jpg.chip.jpg", "non-numeric"),
        ("24_0_1_20170116220224657 .jpg.chip.jpg", "whitespace"),
        ("44_1_4_20170116235150272.pg", "extension"),
        ("117_0_0_20170103200329407.jpg", "age 117"),
        ("20_2_0_20170103200329407.jpg", "gender 2"),
        ("20_0_5_20170103200329407.jpg", "race 5"),
        ("20_0_0_2017.jpg", "datetime"),
        ("20_0_0_20170103200329407.gif", "extension"),
    ],
)
def test_parse_malformed(name: str, reason: str) -> None:
    with pytest.raises(MalformedNameError, match=reason) as info:
        parse_filename(name)
    assert info.value.name == name
    assert isinstance(info.value, ValueError)


@given(
    age=st.integers(0, 116),
    gender=st.integers(0, 1),
    race=st.integers(0, 4),
    dt=st.from_regex(r"\A[0-9]{8,20}\Z"),
    ext=st.sampled_from(
        [".jpg", ".jpg.chip.jpg", ".png", ".jpeg", ".JPG", ".Jpg.Chip.Jpg", ".PNG"]
    ),
)
def test_parse_roundtrip(age: int, gender: int, race: int, dt: str, ext: str) -> None:
    assert parse_filename(f"{age}_{gender}_{race}_{dt}{ext}") == FaceLabels(age, gender, race, dt)


@given(st.text(max_size=60))
def test_parse_arbitrary_text_fails_cleanly(name: str) -> None:
    try:
        labels = parse_filename(name)
    except MalformedNameError as exc:
        assert exc.reason
    else:
        assert 0 <= labels.age <= 116 and labels.gender in (0, 1) and 0 <= labels.race <= 4


@given(age=st.integers(117, 999), gender=st.integers(2, 9), race=st.integers(5, 9))
def test_parse_out_of_range(age: int, gender: int, race: int) -> None:
    for a, g, r in ((age, 0, 0), (0, gender, 0), (0, 0, race)):
        with pytest.raises(MalformedNameError):
            parse_filename(f"{a}_{g}_{r}_20170103200329407.jpg")


def test_face_labels_validates() -> None:
    with pytest.raises(ValueError, match="Received: age=200"):
        FaceLabels(200, 0, 0, "")


def test_looks_like_image() -> None:
    assert looks_like_image("a.JPG") and looks_like_image("44_1_4_2017.pg")
    assert not looks_like_image("README.txt") and not looks_like_image(".DS_Store")


def test_corrections_csv(tmp_path) -> None:
    csv = tmp_path / "fix.csv"
    csv.write_text("file,age,gender,race\n61_1_20170109142408075.jpg.chip.jpg,61,1,0\n")
    table = load_corrections(csv)
    assert table == {
        "61_1_20170109142408075.jpg.chip.jpg": FaceLabels(61, 1, 0, "20170109142408075")
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,age,gender\nx.jpg,1,0\n", "missing"),
        ("file,age,gender,race\nx.jpg,1,0,9\n", "line 2"),
        ("file,age,gender,race\nx.jpg,abc,0,1\n", "line 2"),
        ("file,age,gender,race\nx.jpg,1,0,1\nx.jpg,2,0,1\n", "duplicate"),
    ],
)
def test_corrections_csv_errors(tmp_path, text: str, match: str) -> None:
    csv = tmp_path / "fix.csv"
    csv.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_corrections(csv)


def test_corrections_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_corrections(tmp_path / "nope.csv")
