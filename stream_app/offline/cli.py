"""`stream-app eval`: build the models, replay a dataset in each mode, print tables (all targets and cold-item
targets), write JSON; `--tune` searches parameters on validation targets (the cold-item boosts also on the stream's other
cold-item events), never on test targets."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from stream_app.core.collab import CollabParams
from stream_app.core.interest import InterestParams
from stream_app.offline.baselines import ITEMKNN_MAX_ITEMS, ItemKNN, MostPopular, SeedAttention, TextMean, seed_params
from stream_app.offline.datasets import Interactions, load_dataset
from stream_app.offline.protocol import COLD_THRESHOLD, Result, cold_mask, event_types, leave_one_out, queries_for
from stream_app.offline.replay import DEFAULT_NAME, Default, Model, Replay, item_embeddings, replay
from stream_app.core.ranking import RankParams
from stream_app.settings import Settings

log = logging.getLogger(__name__)

PROTOCOLS = ("all", "cold-items")
VERSUS = "default_over_model_hr@10"  # in each protocol's results: the default's HR@10 ÷ each model's, 95% interval
EXCLUSION_NOTE = ("every item the user consumed before the target is excluded (exclude_types = all event types); "
                  "the stream's default is the same, operators may allow viewed/carted items back")


def build_models(data: Interactions, dim: int, settings: Settings, emb: np.ndarray | None = None) -> list[Model]:
    """Baselines and the product default (last), fresh for one replay."""
    index = {iid: i for i, iid in enumerate(data.item_ids)}
    models: list[Model] = [MostPopular(data.n_items)]
    if data.n_items <= ITEMKNN_MAX_ITEMS:
        models.append(ItemKNN(data.n_items, data.n_users))
    else:
        log.warning("item-knn skipped: %d items is too many for its dense matrix", data.n_items)
    models += [TextMean(), SeedAttention(data.n_users, dim, seed_params(settings), index)]
    if emb is not None:
        models.append(Default(data, emb, InterestParams.from_settings(settings), CollabParams.from_settings(settings),
                              RankParams.from_settings(settings)))
    return models


def evaluate(
    data: Interactions, emb: np.ndarray, settings: Settings, mode: str, progress: bool = True,
    cold_threshold: int = COLD_THRESHOLD,
) -> dict[str, dict]:
    """Test-target metrics of every model in one replay of a mode: {protocol: {"targets": n, "models": summary}}."""
    targets = leave_one_out(data)
    queries, applied = queries_for(data, targets, "test", mode)
    ctx = Replay(data, emb, event_types(data))
    models = build_models(data, emb.shape[1], settings, emb)
    result = replay(ctx, models, queries, applied, desc=mode, progress=progress)
    cold = cold_mask(data, queries, applied, cold_threshold)
    return {
        "all": {"targets": len(queries), "models": result.summary(), VERSUS: versus(result)},
        "cold-items": {"targets": int(cold.sum()), "threshold": cold_threshold, "models": result.summary(cold),
                       VERSUS: versus(result, cold)},
    }


def versus(result: Result, mask: np.ndarray | None = None) -> dict[str, dict[str, float | None]]:
    """The default's HR@10 over each other model's on the same targets, with its 95% paired-bootstrap interval
    (protocol.ratio_interval), and both models' HR@10 sums (hits; ties count fractionally). JSON has no infinity:
    a value that is not a finite number is None, and the hits say why (model_hits 0: the model has no hit, the
    ratio is unbounded; both 0: undefined; a finite ratio with high None: some draws hold none of its hits)."""
    def finite(x: float) -> float | None:
        return round(x, 4) if math.isfinite(x) else None

    def hits(name: str) -> float:
        values = np.asarray(result.metrics[name]["hr@10"], np.float64)
        return round(float((values if mask is None else values[mask]).sum()), 4)

    return {
        name: {"ratio": finite(r), "low": finite(lo), "high": finite(hi), "default_hits": hits(DEFAULT_NAME),
               "model_hits": hits(name)}
        for name, (r, lo, hi) in result.versus(DEFAULT_NAME, "hr@10", mask).items()
    }


def ratio_cell(v: dict[str, float | None]) -> str:
    """One `versus` entry as a table cell: 1.56 (0.72–4.54); 3.50 (1.00–∞) when some draws hold none of the
    model's hits; ∞ (no hit) when the model has none; n/a when neither model has a hit."""
    if v["ratio"] is None:
        return "∞ (no hit)" if v["model_hits"] == 0 < v["default_hits"] else "n/a"
    if v["low"] is None:
        return f"{v['ratio']:.2f} (n/a)"
    high = "∞" if v["high"] is None else f"{v['high']:.2f}"
    return f"{v['ratio']:.2f} ({v['low']:.2f}–{high})"


def markdown_table(dataset: str, mode: str, protocol: str, run: dict) -> str:
    """Results of one mode and protocol as a markdown table."""
    what = "leave-one-out test targets" if protocol == "all" else \
        f"cold-item test targets: fewer than {run['threshold']} earlier interactions with the target item"
    lines = [
        f"**{dataset}, {mode}, {protocol}** ({what}; {run['targets']} targets; full ranking)",
        "",
        "| model | HR@10 | NDCG@10 | HR@50 | default ÷ model, HR@10 (95% CI) | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in run["models"].items():
        label = f"{name} (default)" if name == DEFAULT_NAME else name
        ratio = "—" if name == DEFAULT_NAME else ratio_cell(run[VERSUS][name])
        lines.append(f"| {label} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['hr@50']:.4f} | {ratio} | "
                     f"{m['seconds']:.1f} |")
    return "\n".join(lines)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `stream-app eval`."""
    p = argparse.ArgumentParser(prog="stream-app eval", description="Offline replay evaluation (leave-one-out, full ranking).")
    p.add_argument("--dataset", default="ml-100k", help="ml-100k, or a folder holding <name>.inter and <name>.item")
    p.add_argument("--mode", choices=["standard", "streaming", "both"], default="both")
    p.add_argument("--protocol", choices=[*PROTOCOLS, "both"], default="both",
                   help="all test targets, cold-item targets only, or both (one replay serves both)")
    p.add_argument("--cold-threshold", type=positive_int, default=COLD_THRESHOLD,
                   help="cold-item targets: items with fewer earlier interactions than this")
    p.add_argument("--model", help="encoder model name (default: settings.model_name)")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--tune", nargs="?", const="all", metavar="STAGES",
                   help="search parameters on validation targets: all, or a comma-separated subset of "
                        "interest,weights,cooc,beta,half_life,seq,blend,cold,item-knn")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """`stream-app eval`: replay a dataset, print markdown tables, optionally write JSON; returns the exit code.
    A bad dataset, setting or path ends in one `stream-app: error:` line (exit 2 for settings and arguments, 1
    for data), not a traceback."""
    from stream_app.stream.startup import StartupError, load_settings  # noqa: PLC0415 - one-line setting errors

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.json is not None:  # checked (and created) before minutes of replay, not after
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            with open(args.json, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            parser.error(f"--json {args.json}: cannot write there ({exc.strerror or exc})")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(cached=False)
        if args.model:
            settings = settings.model_copy(update={"model_name": args.model})
        return run(args, settings)
    except StartupError as exc:
        return _fail(str(exc), exc.exit_code)
    except (OSError, ValueError, OverflowError) as exc:  # a dataset or model that cannot be read
        return _fail(str(exc), 1)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"stream-app: error: {message}\n")
    return code


def run(args: argparse.Namespace, settings: Settings) -> int:
    """The evaluation proper (main with the arguments and settings checked)."""
    t0, c0 = time.perf_counter(), time.process_time()
    data = load_dataset(args.dataset)
    if len(data.items) == 0:
        raise ValueError(f"{data.name} has no interaction")
    emb = item_embeddings(data, settings)
    log.info("dataset %s and %d embeddings ready in %.1fs", data.name, len(emb), time.perf_counter() - t0)
    if args.tune is not None and not queries_for(data, leave_one_out(data), "valid", "standard")[0]:
        raise ValueError(f"{data.name} has no validation target to tune on: users need at least 3 interactions")
    if args.tune:
        from stream_app.offline.tuning import tune  # noqa: PLC0415 - only for --tune

        tune(data, emb, settings, args.tune)
        return 0
    modes = ["standard", "streaming"] if args.mode == "both" else [args.mode]
    protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    runs = []
    for mode in modes:
        t1, c1 = time.perf_counter(), time.process_time()
        res = evaluate(data, emb, settings, mode, progress=not args.no_progress, cold_threshold=args.cold_threshold)
        if res["all"]["targets"] == 0:
            raise ValueError(f"{data.name} has no test target: leave-one-out needs users with at least 3 interactions")
        for protocol in protocols:
            if res[protocol]["targets"] == 0:
                print(f"**{data.name}, {mode}, {protocol}**: no {protocol} test target (no table)\n")
                continue
            print(markdown_table(data.name, mode, protocol, res[protocol]) + "\n")
        print(f"{mode}: {time.perf_counter() - t1:.1f}s wall, {time.process_time() - c1:.1f}s CPU\n")
        chosen = {p: res[p] for p in protocols}
        runs.append({"dataset": data.name, "mode": mode, "default": DEFAULT_NAME, "exclusion": EXCLUSION_NOTE,
                     "models": chosen[protocols[0]]["models"], "protocols": chosen})
    print(f"Exclusion: {EXCLUSION_NOTE}.")
    print(f"total {time.perf_counter() - t0:.1f}s wall, {time.process_time() - c0:.1f}s CPU (model {settings.model_name})")
    if args.json:
        out = runs[0] if len(runs) == 1 else {"dataset": data.name, "mode": "both", "default": DEFAULT_NAME, "runs": runs}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
