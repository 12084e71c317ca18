"""Benchmarks that print numbers (nothing is asserted): python -m stream_app.bench <name> [options].

Add a bench by putting a `main(argv) -> int` in BENCHES (lazily imported modules keep startup cheap).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "catalogue.jsonl"
MINILM = "all-MiniLM-L6-v2"

# Deterministic fallback text when the sample catalogue is absent (English and Chinese on purpose).
_NOUNS = ["wireless earbuds", "running shoes", "coffee grinder", "yoga mat", "laptop backpack", "desk lamp",
          "water bottle", "gaming mouse", "linen shirt", "blender", "phone case", "air fryer",
          "蓝牙耳机", "跑步鞋", "保温杯", "机械键盘"]
_ADJ = ["black", "lightweight", "waterproof", "stainless steel", "organic", "compact", "ergonomic", "2-pack",
        "USB-C", "noise cancelling", "轻便", "防水"]
_SENTENCES = [
    "I bought this for my daily commute and it has held up well so far.",
    "The battery easily lasts a full day and charging is quick.",
    "Build quality feels solid, although the buttons are a little stiff.",
    "Delivery was fast and the packaging was recyclable.",
    "After two weeks the seams started to fray, which was disappointing.",
    "It is smaller than it looks in the photos but fits everything I need.",
    "Customer service replaced the faulty unit without any questions.",
    "质量很好，物流也很快，会推荐给朋友。",
    "用了一个月，电池续航依然不错。",
    "The instructions were unclear, so setup took longer than expected.",
]


def _catalogue() -> list[dict]:
    """Items of the sample catalogue, or [] when it is not there."""
    if not DATA.exists():
        return []
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def bench_titles(n: int) -> list[str]:
    """n short product titles: the catalogue's, varied by a suffix when cycled, else built-in ones."""
    base = [item["title"] for item in _catalogue() if item.get("title")]
    if not base:
        base = [f"{a} {b}" for b in _NOUNS for a in _ADJ]
    return [base[i % len(base)] + ("" if i < len(base) else f" ({i // len(base) + 1})") for i in range(n)]


def bench_reviews(n: int, min_chars: int = 300) -> list[str]:
    """n review-like texts of roughly 100 tokens, built deterministically from catalogue descriptions and stock sentences."""
    pool = [item["text"] for item in _catalogue() if item.get("text")] + _SENTENCES
    out = []
    for i in range(n):
        parts, j = [], 0
        while sum(len(p) for p in parts) < min_chars:
            parts.append(pool[(i * 7 + j * 13) % len(pool)])
            j += 1
        out.append(" ".join(parts))
    return out


def throughput(encode: Callable[[list[str]], object], texts: Sequence[str], batch: int, min_seconds: float,
               rounds: int = 3) -> float:
    """Best texts/s of `rounds` timed rounds over consecutive batches (best-of damps noise from shared cores)."""
    encode(list(texts[:batch]))
    best, i = 0.0, 0
    for _ in range(rounds):
        done, start = 0, time.perf_counter()
        while True:
            encode([texts[(i + k) % len(texts)] for k in range(batch)])
            done += batch
            i += batch
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds / rounds and done >= batch:
                break
        best = max(best, done / elapsed)
    return best


def median_latency_ms(encode: Callable[[list[str]], object], texts: Sequence[str]) -> float:
    """Median wall time of encoding one text at a time."""
    encode([texts[0]])
    times = []
    for text in texts:
        start = time.perf_counter()
        encode([text])
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


# Runs inside another interpreter that has sentence-transformers + torch (never this venv): reads a job on stdin,
# prints texts/s per set and batch, batch-1 median latency and embeddings of the parity texts as JSON.
_PEER_SCRIPT = r"""
import json, sys, time
import numpy as np, sentence_transformers, torch
job = json.load(sys.stdin)
if job["threads"]:
    torch.set_num_threads(job["threads"])
st = sentence_transformers.SentenceTransformer(job["checkpoint"], device="cpu")
enc = lambda t: st.encode(t, batch_size=len(t), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
out = {"version": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
                  f"{torch.get_num_threads()} threads", "rate": {}}
for name, texts in job["sets"].items():
    for b in job["batches"]:
        enc(texts[:b]); best, i = 0.0, 0
        for _ in range(job["rounds"]):
            done, t0 = 0, time.perf_counter()
            while True:
                enc([texts[(i + k) % len(texts)] for k in range(b)]); done += b; i += b
                el = time.perf_counter() - t0
                if el >= job["min_seconds"] / job["rounds"]:
                    break
            best = max(best, done / el)
        out["rate"][f"{name}/{b}"] = best
lat = []
for t in job["latency_texts"]:
    t0 = time.perf_counter(); enc([t]); lat.append(time.perf_counter() - t0)
out["latency_ms"] = float(np.median(lat) * 1e3)
out["embeddings"] = enc(job["parity_texts"]).tolist()
print(json.dumps(out))
"""


def _st_checkpoint(model: str) -> Path | None:
    """The sentence-transformers folder (modules.json) of a prepared checkpoint, if there is one."""
    from models import sources  # noqa: PLC0415

    checkpoint = sources.prepared_checkpoint(model)
    return checkpoint if checkpoint is not None and (checkpoint / "modules.json").exists() else None


def sentence_transformers_peer(python: str, model: str, job: dict) -> tuple[dict | None, str]:
    """Run the sentence-transformers peer in `python` (a venv with torch); (results, note) or (None, why not)."""
    checkpoint = _st_checkpoint(model)
    if checkpoint is None:
        return None, f"no sentence-transformers folder for {model} (peer skipped)"
    if not python:
        try:
            import sentence_transformers  # noqa: F401, PLC0415
        except ImportError:
            return None, "sentence-transformers not importable here and no --st-python given (peer skipped)"
        python = sys.executable
    if not Path(python).exists():
        return None, f"--st-python {python} does not exist (peer skipped)"
    proc = subprocess.run([python, "-c", _PEER_SCRIPT], input=json.dumps(dict(job, checkpoint=str(checkpoint))),
                          capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if proc.returncode != 0:
        return None, f"peer failed: {proc.stderr.strip().splitlines()[-1:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result, result["version"] + f" via {python}"


def dynamic_int8_folder(model_dir: Path, tmp: Path) -> Path:
    """A copy of model_dir (links) whose int8 graph is the former recipe: dynamic int8, per-channel, FFN output fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415
    from stream_app.encoder import Manifest  # noqa: PLC0415

    for name in ("model.onnx", "tokenizer.json", "manifest.json"):
        (tmp / name).symlink_to(model_dir / name)
    quant_pre_process(str(model_dir / "model.onnx"), str(tmp / "inferred.onnx"), skip_optimization=True)
    quantize_dynamic(str(tmp / "inferred.onnx"), str(tmp / "model.int8.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8, nodes_to_exclude=Manifest.load(model_dir).int8["fp32_nodes"])
    return tmp


def encoder_main(argv: list[str] | None = None) -> int:
    """Per graph: texts/s, batch-1 latency, and fidelity to fp32 (top-10 overlap, alone vs batch), in one run."""
    import tempfile  # noqa: PLC0415

    from models.export import ensure_model  # noqa: PLC0415
    from models.fidelity import evaluation_sets, measure  # noqa: PLC0415
    from stream_app.encoder import TextEncoder  # noqa: PLC0415
    from stream_app.settings import Settings  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="python -m stream_app.bench encoder", description=encoder_main.__doc__)
    parser.add_argument("--model", default=Settings().model_name, help="model name (exported into the cache if missing)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for onnxruntime and torch; 0 = default")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--min-seconds", type=float, default=1.5, help="timed seconds per cell (split into 3 rounds)")
    parser.add_argument("--bulk-texts", type=int, default=2000, help="titles per call on the indexing path; 0 skips it")
    parser.add_argument("--dynamic", action="store_true",
                        help="also measure the former dynamic int8 graph (built into a temporary folder)")
    parser.add_argument("--st-python", default=os.environ.get("STREAM_APP_ST_PYTHON", ""),
                        help="an interpreter with sentence-transformers+torch to run the peer in (torch is not a dep)")
    parser.add_argument("--no-peer", action="store_true", help="skip sentence-transformers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import onnxruntime as ort  # noqa: PLC0415

    settings = Settings(model_name=args.model, model_dir=None)
    model_dir = ensure_model(settings)
    big = max(args.batch_sizes)
    graphs = {"onnx fp32": (model_dir, False), "onnx int8 static": (model_dir, True)}
    tmp = tempfile.TemporaryDirectory(prefix="bench-dynamic-")
    if args.dynamic:
        graphs["onnx int8 dynamic"] = (dynamic_int8_folder(model_dir, Path(tmp.name)), True)
    encoders = {n: TextEncoder(d, int8=flag, provider="cpu", threads=args.threads, batch_size=big)
                for n, (d, flag) in graphs.items()}
    served = "onnx int8 static" if settings.encoder_int8 else "onnx fp32"
    engines: dict[str, Callable[[list[str]], object]] = {n: e.encode for n, e in encoders.items()}
    fp32 = encoders["onnx fp32"]
    titles, reviews = bench_titles(2000), bench_reviews(600)
    sets = {"titles": titles, "reviews": reviews}
    tokens = {k: np.mean([len(x) for x in fp32.tokenize(v[:200])]) for k, v in sets.items()}
    print(f"encoder bench: {args.model} ({model_dir}), onnxruntime {ort.__version__} CPU, "
          f"threads={args.threads or 'default'}, {os.cpu_count()} cpus, load avg {os.getloadavg()[0]:.2f}")
    print(f"titles: mean {tokens['titles']:.1f} tokens; reviews: mean {tokens['reviews']:.1f} tokens; "
          f"texts/s is the best of 3 rounds per cell")

    rates = {(n, k, b): throughput(fn, texts, b, args.min_seconds)
             for k, texts in sets.items() for b in args.batch_sizes for n, fn in engines.items()}
    lat = {n: median_latency_ms(fn, titles[:200]) for n, fn in engines.items()}

    peer, note = (None, "peer disabled (--no-peer)")
    parity = titles[:128] + reviews[:128]
    if not args.no_peer:
        job = {"threads": args.threads, "batches": args.batch_sizes, "min_seconds": args.min_seconds, "rounds": 3,
               "sets": {k: v[:600] for k, v in sets.items()}, "latency_texts": titles[:200], "parity_texts": parity}
        peer, note = sentence_transformers_peer(args.st_python, args.model, job)
    print(f"peer: {note}")
    names = list(engines) + (["sentence-transformers"] if peer else [])
    if peer:
        for k in sets:
            for b in args.batch_sizes:
                rates[("sentence-transformers", k, b)] = peer["rate"][f"{k}/{b}"]
        lat["sentence-transformers"] = peer["latency_ms"]
    print(f"{'texts/s':<10}{'batch':>6}" + "".join(f"{n:>23}" for n in names))
    for k in sets:
        for b in args.batch_sizes:
            print(f"{k:<10}{b:>6}" + "".join(f"{rates[(n, k, b)]:>23.0f}" for n in names))
    print("batch-1 median latency, titles (ms): " + ", ".join(f"{n} {v:.2f}" for n, v in lat.items()))

    # The indexing path: a whole batch in one call, which the encoder sorts by length into batches of 32.
    if args.bulk_texts:
        bulk, many = {}, bench_titles(args.bulk_texts)
        for n, (d, flag) in graphs.items():
            enc = TextEncoder(d, int8=flag, provider="cpu", threads=args.threads, batch_size=32)
            bulk[n] = throughput(enc.encode, many, len(many), args.min_seconds)
        print(f"titles, {len(many)} per call (sorted by length into batches of 32), texts/s: "
              + ", ".join(f"{n} {v:.0f}" for n, v in bulk.items()))

    # Fidelity on held-out texts (models.fidelity: never used to calibrate the static int8 graph).
    held_out = evaluation_sets()
    reference = {k: fp32.encode(v) for k, v in held_out.items()}
    print(f"fidelity vs fp32 on held-out texts ({', '.join(f'{len(v)} {k}' for k, v in held_out.items())}); "
          f"alone vs batch: min cosine of a text encoded alone vs in one call with the whole set (batches of {big}); "
          f"served by default: {served}")
    print(f"{'graph':<20}{'set':<9}{'top-10 overlap':>15}{'mean cos':>10}{'min cos':>9}{'alone vs batch':>16}"
          f"{'texts/s b32' if 32 in args.batch_sizes else '':>13}")
    for n, enc in encoders.items():
        for k, texts in held_out.items():
            f = measure(enc.encode, reference[k], texts)
            rate = f"{rates[(n, k, 32)]:.0f}" if 32 in args.batch_sizes else ""
            print(f"{n:<20}{k:<9}{f.overlap:>15.3f}{f.mean_cos:>10.4f}{f.min_cos:>9.4f}{f.alone_vs_batch:>16.5f}{rate:>13}")
    tmp.cleanup()
    if peer:
        ref = np.asarray(peer["embeddings"], dtype=np.float32)
        st_cos = (fp32.encode(parity) * ref).sum(1)
        print(f"fp32 vs sentence-transformers over {len(ref)} texts: mean cos {st_cos.mean():.6f}, "
              f"min cos {st_cos.min():.6f}")
    print(f"load avg at end {os.getloadavg()[0]:.2f} (numbers are noisy when other work shares the cores)")
    return 0


def _lazy(target: str) -> Callable[[list[str]], int]:
    """A bench living in another module ('module:function'), imported only when chosen."""
    def run(argv: list[str]) -> int:
        module, func = target.split(":")
        return getattr(importlib.import_module(module), func)(argv)
    return run


def pipeline_main(argv: list[str]) -> int:
    """benchmarks/pipeline.py (outside the package: it needs a source checkout, like scripts/)."""
    repo = Path(__file__).resolve().parents[1]
    if not (repo / "benchmarks" / "pipeline.py").exists():
        print(f"stream-app bench pipeline needs a source checkout ({repo / 'benchmarks'} is missing)", file=sys.stderr)
        return 2
    if str(repo) not in sys.path:
        sys.path.insert(0, str(repo))
    from benchmarks.pipeline import main as run_pipeline

    return run_pipeline(argv)


BENCHES: dict[str, Callable[[list[str]], int]] = {
    "encoder": encoder_main,
    "vectorstore": _lazy("stream_app.bench_vectorstore:main"),
    "pipeline": pipeline_main,
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the named bench."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print(f"usage: python -m stream_app.bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 2
    return int(BENCHES[argv[0]](argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
