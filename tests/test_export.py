"""Export of a tiny random BERT checkpoint: graph matches a float64 numpy forward pass, folder layout, caching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from models import export as exp
from models import sources
from models.bert_onnx import ffn_output_matmul
from stream_app.encoder import TextEncoder
from stream_app.settings import Settings

HIDDEN, LAYERS, HEADS, FFN, VOCAB, POSITIONS = 32, 2, 4, 64, 40, 16
WORDS = "red blue green shoe shirt phone case cheap fast charger 手 机 耳".split()


def tiny_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random BertModel tensors (HF names) large enough that every op matters."""
    rng = np.random.default_rng(seed)

    def rnd(*shape: int, scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": rnd(VOCAB, HIDDEN, scale=1.0),
        "embeddings.position_embeddings.weight": rnd(POSITIONS, HIDDEN),
        "embeddings.token_type_embeddings.weight": rnd(2, HIDDEN),
        "embeddings.LayerNorm.weight": 1 + rnd(HIDDEN, scale=0.1),
        "embeddings.LayerNorm.bias": rnd(HIDDEN, scale=0.1),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[f"{p}attention.self.{name}.weight"] = rnd(HIDDEN, HIDDEN)
            w[f"{p}attention.self.{name}.bias"] = rnd(HIDDEN, scale=0.1)
        w[f"{p}attention.output.dense.weight"] = rnd(HIDDEN, HIDDEN)
        w[f"{p}attention.output.dense.bias"] = rnd(HIDDEN, scale=0.1)
        w[f"{p}intermediate.dense.weight"] = rnd(FFN, HIDDEN)
        w[f"{p}intermediate.dense.bias"] = rnd(FFN, scale=0.1)
        w[f"{p}output.dense.weight"] = rnd(HIDDEN, FFN)
        w[f"{p}output.dense.bias"] = rnd(HIDDEN, scale=0.1)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[f"{p}{ln}.weight"] = 1 + rnd(HIDDEN, scale=0.1)
            w[f"{p}{ln}.bias"] = rnd(HIDDEN, scale=0.1)
    return w


def tiny_tokenizer() -> Tokenizer:
    """A BERT-style WordPiece tokenizer over a handful of words (CJK chars split like BERT does)."""
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return tok


def write_checkpoint(folder: Path, seed: int = 0) -> Path:
    """An HF-style BERT folder: model.safetensors, config.json, tokenizer.json."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tiny_weights(seed), str(folder / "model.safetensors"))
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "intermediate_size": FFN, "hidden_act": "gelu", "layer_norm_eps": 1e-12,
        "max_position_embeddings": POSITIONS, "type_vocab_size": 2, "vocab_size": VOCAB, "pad_token_id": 0,
    }
    (folder / "config.json").write_text(json.dumps(config))
    tiny_tokenizer().save(str(folder / "tokenizer.json"))
    return folder


def numpy_bert(weights: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64 reference forward pass: BERT, masked mean pooling, L2 normalisation."""
    w = {k: v.astype(np.float64) for k, v in weights.items()}
    erf = np.vectorize(math.erf)

    def ln(x: np.ndarray, key: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * w[key + ".weight"] + w[key + ".bias"]

    def lin(x: np.ndarray, key: str) -> np.ndarray:
        return x @ w[key + ".weight"].T + w[key + ".bias"]

    batch, seq = ids.shape
    hd = HIDDEN // HEADS
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:seq][None]
    x = ln(x + w["embeddings.token_type_embeddings.weight"][0], "embeddings.LayerNorm")
    bias = (1.0 - mask[:, None, None, :]) * -10000.0
    for i in range(LAYERS):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(x, f"{p}attention.self.{n}").reshape(batch, seq, HEADS, hd).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(0, 2, 1, 3).reshape(batch, seq, HIDDEN)
        x = ln(lin(ctx, f"{p}attention.output.dense") + x, f"{p}attention.output.LayerNorm")
        h = lin(x, f"{p}intermediate.dense")
        h = h * 0.5 * (1.0 + erf(h / math.sqrt(2.0)))
        x = ln(lin(h, f"{p}output.dense") + x, f"{p}output.LayerNorm")
    m = mask[:, :, None].astype(np.float64)
    pooled = (x * m).sum(1) / m.sum(1)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def run_graph(path: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Run an exported graph on CPU."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return session.run(["sentence_embedding"], feed)[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-bert")


@pytest.fixture(scope="module", params=[True, False], ids=["fused", "plain"])
def exported(request: pytest.FixtureRequest, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny-bert"
    return exp.export(checkpoint, out, name="tiny-bert", fuse=request.param)


def padded_inputs() -> tuple[np.ndarray, np.ndarray]:
    """Three rows of different lengths, right-padded (dynamic batch and sequence axes)."""
    rows = [[2, 4, 5, 6, 7, 8, 9, 3], [2, 10, 3], [2, 16, 17, 1, 11, 3]]
    longest = max(map(len, rows))
    ids = np.zeros((len(rows), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


def test_fp32_graph_matches_numpy_reference(exported: Path) -> None:
    ids, mask = padded_inputs()
    want = numpy_bert(tiny_weights(0), ids, mask)
    got = run_graph(exported / "model.onnx", ids, mask)
    assert got.shape == (3, HIDDEN) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)
    for i in range(3):  # each row alone, unpadded, gives the same vector (padding is fully masked)
        n = int(mask[i].sum())
        alone = run_graph(exported / "model.onnx", ids[i : i + 1, :n], mask[i : i + 1, :n])
        np.testing.assert_allclose(alone[0], got[i], atol=1e-5)


def test_int8_graph_is_static_close_and_keeps_ffn_output_fp32(exported: Path) -> None:
    graph = onnx.load(str(exported / "model.int8.onnx")).graph
    ops = {n.name: n.op_type for n in graph.node}
    assert "QLinearMatMul" in ops.values()  # calibrated static int8
    assert not {"DynamicQuantizeLinear", "MatMulInteger"} & set(ops.values())  # no per-batch activation scales
    for i in range(LAYERS):
        assert ops[ffn_output_matmul(i)] == "MatMul"
    ids, mask = padded_inputs()
    fp32 = run_graph(exported / "model.onnx", ids, mask)
    int8 = run_graph(exported / "model.int8.onnx", ids, mask)
    assert np.all((fp32 * int8).sum(1) > 0.95)
    for i in range(3):  # a row alone gives the same vector as inside the padded batch: scales are constants
        n = int(mask[i].sum())
        alone = run_graph(exported / "model.int8.onnx", ids[i : i + 1, :n], mask[i : i + 1, :n])
        assert float(alone[0] @ int8[i]) >= 0.999


def test_manifest_records_files_and_source(exported: Path, checkpoint: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["name"] == "tiny-bert" and manifest["dim"] == HIDDEN
    assert manifest["pooling"] == "mean" and manifest["normalize"] is True
    assert manifest["max_tokens"] == POSITIONS  # capped by the position table
    assert manifest["prefixes"] == {"query": "", "passage": ""}
    assert manifest["source"]["weights_sha256"] == sources.sha256_file(checkpoint / "model.safetensors")
    assert manifest["source"]["export_version"] == exp.EXPORT_VERSION
    assert manifest["int8"]["method"] == "static" and manifest["int8"]["calibration_texts"] > 100
    for name in exp.FILES:
        assert manifest["files"][name] == sources.sha256_file(exported / name)
    tok = json.loads((exported / "tokenizer.json").read_text())
    assert tok["padding"] is None and tok["truncation"] is None


def test_encoder_over_tiny_export(exported: Path) -> None:
    enc = TextEncoder(exported, int8=False, provider="cpu")
    vecs = enc.encode(["red shoe", "手机 case", "red shoe " * 40])
    assert vecs.shape == (3, HIDDEN)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    ids = enc.tokenize(["red shoe"])[0]
    want = numpy_bert(tiny_weights(0), np.array([ids]), np.ones((1, len(ids)), dtype=np.int64))
    np.testing.assert_allclose(vecs[0], want[0], atol=2e-5)
    assert len(enc.tokenize(["red shoe " * 40])[0]) == POSITIONS  # truncated to max_tokens


def test_ensure_model_exports_once_and_again_when_source_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_APP_CACHE", str(tmp_path / "cache"))
    ckpt = write_checkpoint(sources.checkpoint_dir("tiny-bert"), seed=0)
    sources.write_stamp(ckpt, {"kind": "test", "ref": "tiny"})
    settings = Settings(model_name="tiny-bert", model_dir=None, model_cache=tmp_path / "models")
    folder = exp.ensure_model(settings)
    assert folder == tmp_path / "models" / "tiny-bert"
    first = (folder / "manifest.json").read_text()
    assert exp.ensure_model(settings) == folder
    assert (folder / "manifest.json").read_text() == first  # up to date: not rebuilt
    write_checkpoint(ckpt, seed=1)
    sources.write_stamp(ckpt, {"kind": "test", "ref": "tiny"})
    exp.ensure_model(settings)
    second = json.loads((folder / "manifest.json").read_text())
    assert second["source"]["weights_sha256"] == sources.sha256_file(ckpt / "model.safetensors")
    assert second["source"]["weights_sha256"] != json.loads(first)["source"]["weights_sha256"]


def test_ensure_model_with_explicit_dir_requires_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        exp.ensure_model(Settings(model_dir=tmp_path))


def test_unknown_model_name_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_APP_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError):
        exp.export("no-such-model", tmp_path / "out")


def test_unsupported_config_is_rejected() -> None:
    from models.bert_onnx import BertConfig

    base = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}
    with pytest.raises(ValueError):
        BertConfig.from_dict({**base, "hidden_act": "relu"})
    with pytest.raises(ValueError):
        BertConfig.from_dict({**base, "position_embedding_type": "relative_key"})


def test_position_offset_shifts_the_position_table(tmp_path: Path) -> None:
    """config position_offset=2 (XLM-R layout) equals an offset-0 checkpoint whose table drops the first 2 rows."""
    shifted = write_checkpoint(tmp_path / "offset2")
    config = json.loads((shifted / "config.json").read_text())
    (shifted / "config.json").write_text(json.dumps({**config, "position_offset": 2}))
    plain = write_checkpoint(tmp_path / "offset0")
    weights = tiny_weights(0)
    weights["embeddings.position_embeddings.weight"] = weights["embeddings.position_embeddings.weight"][2:].copy()
    save_file(weights, str(plain / "model.safetensors"))
    (plain / "config.json").write_text(json.dumps({**config, "max_position_embeddings": POSITIONS - 2}))
    a = exp.export(shifted, tmp_path / "out2", name="offset2", fuse=False)
    b = exp.export(plain, tmp_path / "out0", name="offset0", fuse=False)
    ids, mask = padded_inputs()
    np.testing.assert_allclose(run_graph(a / "model.onnx", ids, mask), run_graph(b / "model.onnx", ids, mask), atol=1e-6)
    assert json.loads((a / "manifest.json").read_text())["max_tokens"] == POSITIONS - 2


def test_ensure_model_accepts_a_model_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_APP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("STREAM_APP_MODEL_CACHE", str(tmp_path / "models"))
    ckpt = write_checkpoint(sources.checkpoint_dir("tiny-bert"))
    sources.write_stamp(ckpt, {"kind": "test", "ref": "tiny"})
    folder = exp.ensure_model("tiny-bert")
    assert folder == tmp_path / "models" / "tiny-bert"
    assert json.loads((folder / "manifest.json").read_text())["name"] == "tiny-bert"
