"""TextEncoder over the real exports: parity with sentence-transformers, fidelity of the served graph, edge cases."""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from models.export import ensure_model
from models.fidelity import evaluation_sets, measure
from stream_app.encoder import CPU, Manifest, TextEncoder, choose_provider, load_encoder
from stream_app.settings import Settings

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "fixtures" / "minilm_reference.json"
CATALOGUE = REPO / "stream_app" / "data" / "catalogue.jsonl"
MINILM = "all-MiniLM-L6-v2"


def minilm_settings() -> Settings:
    """Settings pointing at the cached all-MiniLM-L6-v2 export (exported on first use, reused after)."""
    return Settings(model_name=MINILM, model_dir=None, encoder_provider="cpu")


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return ensure_model(minilm_settings())


@pytest.fixture(scope="module")
def fp32(model_dir: Path) -> TextEncoder:
    return TextEncoder(model_dir, int8=False, provider="cpu")


@pytest.fixture(scope="module")
def int8(model_dir: Path) -> TextEncoder:
    return TextEncoder(model_dir, int8=True, provider="cpu")


def corpus(n: int) -> list[str]:
    """n deterministic, varied texts: catalogue titles and descriptions (en/zh) when present, then recombinations."""
    base: list[str] = []
    if CATALOGUE.exists():
        for line in CATALOGUE.read_text(encoding="utf-8").splitlines():
            if line.strip():
                item = json.loads(line)
                base += [item.get("title", ""), item.get("text", "")]
    base += ["wireless noise cancelling headphones", "红色 running shoes 男款", "organic green tea 100 bags",
             "stainless steel water bottle 1L", "kids building bricks set", "USB-C 快充 charger 65W"]
    base = [t for t in base if t]
    out = list(base)
    i = 0
    while len(out) < n:
        a, b = base[i % len(base)], base[(7 * i + 3) % len(base)]
        out.append(f"{a.split(',')[0]} | {b[: 20 + i % 40]}")
        i += 1
    return out[:n]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


def assert_unit_rows(v: np.ndarray, dim: int) -> None:
    assert v.dtype == np.float32 and v.ndim == 2 and v.shape[1] == dim
    assert np.all(np.isfinite(v))
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_manifest_describes_minilm(fp32: TextEncoder, model_dir: Path) -> None:
    m = Manifest.load(model_dir)
    assert fp32.manifest == m and fp32.dim == m.dim == 384
    assert (m.name, m.pooling, m.normalize, m.max_tokens) == (MINILM, "mean", True, 256)
    assert m.prefixes == {"query": "", "passage": ""}
    assert set(m.files) == {"model.onnx", "model.int8.onnx", "tokenizer.json"}
    assert fp32.provider == CPU
    # static (batch-independent) int8 with 7-bit weights: no u8s8 saturation on CPUs without VNNI
    assert (m.int8["method"], m.int8["per_channel"], m.int8["reduce_range"]) == ("static", True, True)
    assert fp32.inputs == ("input_ids", "attention_mask", "token_type_ids")  # read from the graph


@pytest.mark.skipif(not REFERENCE.exists(), reason="tests/fixtures/minilm_reference.json not present")
def test_fp32_matches_sentence_transformers(fp32: TextEncoder) -> None:
    ref = json.loads(REFERENCE.read_text(encoding="utf-8"))
    assert ref["max_seq_length"] == fp32.manifest.max_tokens
    want = np.asarray(ref["embeddings"], dtype=np.float32)
    got = fp32.encode(ref["texts"])
    assert got.shape == want.shape
    cos = cosines(got, want / np.linalg.norm(want, axis=1, keepdims=True))
    worst = int(np.argmin(cos))
    assert cos.min() >= 0.9999, f"text {ref['texts'][worst]!r}: cosine {cos[worst]:.6f}"


def test_int8_stays_close_to_fp32(fp32: TextEncoder, int8: TextEncoder) -> None:
    texts = corpus(400)
    cos = cosines(fp32.encode(texts), int8.encode(texts))
    assert cos.mean() >= 0.99, f"mean cosine {cos.mean():.4f}"
    assert cos.min() >= 0.95, f"worst {texts[int(np.argmin(cos))]!r}: {cos.min():.4f}"


def test_empty_inputs(fp32: TextEncoder) -> None:
    assert fp32.encode([]).shape == (0, 384)
    v = fp32.encode(["", "   "])
    assert_unit_rows(v, 384)
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)  # whitespace normalises to nothing, like ""


def test_long_text_is_truncated_not_an_error(fp32: TextEncoder, int8: TextEncoder) -> None:
    long = "this charger works well with my laptop and phone " * 400
    assert len(fp32.tokenize([long])[0]) == fp32.manifest.max_tokens
    for enc in (fp32, int8):
        v = enc.encode([long, long + " but the cable frayed after a week"])
        assert_unit_rows(v, 384)
        np.testing.assert_allclose(v[0], v[1], atol=1e-5)  # words past the cut cannot matter


@pytest.mark.parametrize("bad", [["ok", 3], [None], [b"bytes"], "a bare string", ["ok", ["nested"]]])
def test_non_string_input_raises_type_error(fp32: TextEncoder, bad: object) -> None:
    with pytest.raises(TypeError, match="str"):
        fp32.encode(bad)  # type: ignore[arg-type]


def test_unknown_kind_is_rejected(fp32: TextEncoder) -> None:
    with pytest.raises(ValueError, match="kind"):
        fp32.encode(["x"], kind="document")


def test_query_and_passage_share_minilm_space(fp32: TextEncoder) -> None:
    q, p = fp32.encode(["usb charger"], kind="query"), fp32.encode(["usb charger"], kind="passage")
    np.testing.assert_allclose(q, p, atol=1e-6)  # MiniLM has no prefixes


def test_mixed_chinese_english(fp32: TextEncoder, int8: TextEncoder) -> None:
    texts = ["Apple iPhone 15 手机壳", "Apple iPhone 15", "小米 Redmi Note 13 智能手机", "有机绿茶 organic green tea"]
    ids = fp32.tokenize(texts[:1])[0]
    unk = fp32.tokenizer.token_to_id("[UNK]")
    assert sum(t != unk for t in ids) > len(ids) // 2  # CJK characters are real tokens, not all [UNK]
    for enc in (fp32, int8):
        v = enc.encode(texts)
        assert_unit_rows(v, 384)
        assert float(v[0] @ v[1]) < 0.9999  # the Chinese part changes the vector
        assert float(v[0] @ v[1]) > float(v[0] @ v[3])  # phone case is nearer the phone than green tea


def test_batch_of_one_and_thousand_are_batch_invariant(fp32: TextEncoder, int8: TextEncoder) -> None:
    texts = corpus(1000)
    for enc in (fp32, int8):
        one = enc.encode(texts[:1])
        assert_unit_rows(one, 384)
        assert one.shape == (1, 384)
        many = enc.encode(texts)
        assert_unit_rows(many, 384)
        assert many.shape == (1000, 384)
        sample = list(range(0, 1000, 37))
        alone = np.concatenate([enc.encode([texts[i]]) for i in sample])
        if enc is fp32:
            np.testing.assert_allclose(alone, many[sample], atol=1e-5)
        else:  # static int8: fixed activation scales, so a text's vector does not depend on its batch
            assert cosines(alone, many[sample]).min() >= 0.999
    # rows come back in input order despite length-sorted batching
    rev = fp32.encode(texts[:200][::-1])
    np.testing.assert_allclose(rev[::-1], fp32.encode(texts[:200]), atol=1e-5)


def test_concurrent_calls_from_threads_agree(fp32: TextEncoder) -> None:
    texts = corpus(120)
    want = fp32.encode(texts)
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        results[k] = fp32.encode(texts[k * 30 : (k + 1) * 30])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = np.concatenate([results[k] for k in range(4)])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_load_encoder_uses_settings(model_dir: Path) -> None:
    enc = load_encoder(minilm_settings().model_copy(update={"encoder_int8": False, "encoder_batch_size": 7}))
    assert enc.manifest.name == MINILM and enc.batch_size == 7 and enc.int8 is False
    assert_unit_rows(enc.encode(["hello", "world"]), 384)


@functools.lru_cache(maxsize=2)
def fp32_reference(model: str) -> dict[str, np.ndarray]:
    """fp32 vectors of the held-out evaluation sets for one model (computed once per session)."""
    fp32 = TextEncoder(ensure_model(Settings(model_name=model, model_dir=None)), int8=False, provider="cpu")
    return {name: fp32.encode(texts) for name, texts in evaluation_sets().items()}


def test_served_default_encoder_keeps_neighbours_and_is_batch_invariant() -> None:
    """The graph the default settings serve (issue 8's bar): top-10 overlap with fp32 >= 0.95, alone vs batch >= 0.999."""
    served = load_encoder(Settings(model_dir=None, encoder_provider="cpu"))
    reference = fp32_reference(served.manifest.name)
    for name, texts in evaluation_sets().items():
        f = measure(served.encode, reference[name], texts)
        print(f"{served.manifest.name} served ({'int8' if served.int8 else 'fp32'}) {name}: {f}")
        assert f.overlap >= 0.95, f"{name}: {f}"
        assert f.alone_vs_batch >= 0.999, f"{name}: {f}"


@pytest.mark.parametrize("model", [MINILM, "multilingual-e5-small"])
def test_int8_graph_is_batch_invariant_and_measured(model: str) -> None:
    """Every model's int8 graph gives a text the same vector alone and in a batch; its neighbour overlap is reported."""
    int8 = TextEncoder(ensure_model(Settings(model_name=model, model_dir=None)), int8=True, provider="cpu")
    reference = fp32_reference(model)
    for name, texts in evaluation_sets().items():
        f = measure(int8.encode, reference[name], texts)
        print(f"{model} int8 {name}: {f}")
        assert f.alone_vs_batch >= 0.999, f"{name}: {f}"
        assert f.mean_cos >= 0.99, f"{name}: {f}"


def test_graph_inputs_are_read_from_the_graph(model_dir: Path, tmp_path: Path) -> None:
    """A graph without token_type_ids is fed only the two inputs it declares (fastembed-style)."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(model_dir / "model.onnx"))
    users = [n for n in graph.graph.node if "token_type_ids" in n.input]
    zeros = helper.make_node("Sub", ["input_ids", "input_ids"], ["token_type_zeros"], name="token_type_zeros")
    for node in users:
        node.input[:] = ["token_type_zeros" if x == "token_type_ids" else x for x in node.input]
    graph.graph.node.insert(0, zeros)
    graph.graph.input.remove(next(i for i in graph.graph.input if i.name == "token_type_ids"))
    for name in ("tokenizer.json", "manifest.json"):
        (tmp_path / name).write_bytes((model_dir / name).read_bytes())
    onnx.save(graph, str(tmp_path / "model.onnx"))
    two = TextEncoder(tmp_path, int8=False, provider="cpu")
    assert two.inputs == ("input_ids", "attention_mask")
    texts = ["usb charger", "red running shoes for men"]
    np.testing.assert_allclose(two.encode(texts), TextEncoder(model_dir, int8=False, provider="cpu").encode(texts), atol=1e-5)


def test_provider_choice() -> None:
    assert choose_provider("cpu") == CPU
    with pytest.raises(ValueError):
        choose_provider("tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert choose_provider("auto") == CPU
        assert choose_provider("cuda") == CPU  # falls back, with a warning
