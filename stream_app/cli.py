"""stream-app: real-time recommendations from a Kafka behaviour stream.

Start here:  stream-app kafka start  ·  stream-app worker  ·  stream-app produce FILE  ·  stream-app tail
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import warnings
from typing import Any

from stream_app.adapters.broker import kafka_command

log = logging.getLogger("stream_app")


def fail(message: str, code: int = 1) -> int:
    """Print one line to stderr and return the exit code."""
    sys.stderr.write(f"stream-app: error: {message}\n")
    return code


def client_options(settings: Any) -> dict[str, Any]:
    """aiokafka keyword arguments beyond the bootstrap address: the Kafka security settings (STREAM_APP_KAFKA_*)."""
    from stream_app.adapters.kafka_security import client_kwargs

    return {k: v for k, v in client_kwargs(settings).items() if k != "bootstrap_servers"}


def worker_command(faust_args: list[str]) -> int:
    """Checks that fail fast with one line, then the Faust worker of stream_app.stream.app (web view included)."""
    from stream_app.stream.startup import (
        CoordinatorNoise,
        StartupError,
        check_port,
        load_model,
        load_settings,
        lock_data_dir,
        quiet_worker_class,
    )

    if any(a in ("-h", "--help") for a in faust_args):  # Faust's own option help: no broker, no checks
        from stream_app.stream.app import app

        sys.argv = ["stream-app", "worker", *faust_args]
        app.main()
        return 0
    try:
        settings = load_settings()
        lock_data_dir(settings.data_dir)
        bind = getattr(settings, "web_bind", None) or "0.0.0.0"
        check_port(bind, settings.web_port)
        try:
            from stream_app.stream.app import app, declare_topics, pipeline
        except Exception as exc:  # noqa: BLE001 - e.g. Faust refusing a setting (ImproperlyConfigured)
            raise StartupError(f"cannot set up the Faust app from the STREAM_APP_* settings: {exc}", 2) from None

        aiokafka_log = logging.getLogger("aiokafka")
        level, aiokafka_log.level = aiokafka_log.level, logging.CRITICAL  # our one line says it
        try:
            asyncio.run(asyncio.wait_for(declare_topics(), timeout=30))
        except StartupError:
            raise
        except Exception as exc:  # noqa: BLE001 - the broker's failure is reported in one line
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StartupError(f"cannot reach Kafka at STREAM_APP_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}: "
                               f"{detail}") from None
        finally:
            aiokafka_log.setLevel(level)
        log.info("loading the encoder model %s", settings.model_dir or settings.model_name)
        encoder = load_model(settings)
    except StartupError as exc:
        return fail(str(exc), exc.exit_code)
    pipeline.encoder = encoder  # loaded once, above
    logging.getLogger("aiokafka.consumer.group_coordinator").addFilter(CoordinatorNoise())
    with warnings.catch_warnings():  # set before the worker exists; Faust warns about any late conf change
        warnings.simplefilter("ignore")
        app.conf.Worker = quiet_worker_class(app.conf.Worker)
    sys.argv = ["stream-app", "worker", "--web-port", str(settings.web_port), "--web-host", settings.web_host,
                *faust_args]
    app.main()
    return 0


def encode_command(texts: list[str], model: str | None, fp32: bool) -> int:
    """Encode texts once and print each vector's shape, norm and the time taken."""
    import time

    from stream_app.adapters.encoder import load_encoder
    from stream_app.stream.startup import StartupError, load_settings

    overrides: dict[str, object] = {"encoder_int8": False} if fp32 else {}
    if model:
        overrides["model_name"] = model
    try:
        settings = load_settings(cached=False).model_copy(update=overrides)
        encoder = load_encoder(settings)
    except StartupError as exc:
        return fail(str(exc), exc.exit_code)
    except (OSError, ValueError) as exc:  # e.g. an unknown model
        return fail(str(exc))
    encoder.encode(texts[:1])  # warm-up: first run allocates
    t0 = time.perf_counter()
    vectors = encoder.encode(texts)
    ms = (time.perf_counter() - t0) * 1000
    print(f"model={encoder.manifest.name} graph={'int8' if encoder.int8 else 'fp32'} provider={encoder.provider} dim={encoder.dim}")
    for text, vec in zip(texts, vectors):
        print(f"{vec.shape} norm={float((vec * vec).sum()) ** 0.5:.4f} head=[{', '.join(f'{x:+.4f}' for x in vec[:4])}] {text!r}")
    print(f"{len(texts)} texts in {ms:.2f} ms ({ms / max(len(texts), 1):.2f} ms/text)")
    return 0


def bench_command(rest: list[str]) -> int:
    from stream_app.bench import BENCHES
    from stream_app.bench import main as bench_main

    if not rest or rest[0] in ("-h", "--help"):
        print(f"usage: stream-app bench {{{','.join(BENCHES)}}} [options]\n\n"
              "Benchmarks that print numbers; `stream-app bench NAME --help` lists a benchmark's options.")
        return 0 if rest else 2
    return bench_main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream-app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    k = sub.add_parser("kafka", help="the local single-node Kafka broker: fetch, start, stop, status, logs [N]")
    k.add_argument("action", choices=["fetch", "start", "stop", "status", "logs"])
    k.add_argument("lines", nargs="?", type=int, help="logs: how many of the last lines to show (default 100)")

    w = sub.add_parser("worker", help="run the worker (agents, tables, web view); checks its settings first",
                       description="Run the Faust worker. Settings come from STREAM_APP_* variables; the options "
                                   "after `worker` go to Faust (`stream-app worker --help` lists them).",
                       add_help=False)

    p = sub.add_parser("produce", help="send JSON lines (items or behaviour events) from a file or stdin",
                       description="Each line is a JSON object: a behaviour event (type + user_id) goes to the "
                                   "behaviour topic keyed by user_id, an item (item_id) to the items topic keyed "
                                   "by item_id. Lines that are not JSON objects are skipped and reported.")
    p.add_argument("file", help="a .jsonl file, or - for stdin")
    p.add_argument("--topic", help="send every line to this topic (default: by content)")

    t = sub.add_parser("tail", help="print recommendations or dead letters as they arrive")
    t.add_argument("which", nargs="?", choices=["recommendations", "dlq"], default="recommendations")
    t.add_argument("--user", help="only this user (recommendations) / this key (dlq)")
    t.add_argument("--from-beginning", action="store_true", help="start at the oldest message, not the newest")
    t.add_argument("-n", "--count", type=int, help="stop after N messages")
    t.add_argument("--idle", type=float, metavar="SECONDS", help="stop after this long without a message")

    x = sub.add_parser("explain", help="why a user gets what they get (the /users/<id> page, in the terminal)")
    x.add_argument("user")
    x.add_argument("--json", action="store_true", help="print the page's JSON")

    d = sub.add_parser("demo", help="the whole show: broker, model, worker, catalogue, scripted users")
    d.add_argument("--keep-running", action="store_true", help="leave the worker running after the script")

    e = sub.add_parser("encode", help="encode texts and print shapes and timing")
    e.add_argument("texts", nargs="+")
    e.add_argument("--model", help="model folder name (default: STREAM_APP_MODEL_NAME)")
    e.add_argument("--fp32", action="store_true", help="use the fp32 graph even if STREAM_APP_ENCODER_INT8 is set")

    m = sub.add_parser("export-model", help="export a model folder (ONNX fp32 + int8, tokenizer, manifest)")
    m.add_argument("--model", help="model name (default: STREAM_APP_MODEL_NAME)")

    f = sub.add_parser("forget", help="forget a user: delete their state and every trace the worker keeps",
                       description="Sends a `forget` event for the user to the behaviour topic; the worker that owns "
                                   "the user deletes the state (a changelog tombstone) and the user's traces.")
    f.add_argument("user_id")

    sub.add_parser("eval", help="offline replay evaluation (stream-app eval --help)", add_help=False)
    sub.add_parser("bench", help="benchmarks that print numbers (stream-app bench --help)", add_help=False)
    return parser


PASS_THROUGH = ("worker", "eval", "bench")  # their options belong to Faust / their own parsers


def configure_logging(verbose: bool) -> None:
    """Debug everywhere with -v; else warnings from libraries (aiokafka is chatty) and info from stream_app."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        for name in ("stream_app", "models"):
            logging.getLogger(name).setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    rest: list[str] = []
    if args.command in PASS_THROUGH:
        rest = argv[argv.index(args.command) + 1:]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    configure_logging(args.verbose)
    if args.command == "worker":
        faust_args = rest
        if args.verbose and not any(a.startswith(("--loglevel", "-l")) for a in faust_args):
            faust_args = ["--loglevel", "debug", *faust_args]
        return worker_command(faust_args)
    if args.command == "eval":
        from stream_app.offline.cli import main as eval_main

        return eval_main(rest)
    if args.command == "bench":
        return bench_command(rest)
    if args.command == "kafka":
        if args.lines is not None and args.action != "logs":
            return fail(f"kafka {args.action} takes no number (only `kafka logs N` does)", 2)
        return kafka_command(args.action, *([str(args.lines)] if args.lines is not None else []))
    if args.command == "demo":
        from stream_app.demo import run_demo

        return run_demo(keep_running=args.keep_running)
    if args.command == "encode":
        return encode_command(args.texts, args.model, args.fp32)
    return run_tool(args)


def run_tool(args: argparse.Namespace) -> int:
    """Commands that need the settings: produce, tail, explain, forget, export-model (one-line errors)."""
    from stream_app.console import ToolError, fetch_user, forget, format_explanation, out, produce, tail
    from stream_app.stream.startup import StartupError, load_settings

    try:
        settings = load_settings()
        if args.command == "export-model":
            from models.export import ensure_model
            from stream_app.settings import Settings

            if args.model:
                settings = Settings(model_name=args.model)
            if not args.verbose:  # onnxruntime's quantiser logs every tensor on the root logger at INFO
                logging.getLogger().setLevel(logging.WARNING)
                logging.getLogger("models").setLevel(logging.INFO)
            try:
                print(ensure_model(settings))
            except FileNotFoundError as exc:  # an unknown model name or a missing checkpoint folder
                return fail(str(exc))
            return 0
        if args.command == "produce":
            report = asyncio.run(produce(args.file, args.topic, settings, client_options(settings)))
            out(report.summary("stdin" if args.file == "-" else args.file))
            return 1 if report.skipped else 0
        if args.command == "tail":
            try:
                asyncio.run(tail(args.which, settings, args.user, args.from_beginning, args.count, args.idle,
                                 client_options(settings)))
            except KeyboardInterrupt:
                pass
            return 0
        if args.command == "forget":
            event_id = asyncio.run(forget(args.user_id, settings, client_options(settings)))
            out(f"forget event {event_id} sent to {settings.behaviour_topic}")
            return 0
        if args.command == "explain":
            headers = {}
            token = getattr(settings, "web_token", None)
            if token:
                headers["Authorization"] = f"Bearer {token.get_secret_value() if hasattr(token, 'get_secret_value') else token}"
            data = fetch_user(settings, args.user, headers)
            if args.json:
                out(json.dumps(data, ensure_ascii=False, indent=1))
            else:
                for line in format_explanation(data):
                    out(line)
            return 0
    except (StartupError, ToolError) as exc:
        return fail(str(exc), getattr(exc, "exit_code", 1))
    return fail(f"unknown command {args.command}", 2)


if __name__ == "__main__":
    sys.exit(main())
