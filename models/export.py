"""Export a BERT checkpoint to an encoder folder: model.onnx, model.int8.onnx, tokenizer.json, manifest.json."""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from models import sources

log = logging.getLogger(__name__)

# Bump when the graph or quantisation recipe changes: cached exports with another version are rebuilt.
EXPORT_VERSION = 2  # 2: static calibrated int8 (was dynamic)
MANIFEST = "manifest.json"
FILES = ("model.onnx", "model.int8.onnx", "tokenizer.json")


def load_checkpoint(checkpoint: Path) -> tuple[dict, dict]:
    """(config.json dict, safetensors weights as numpy arrays) of an HF BERT folder."""
    from safetensors.numpy import load_file  # noqa: PLC0415 - export-only dependency

    config = json.loads((checkpoint / "config.json").read_text())
    return config, load_file(str(checkpoint / "model.safetensors"))


def fuse_for_onnxruntime(path: Path, heads: int, hidden: int) -> bool:
    """Rewrite the graph in place with onnxruntime's BERT fusions (Attention, SkipLayerNorm, BiasGelu); False if unavailable."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover - depends on the onnxruntime build
        log.warning("onnxruntime.transformers unavailable (%s); keeping the unfused graph", err)
        return False
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    try:
        model = optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0)
    except ImportError as err:  # symbolic shape inference needs sympy
        log.warning("BERT fusion skipped (%s); keeping the unfused graph", err)
        return False
    stats = model.get_fused_operator_statistics()
    log.info("fused: Attention=%s SkipLayerNormalization=%s BiasGelu=%s",
             stats.get("Attention"), stats.get("SkipLayerNormalization"), stats.get("BiasGelu"))
    model.save_model_to_file(str(path))
    return True


class _CalibrationReader:
    """onnxruntime CalibrationDataReader over texts, one unpadded text per run (padding rows would skew the ranges)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def calibration_feeds(graph: Path, tokenizer_json: Path, prefix: str, max_tokens: int) -> list[dict[str, np.ndarray]]:
    """One feed per calibration text (models.fidelity's calibration split), holding only the inputs the graph declares."""
    import onnx  # noqa: PLC0415
    from tokenizers import Tokenizer  # noqa: PLC0415
    from models.fidelity import calibration_texts  # noqa: PLC0415

    declared = {i.name for i in onnx.load(str(graph), load_external_data=False).graph.input}
    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_padding()
    tok.enable_truncation(max_tokens)
    feeds = []
    for enc in tok.encode_batch([prefix + t for t in calibration_texts()]):
        ids = np.asarray([enc.ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds.append({k: v for k, v in feed.items() if k in declared})
    return feeds


def quantize_int8(src: Path, dst: Path, layers: int, feeds: list[dict[str, np.ndarray]]) -> dict:
    """Static int8 with calibrated activation ranges; returns the recipe (recorded in the manifest).

    Static, so activation scales are constants of the graph: a text's vector does not depend on its batch.
    Weights are per-channel and 7-bit (reduce_range): u8 activations x s7 weights summed in pairs stay below
    2**15, so the u8s8 kernels of CPUs without VNNI (AVX2 vpmaddubsw saturates int16) compute the same integers
    as VNNI ones. Only the plain MatMuls are quantised (the fused Attention stays fp32) and each layer's FFN
    output MatMul, the most range-sensitive (its input is the unbounded GELU output), stays fp32.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415
    from models.bert_onnx import ffn_output_matmul  # noqa: PLC0415

    # Shape/type inference first (onnxruntime's recommended pre-processing): contrib ops hide tensor types otherwise.
    inferred = dst.with_name(dst.stem + ".inferred.onnx")
    quant_pre_process(str(src), str(inferred), skip_optimization=True)
    recipe = {
        "method": "static", "format": "QOperator", "activations": "QUInt8", "weights": "QInt8",
        "per_channel": True, "reduce_range": True, "calibration": "MinMax", "calibration_texts": len(feeds),
        "op_types": ["MatMul"], "fp32_nodes": [ffn_output_matmul(i) for i in range(layers)],
    }
    try:
        quantize_static(
            str(inferred),
            str(dst),
            _CalibrationReader(feeds),
            quant_format=QuantFormat.QOperator,
            op_types_to_quantize=recipe["op_types"],
            per_channel=True,
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=recipe["fp32_nodes"],
        )
    finally:
        inferred.unlink(missing_ok=True)
    return recipe


def write_tokenizer(checkpoint: Path, dst: Path) -> None:
    """Copy tokenizer.json with the checkpoint's fixed padding/truncation removed (the encoder sets its own)."""
    tok = json.loads((checkpoint / "tokenizer.json").read_text(encoding="utf-8"))
    tok["padding"] = None
    tok["truncation"] = None
    dst.write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")


def build_folder(checkpoint: Path, name: str, out: Path, *, fuse: bool = True) -> dict:
    """Write the four files of an encoder folder into `out` (which exists and is empty) and return the manifest."""
    import onnx  # noqa: PLC0415 - export-only dependency
    from models.bert_onnx import BertConfig, build_bert_encoder  # noqa: PLC0415

    spec = sources.spec_for(name)
    config, weights = load_checkpoint(checkpoint)
    cfg = BertConfig.from_dict(config)
    max_tokens = min(spec.max_tokens, cfg.max_tokens)
    model = build_bert_encoder(weights, cfg, normalize=spec.normalize)
    del weights
    fp32 = out / "model.onnx"
    onnx.save(model, str(fp32))
    del model
    fused = fuse and fuse_for_onnxruntime(fp32, cfg.heads, cfg.hidden)
    write_tokenizer(checkpoint, out / "tokenizer.json")
    feeds = calibration_feeds(fp32, out / "tokenizer.json", spec.prefixes.get("passage", ""), max_tokens)
    int8 = quantize_int8(fp32, out / "model.int8.onnx", cfg.layers, feeds)
    stamp = sources.read_stamp(checkpoint) or {"kind": "checkpoint", "ref": str(checkpoint)}
    source = dict(stamp, export_version=EXPORT_VERSION, fused=fused)
    source.setdefault("weights_sha256", sources.sha256_file(checkpoint / "model.safetensors"))
    manifest = {
        "name": name,
        "dim": cfg.hidden,
        "pooling": spec.pooling,
        "normalize": spec.normalize,
        "max_tokens": max_tokens,
        "prefixes": dict(spec.prefixes),
        "source": source,
        "int8": int8,
        "files": {f: sources.sha256_file(out / f) for f in FILES},
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


@contextmanager
def _export_lock(out_dir: Path) -> Iterator[None]:
    """Serialise concurrent exports of one folder (several test sessions or workers may start together)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export(name_or_checkpoint: str | Path, out_dir: Path, *, name: str | None = None, fuse: bool = True) -> Path:
    """Export a known model name (fetched/built into the cache) or an HF checkpoint folder into out_dir, atomically."""
    known = isinstance(name_or_checkpoint, str) and (
        name_or_checkpoint in sources.PREPARERS or sources.prepared_checkpoint(name_or_checkpoint) is not None
    )
    if known:
        name = name or name_or_checkpoint
        checkpoint = sources.ensure_checkpoint(name_or_checkpoint)
    else:
        checkpoint = Path(name_or_checkpoint)
        if not (checkpoint / "config.json").exists():
            raise FileNotFoundError(f"{checkpoint} is neither a known model {sorted(sources.PREPARERS)} nor a checkpoint folder")
        name = name or checkpoint.name
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        manifest = build_folder(checkpoint, name, tmp, fuse=fuse)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (dim %d, fused=%s) to %s", name, manifest["dim"], manifest["source"]["fused"], out_dir)
    return out_dir


def read_manifest(model_dir: Path) -> dict | None:
    """The manifest.json of an exported folder, or None when absent/unreadable."""
    try:
        return json.loads((Path(model_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def is_current(model_dir: Path, name: str) -> bool:
    """True if model_dir holds a complete export of `name` from the currently prepared source with this exporter version."""
    manifest = read_manifest(model_dir)
    if manifest is None or any(not (model_dir / f).exists() for f in FILES):
        return False
    source = manifest.get("source", {})
    if source.get("export_version") != EXPORT_VERSION:
        return False
    checkpoint = sources.prepared_checkpoint(name)
    stamp = sources.read_stamp(checkpoint) if checkpoint is not None else None
    # No prepared checkpoint in the cache: trust the export (do not rebuild/download on every start).
    return stamp is None or stamp.get("weights_sha256") == source.get("weights_sha256")


def ensure_model(settings) -> Path:
    """The model folder the settings (or a bare model name: default cache) point at, exported when missing or stale."""
    if isinstance(settings, str):
        from stream_app.settings import Settings  # noqa: PLC0415

        settings = Settings(model_name=settings, model_dir=None)
    if settings.model_dir is not None:
        model_dir = Path(settings.model_dir)
        if read_manifest(model_dir) is None:
            raise FileNotFoundError(f"{model_dir} has no {MANIFEST}; export one with python -m models.export")
        return model_dir
    model_dir = settings.resolved_model_dir()
    if is_current(model_dir, settings.model_name):
        return model_dir
    with _export_lock(model_dir):
        if not is_current(model_dir, settings.model_name):  # another process may have exported meanwhile
            log.info("exporting %s into %s", settings.model_name, model_dir)
            export(settings.model_name, model_dir)
    return model_dir


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m models.export --model NAME [--out DIR] | --checkpoint DIR --name NAME [--out DIR]."""
    from stream_app.settings import Settings  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help=f"known model: {', '.join(sources.SPECS)}")
    group.add_argument("--checkpoint", type=Path, help="an HF BERT folder (model.safetensors, config.json, tokenizer.json)")
    parser.add_argument("--name", help="model name for --checkpoint (manifest name, prefixes); default the folder name")
    parser.add_argument("--out", type=Path, help="output folder; default settings.model_cache / NAME")
    parser.add_argument("--no-fuse", action="store_true", help="skip onnxruntime's BERT operator fusion")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    name = args.model or args.name or args.checkpoint.name
    out = args.out or Settings().model_cache / name
    source = args.checkpoint if args.checkpoint else args.model
    with _export_lock(out):
        export(source, out, name=name, fuse=not args.no_fuse)
    print(json.dumps(read_manifest(out), indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
