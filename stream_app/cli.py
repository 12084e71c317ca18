"""The `stream-app` command: broker lifecycle, worker, demo, encoder, evaluation and benchmarks."""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KAFKA_SCRIPT = REPO / "scripts" / "kafka.sh"


def kafka_command(action: str) -> int:
    """Run scripts/kafka.sh (fetch jars, format, start, stop, status) and return its exit code."""
    if not KAFKA_SCRIPT.exists():
        print(f"stream-app kafka needs a source checkout ({KAFKA_SCRIPT} is missing)", file=sys.stderr)
        return 2
    return subprocess.call([str(KAFKA_SCRIPT), action])


def worker_command(extra: list[str]) -> int:
    """Start the Faust worker of stream_app.app (web view included)."""
    import asyncio

    from stream_app.app import app, declare_topics
    from stream_app.settings import get_settings

    s = get_settings()
    asyncio.run(declare_topics())
    sys.argv = ["stream-app", "worker", "--web-port", str(s.web_port), "--web-host", s.web_host, *extra]
    app.main()
    return 0


def encode_command(texts: list[str], model: str | None, fp32: bool) -> int:
    """Encode texts once and print each vector's shape, norm and the time taken."""
    import time

    from stream_app.encoder import load_encoder
    from stream_app.settings import Settings

    overrides: dict[str, object] = {"encoder_int8": not fp32}
    if model:
        overrides["model_name"] = model
    settings = Settings(**overrides)
    encoder = load_encoder(settings)
    encoder.encode(texts[:1])  # warm-up: first run allocates
    t0 = time.perf_counter()
    vectors = encoder.encode(texts)
    ms = (time.perf_counter() - t0) * 1000
    print(f"model={encoder.manifest.name} graph={'fp32' if fp32 else 'int8'} provider={encoder.provider} dim={encoder.dim}")
    for text, vec in zip(texts, vectors):
        print(f"{vec.shape} norm={float((vec * vec).sum()) ** 0.5:.4f} head=[{', '.join(f'{x:+.4f}' for x in vec[:4])}] {text!r}")
    print(f"{len(texts)} texts in {ms:.2f} ms ({ms / max(len(texts), 1):.2f} ms/text)")
    return 0


def forget_command(user_id: str) -> int:
    """Produce a `forget` event for user_id on the behaviour topic: the worker deletes the user's state and traces."""
    import asyncio
    import json
    import time
    import uuid

    from aiokafka import AIOKafkaProducer

    from stream_app.settings import get_settings

    s = get_settings()
    event = {"event_id": f"forget-{uuid.uuid4().hex}", "user_id": user_id, "type": "forget", "ts": time.time()}

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(s.behaviour_topic, json.dumps(event, ensure_ascii=False).encode(),
                                         key=user_id.encode())
        finally:
            await producer.stop()

    asyncio.run(send())
    print(f"forget event {event['event_id']} sent to {s.behaviour_topic}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream-app", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    k = sub.add_parser("kafka", help="start/stop/status of the local single-node Kafka broker")
    k.add_argument("action", choices=["fetch", "start", "stop", "status", "logs"])

    sub.add_parser("worker", help="run the Faust worker (agents, tables, web view)", add_help=False)

    d = sub.add_parser("demo", help="the whole show: broker, model, worker, catalogue, scripted users")
    d.add_argument("--keep-running", action="store_true", help="leave the worker running after the script")

    e = sub.add_parser("encode", help="encode texts and print shapes and timing")
    e.add_argument("texts", nargs="+")
    e.add_argument("--model", help="model folder name (default: settings.model_name)")
    e.add_argument("--fp32", action="store_true", help="use the fp32 graph instead of int8")

    x = sub.add_parser("export-model", help="export a model folder (ONNX fp32 + int8, tokenizer, manifest)")
    x.add_argument("--model", help="model name (default: settings.model_name)")

    f = sub.add_parser("forget", help="forget a user: delete their state and every trace the worker keeps")
    f.add_argument("user_id")

    sub.add_parser("eval", help="offline replay evaluation (see stream-app eval --help)", add_help=False)
    sub.add_parser("bench", help="benchmarks that print numbers (see stream-app bench --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Sub-commands with their own parsers get the rest of the line untouched.
    if argv and argv[0] == "worker":
        logging.basicConfig(level=logging.INFO)
        return worker_command(argv[1:])
    if argv and argv[0] == "eval":
        from stream_app.offline.cli import main as eval_main

        return eval_main(argv[1:])
    if argv and argv[0] == "bench":
        from stream_app.bench import main as bench_main

        return bench_main(argv[1:])

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "kafka":
        return kafka_command(args.action)
    if args.command == "encode":
        return encode_command(args.texts, args.model, args.fp32)
    if args.command == "export-model":
        from models.export import ensure_model
        from stream_app.settings import Settings

        settings = Settings(**({"model_name": args.model} if args.model else {}))
        if not args.verbose:  # onnxruntime's quantiser logs every tensor on the root logger at INFO
            logging.getLogger().setLevel(logging.WARNING)
            logging.getLogger("models").setLevel(logging.INFO)
        print(ensure_model(settings))
        return 0
    if args.command == "forget":
        return forget_command(args.user_id)
    if args.command == "demo":
        from stream_app.demo import run_demo

        return run_demo(keep_running=args.keep_running)
    return 2


if __name__ == "__main__":
    sys.exit(main())
