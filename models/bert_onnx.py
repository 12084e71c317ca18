"""Build a BERT sentence-encoder ONNX graph (mean pooling + L2 norm folded in) straight from HF safetensors, no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


@dataclass(frozen=True)
class BertConfig:
    """The config.json fields the graph needs."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    eps: float
    max_positions: int
    type_vocab: int
    position_offset: int = 0  # first position id (XLM-R checkpoints that keep the padding rows: 2)

    @classmethod
    def from_dict(cls, cfg: dict) -> "BertConfig":
        """Read an HF BertConfig dict; rejects what the graph does not implement."""
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"unsupported hidden_act {act!r}: the graph implements exact erf GELU only")
        return cls(
            hidden=int(cfg["hidden_size"]),
            layers=int(cfg["num_hidden_layers"]),
            heads=int(cfg["num_attention_heads"]),
            intermediate=int(cfg["intermediate_size"]),
            eps=float(cfg.get("layer_norm_eps", 1e-12)),
            max_positions=int(cfg.get("max_position_embeddings", 512)),
            type_vocab=int(cfg.get("type_vocab_size", 2)),
            position_offset=int(cfg.get("position_offset", 0)),
        )

    @property
    def max_tokens(self) -> int:
        """Longest input the position table covers, given the offset."""
        return self.max_positions - self.position_offset


def ffn_output_matmul(layer: int) -> str:
    """Node name of a layer's second FFN dense MatMul (kept fp32 when quantising: it is the most range-sensitive)."""
    return f"/encoder/layer.{layer}/output/dense/MatMul"


def strip_prefix(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Accept both BertModel names ('embeddings.…') and BertFor*/ST names ('bert.…', '0.auto_model.…')."""
    for prefix in ("bert.", "model.", "0.auto_model.", "auto_model."):
        if any(k.startswith(prefix + "embeddings.") for k in weights):
            return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    return dict(weights)


class _Graph:
    """Tiny helper that accumulates nodes and initializers with unique, readable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._consts: dict[tuple, str] = {}

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        """A shared scalar/vector constant initializer."""
        arr = np.asarray(value, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(f"const_{len(self._consts)}", arr)
        return self._consts[key]

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> str | list[str]:
        outs = [f"{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs


def _linear(g: _Graph, x: str, weights: dict[str, np.ndarray], key: str, scope: str) -> str:
    """x @ W.T + b as MatMul + Add (the pattern onnxruntime's fusions and quantiser expect)."""
    w = g.init(f"{key}.weight", weights[f"{key}.weight"].astype(np.float32).T)
    b = g.init(f"{key}.bias", weights[f"{key}.bias"].astype(np.float32))
    y = g.op("MatMul", [x, w], f"{scope}/MatMul")
    return g.op("Add", [b, y], f"{scope}/Add")


def _layer_norm(g: _Graph, x: str, weights: dict[str, np.ndarray], key: str, scope: str, eps: float) -> str:
    scale = g.init(f"{key}.weight", weights[f"{key}.weight"].astype(np.float32))
    bias = g.init(f"{key}.bias", weights[f"{key}.bias"].astype(np.float32))
    return g.op("LayerNormalization", [x, scale, bias], f"{scope}/LayerNormalization", axis=-1, epsilon=eps)


def _gelu(g: _Graph, x: str, scope: str) -> str:
    """Exact erf GELU, x * 0.5 * (1 + erf(x / sqrt 2)), in the node order onnxruntime's GeluFusion matches."""
    d = g.op("Div", [x, g.const(math.sqrt(2.0))], f"{scope}/Div")
    e = g.op("Erf", [d], f"{scope}/Erf")
    a = g.op("Add", [e, g.const(1.0)], f"{scope}/Add")
    m = g.op("Mul", [x, a], f"{scope}/Mul")
    return g.op("Mul", [m, g.const(0.5)], f"{scope}/Mul_1")


def _attention(g: _Graph, x: str, mask_bias: str, w: dict[str, np.ndarray], i: int, cfg: BertConfig) -> str:
    """Multi-head self-attention in the exported-HF-BERT layout (fusable into com.microsoft Attention)."""
    scope = f"/encoder/layer.{i}/attention"
    key = f"encoder.layer.{i}.attention"
    head_dim = cfg.hidden // cfg.heads
    split = g.const([0, 0, cfg.heads, head_dim], np.int64)
    merge = g.const([0, 0, cfg.hidden], np.int64)

    def heads(name: str, perm: list[int]) -> str:
        y = _linear(g, x, w, f"{key}.self.{name}", f"{scope}/self/{name}")
        r = g.op("Reshape", [y, split], f"{scope}/self/{name}/Reshape")
        return g.op("Transpose", [r], f"{scope}/self/{name}/Transpose", perm=perm)

    q = heads("query", [0, 2, 1, 3])
    k = heads("key", [0, 2, 3, 1])
    v = heads("value", [0, 2, 1, 3])
    scores = g.op("MatMul", [q, k], f"{scope}/self/MatMul")
    scaled = g.op("Div", [scores, g.const(math.sqrt(head_dim))], f"{scope}/self/Div")
    masked = g.op("Add", [scaled, mask_bias], f"{scope}/self/Add")
    probs = g.op("Softmax", [masked], f"{scope}/self/Softmax", axis=-1)
    ctx = g.op("MatMul", [probs, v], f"{scope}/self/MatMul_1")
    ctx = g.op("Transpose", [ctx], f"{scope}/self/Transpose_3", perm=[0, 2, 1, 3])
    ctx = g.op("Reshape", [ctx, merge], f"{scope}/self/Reshape_3")
    out = _linear(g, ctx, w, f"{key}.output.dense", f"{scope}/output/dense")
    res = g.op("Add", [out, x], f"{scope}/output/Add")
    return _layer_norm(g, res, w, f"{key}.output.LayerNorm", f"{scope}/output/LayerNorm", cfg.eps)


def _ffn(g: _Graph, x: str, w: dict[str, np.ndarray], i: int, cfg: BertConfig) -> str:
    key = f"encoder.layer.{i}"
    scope = f"/encoder/layer.{i}"
    h = _linear(g, x, w, f"{key}.intermediate.dense", f"{scope}/intermediate/dense")
    h = _gelu(g, h, f"{scope}/intermediate/intermediate_act_fn")
    out = _linear(g, h, w, f"{key}.output.dense", f"{scope}/output/dense")
    res = g.op("Add", [out, x], f"{scope}/output/Add")
    return _layer_norm(g, res, w, f"{key}.output.LayerNorm", f"{scope}/output/LayerNorm", cfg.eps)


def _embeddings(g: _Graph, w: dict[str, np.ndarray], cfg: BertConfig) -> str:
    """word + position + token_type embeddings -> LayerNorm."""
    word = g.init("embeddings.word_embeddings.weight", w["embeddings.word_embeddings.weight"].astype(np.float32))
    pos = g.init("embeddings.position_embeddings.weight", w["embeddings.position_embeddings.weight"].astype(np.float32))
    typ = g.init("embeddings.token_type_embeddings.weight", w["embeddings.token_type_embeddings.weight"].astype(np.float32))
    scope = "/embeddings"
    shape = g.op("Shape", ["input_ids"], f"{scope}/Shape")
    seq = g.op("Gather", [shape, g.const(1, np.int64)], f"{scope}/Gather", axis=0)
    start = g.const(cfg.position_offset, np.int64)
    end = g.op("Add", [seq, start], f"{scope}/Add_positions") if cfg.position_offset else seq
    positions = g.op("Range", [start, end, g.const(1, np.int64)], f"{scope}/Range")
    positions = g.op("Unsqueeze", [positions, g.const([0], np.int64)], f"{scope}/Unsqueeze")
    we = g.op("Gather", [word, "input_ids"], f"{scope}/word_embeddings/Gather")
    te = g.op("Gather", [typ, "token_type_ids"], f"{scope}/token_type_embeddings/Gather")
    pe = g.op("Gather", [pos, positions], f"{scope}/position_embeddings/Gather")
    s = g.op("Add", [we, te], f"{scope}/Add")
    s = g.op("Add", [s, pe], f"{scope}/Add_1")
    return _layer_norm(g, s, w, "embeddings.LayerNorm", f"{scope}/LayerNorm", cfg.eps)


def _mask_bias(g: _Graph) -> tuple[str, str]:
    """(float mask (batch, seq), additive attention bias (batch, 1, 1, seq): 0 for tokens, -10000 for padding)."""
    scope = "/extended_attention_mask"
    u = g.op("Unsqueeze", ["attention_mask", g.const([1], np.int64)], f"{scope}/Unsqueeze")
    u = g.op("Unsqueeze", [u, g.const([2], np.int64)], f"{scope}/Unsqueeze_1")
    c = g.op("Cast", [u], f"{scope}/Cast", to=TensorProto.FLOAT)
    inv = g.op("Sub", [g.const(1.0), c], f"{scope}/Sub")
    bias = g.op("Mul", [inv, g.const(-10000.0)], f"{scope}/Mul")
    maskf = g.op("Cast", ["attention_mask"], "/pooling/Cast", to=TensorProto.FLOAT)
    return maskf, bias


def _pool_normalize(g: _Graph, hidden: str, maskf: str, normalize: bool) -> str:
    """Masked mean over tokens, then (optionally) L2 normalisation: the sentence-transformers head."""
    scope = "/pooling"
    m3 = g.op("Unsqueeze", [maskf, g.const([-1], np.int64)], f"{scope}/Unsqueeze")
    summed = g.op("ReduceSum", [g.op("Mul", [hidden, m3], f"{scope}/Mul"), g.const([1], np.int64)], f"{scope}/ReduceSum", keepdims=0)
    count = g.op("ReduceSum", [m3, g.const([1], np.int64)], f"{scope}/ReduceSum_1", keepdims=0)
    count = g.op("Max", [count, g.const(1e-9)], f"{scope}/Max")
    mean = g.op("Div", [summed, count], f"{scope}/Div")
    if not normalize:
        return mean
    norm = g.op("ReduceL2", [mean], "/normalize/ReduceL2", axes=[1], keepdims=1)
    norm = g.op("Max", [norm, g.const(1e-12)], "/normalize/Max")
    return g.op("Div", [mean, norm], "/normalize/Div")


def build_bert_encoder(weights: dict[str, np.ndarray], cfg: BertConfig, *, normalize: bool = True) -> onnx.ModelProto:
    """The whole sentence encoder: (input_ids, attention_mask, token_type_ids) int64 -> sentence_embedding (batch, hidden)."""
    w = strip_prefix(weights)
    g = _Graph()
    maskf, bias = _mask_bias(g)
    x = _embeddings(g, w, cfg)
    for i in range(cfg.layers):
        x = _attention(g, x, bias, w, i, cfg)
        x = _ffn(g, x, w, i, cfg)
    pooled = _pool_normalize(g, x, maskf, normalize)
    g.nodes.append(helper.make_node("Identity", [pooled], ["sentence_embedding"], name="/output/Identity"))
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask", "token_type_ids")
    ]
    output = helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", cfg.hidden])
    graph = helper.make_graph(g.nodes, "bert_sentence_encoder", inputs, [output], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="stream_app.models")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
