"""ONNX sentence encoder: tokenizers + onnxruntime turn texts into L2-normalised float32 vectors (no torch)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from stream_app.settings import Settings, setting_default

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GRAPHS = {False: "model.onnx", True: "model.int8.onnx"}
# Every input an exported BERT graph may declare; a session is fed only the ones its graph lists.
KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class Manifest:
    """What an exported model folder declares about itself (manifest.json)."""

    name: str
    dim: int
    pooling: str
    normalize: bool
    max_tokens: int
    prefixes: dict[str, str] = field(default_factory=dict)
    source: dict = field(default_factory=dict)
    int8: dict = field(default_factory=dict)  # the int8 graph's quantisation recipe (models.export.quantize_int8)
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, model_dir: Path) -> "Manifest":
        """Read manifest.json of an exported folder."""
        data = json.loads((Path(model_dir) / "manifest.json").read_text(encoding="utf-8"))
        return cls(
            name=data["name"],
            dim=int(data["dim"]),
            pooling=data["pooling"],
            normalize=bool(data["normalize"]),
            max_tokens=int(data["max_tokens"]),
            prefixes=dict(data.get("prefixes", {})),
            source=dict(data.get("source", {})),
            int8=dict(data.get("int8", {})),
            files=dict(data.get("files", {})),
        )


def choose_provider(requested: str) -> str:
    """CUDA when asked for (auto/cuda) and this onnxruntime build has it, else CPU."""
    requested = requested.lower()
    if requested not in ("auto", "cuda", "cpu"):
        raise ValueError(f"provider must be auto, cuda or cpu, not {requested!r}")
    available = ort.get_available_providers()
    if requested in ("auto", "cuda") and CUDA in available:
        return CUDA
    if requested == "cuda":
        log.warning("CUDAExecutionProvider requested but not available (%s); using CPU", available)
    return CPU


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list, or TypeError naming the first non-str item (a bare str is rejected too)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("encode() takes a sequence of str, not a single str/bytes; wrap it in a list")
    try:
        items = list(texts)
    except TypeError:
        raise TypeError(f"encode() takes a sequence of str, not {type(texts).__name__}") from None
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"encode() needs str items; item {i} is {type(text).__name__}: {text!r:.60}")
    return items


def pad_batch(ids: Sequence[Sequence[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad token id lists to the longest one: every known int64 model input (callers keep what a graph declares)."""
    longest = max(len(x) for x in ids)
    input_ids = np.full((len(ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}


def graph_inputs(session: ort.InferenceSession) -> tuple[str, ...]:
    """The input names the graph declares (fastembed-style: feed exactly these), or ValueError for one we cannot make."""
    names = tuple(i.name for i in session.get_inputs())
    unknown = [n for n in names if n not in KNOWN_INPUTS]
    if unknown or "input_ids" not in names:
        raise ValueError(f"graph inputs {names}: the encoder can feed {KNOWN_INPUTS} and needs input_ids")
    return names


class TextEncoder:
    """Encodes text with an exported model folder; thread-safe (tokenizer and session are only read after init).

    The fp32 graph is the default on every CPU and on CUDA: no int8 graph kept top-10 neighbours within the bar
    (see README, Encoders). int8=True selects the static int8 graph on CPU (deterministic per text, 7-bit weights
    so AVX2 and VNNI kernels agree); it is ignored on CUDA, where fp32 is the fast graph.
    """

    def __init__(
        self, model_dir: Path, *, int8: bool = False, provider: str = "auto", threads: int = 0,
        batch_size: int = setting_default("encoder_batch_size"), spin: bool = False,
    ) -> None:
        model_dir = Path(model_dir)
        self.manifest = Manifest.load(model_dir)
        self.dim = self.manifest.dim
        self.batch_size = max(1, int(batch_size))
        self.provider = choose_provider(provider)
        self.int8 = int8 and self.provider == CPU
        graph = model_dir / GRAPHS[self.int8]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = max(0, int(threads))
        options.inter_op_num_threads = 1
        # Spin-waiting intra-op threads take cores the event loop, the store process and the broker need, and
        # stall when one is taken (see Settings.encoder_spin).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        providers = [self.provider, CPU] if self.provider == CUDA else [CPU]
        self.session = ort.InferenceSession(str(graph), options, providers=providers)
        self.inputs = graph_inputs(self.session)
        self.output = self.session.get_outputs()[0].name
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()  # pad per length-sorted batch ourselves (a fixed 128 is ~8x slower on titles)
        self.tokenizer.enable_truncation(self.manifest.max_tokens)
        self.pad_id = self._pad_id()
        log.info("encoder %s: %s, %s, inputs %s, dim %d, max_tokens %d", self.manifest.name, graph.name,
                 self.session.get_providers()[0], ",".join(self.inputs), self.dim, self.manifest.max_tokens)

    def _pad_id(self) -> int:
        """Id of the tokenizer's padding token (its value is masked out anyway, but must be a valid row)."""
        for token in ("[PAD]", "<pad>"):
            token_id = self.tokenizer.token_to_id(token)
            if token_id is not None:
                return token_id
        return 0

    def tokenize(self, texts: Sequence[str], kind: str = "passage") -> list[list[int]]:
        """Token ids per text, with the model's prefix for `kind` (query/passage) and truncation to max_tokens."""
        if kind not in ("query", "passage"):
            raise ValueError(f"kind must be 'query' or 'passage', not {kind!r}")
        prefix = self.manifest.prefixes.get(kind, "")
        items = check_texts(texts)
        encodings = self.tokenizer.encode_batch([prefix + t for t in items])
        return [e.ids for e in encodings]

    def run(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """One session run over a padded batch of token ids -> (n, dim) float32."""
        feed = pad_batch(ids, self.pad_id)
        return self.session.run([self.output], {name: feed[name] for name in self.inputs})[0]

    def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        """(n, dim) float32 unit vectors; texts are length-sorted into batches so padding stays small."""
        ids = self.tokenize(texts, kind)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        if not ids:
            return out
        order = np.argsort([len(x) for x in ids], kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self.run([ids[r] for r in rows])
        if not self.manifest.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def load_encoder(settings: Settings) -> TextEncoder:
    """The encoder the settings describe, exporting its model folder into the cache first when missing or stale."""
    from models.export import ensure_model  # noqa: PLC0415 - onnx/safetensors are imported only if an export runs

    model_dir = ensure_model(settings)
    return TextEncoder(
        model_dir,
        int8=settings.encoder_int8,
        provider=settings.encoder_provider,
        threads=settings.encoder_threads,
        batch_size=settings.encoder_batch_size,
        spin=settings.encoder_spin,
    )
