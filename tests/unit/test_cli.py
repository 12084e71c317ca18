"""The command line without a broker: help everywhere, one-line errors naming the variable, start checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stream_app import cli
from stream_app.console import ProduceReport, format_dead_letter, format_explanation, route
from stream_app.settings import Settings
from stream_app.stream.startup import CoordinatorNoise, StartupError, check_partitions, check_port, lock_data_dir

REPO = Path(__file__).resolve().parents[2]
NO_BROKER = {**os.environ, "STREAM_APP_KAFKA_BOOTSTRAP": "127.0.0.1:1"}  # nothing listens on port 1


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream_app.cli", *args], capture_output=True, text=True,
                          env=env or NO_BROKER, timeout=120, cwd=REPO)


@pytest.mark.parametrize("command", ["produce", "tail", "explain", "kafka", "demo", "encode", "export-model"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0
    assert f"stream-app {command}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["bench", "eval"])
def test_pass_through_commands_have_help(command, capsys):
    try:
        code = cli.main([command, "--help"])
    except SystemExit as exc:  # argparse-based sub-parsers exit
        code = exc.code
    assert code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_worker_help_needs_no_broker():
    for args in (("worker", "--help"), ("-v", "worker", "--help")):
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert "--loglevel" in result.stdout


def test_usage_errors_exit_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["produce", "x.jsonl", "--bogus"])
    assert exit_.value.code == 2
    assert cli.main(["kafka", "status", "3"]) == 2
    assert "only `kafka logs N`" in capsys.readouterr().err


def test_a_bad_setting_is_named_by_its_variable():
    result = run_cli("worker", env={**NO_BROKER, "STREAM_APP_TOPIC_PARTITIONS": "eight"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "STREAM_APP_TOPIC_PARTITIONS='eight'" in lines[0], result.stderr


def test_verbose_flag_before_the_command_is_accepted():
    result = run_cli("-v", "produce", "/nonexistent/events.jsonl")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "stream-app: error: cannot read /nonexistent/events.jsonl: " \
                                                     "No such file or directory"


def test_an_unreachable_broker_is_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("worker", env={**NO_BROKER, "STREAM_APP_DATA_DIR": str(tmp_path), "STREAM_APP_WEB_PORT": str(port)})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("stream-app: error: cannot reach Kafka "
                                                                                "at STREAM_APP_KAFKA_BOOTSTRAP=")]


def test_data_dir_lock_is_exclusive_across_processes(tmp_path):
    lock_data_dir(tmp_path / "data")
    code = ("import sys; from pathlib import Path; from stream_app.stream.startup import lock_data_dir, StartupError\n"
            "try:\n    lock_data_dir(Path(sys.argv[1]))\nexcept StartupError as e:\n    print(e); sys.exit(3)")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], capture_output=True, text=True)
    assert other.returncode == 3
    assert f"STREAM_APP_DATA_DIR={tmp_path / 'data'} is in use by another worker (pid {os.getpid()}" in other.stdout


def test_a_port_in_use_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(StartupError, match=f"STREAM_APP_WEB_PORT={port}"):
            check_port("127.0.0.1", port)


def test_partition_mismatch_names_the_setting_and_topics():
    settings = Settings(topic_partitions=8)
    check_partitions({"a": 8, "b": 8}, {"a": 8}, settings)  # missing topics are created later, not an error
    with pytest.raises(StartupError, match=r"STREAM_APP_TOPIC_PARTITIONS=8 but topic 'b' has 4 partitions"):
        check_partitions({"a": 8, "b": 8}, {"a": 8, "b": 4}, settings)


def test_produce_routes_by_content_and_keys_by_id():
    s = Settings()
    assert route({"event_id": "e", "user_id": "u1", "type": "view", "item_id": "i"}, None, s) == (s.behaviour_topic, "u1")
    assert route({"item_id": "i9", "title": "t"}, None, s) == (s.items_topic, "i9")
    assert route({"user_id": "u1", "type": "view"}, "other", s) == ("other", "u1")
    with pytest.raises(ValueError, match="--topic"):
        route({"title": "no id"}, None, s)
    report = ProduceReport(sent={"behaviour": 3}, skipped=[(2, "not JSON")], seconds=0.5)
    assert report.summary("f.jsonl") == ("sent 3 message(s) from f.jsonl in 0.5s (behaviour: 3); "
                                         "skipped 1 line(s): line 2: not JSON")


def test_terminal_renderings_keep_chinese_readable():
    lines = format_dead_letter({"topic": "behaviour", "partition": 0, "offset": 7, "key": "小明",
                                "reason": "unknown or deleted item_id 'x'", "value_text": '{"user_id": "小明"}'}, 0)
    assert "key=小明" in lines[0] and '"小明"' in lines[2]
    page = {"user_id": "小明", "known": True, "events": 2, "last_ts": 0, "usable_slot_weights": [1.0],
            "behaviours": [{"item_id": "sku-1", "title": "华为 耳机", "attention": [0.75], "slot": 0}],
            "attention_note": "note",
            "last_recommendation": {"strategy": "blend", "items": []},
            "why": [{"item_id": "sku-2", "title": "充电器", "score": 0.5, "because": "it is like “华为 耳机”",
                     "parts": {"text_by_slot": [0.8], "cooc": 0.0, "popularity": 1.0}}]}
    text = "\n".join(format_explanation(page))
    assert "s1*0.75    华为 耳机  [sku-1]" in text
    assert "充电器" in text and "because it is like “华为 耳机”" in text


def test_coordinator_noise_is_dropped_at_start_then_rate_limited():
    import logging

    from aiokafka.errors import CoordinatorNotAvailableError, GroupAuthorizationFailedError

    f = CoordinatorNoise(grace_s=0.0, every_s=3600.0)
    rec = lambda err: logging.LogRecord("aiokafka", logging.ERROR, "", 0, "Group Coordinator Request failed: %s",
                                        (err,), None)
    first, second = rec(CoordinatorNotAvailableError()), rec(CoordinatorNotAvailableError())
    assert f.filter(first) and first.levelname == "WARNING"
    assert not f.filter(second)
    assert f.filter(rec(GroupAuthorizationFailedError()))  # not retriable: always shown as it is
    assert CoordinatorNoise(grace_s=3600.0).filter(rec(CoordinatorNotAvailableError())) is False


def write_inter(folder, rows: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{folder.name}.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(r + "\n" for r in rows))


def test_eval_refuses_bad_input_in_one_line_before_any_replay(tmp_path, capsys):
    """Found by a hostile test: every bad dataset, setting or path ended in a traceback (some only after the whole
    replay). Now: one `stream-app: error:` line; 2 for arguments and settings, 1 for data."""
    from stream_app.offline.cli import main as eval_main

    with pytest.raises(SystemExit) as exit_:
        eval_main(["--cold-threshold", "0"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit) as exit_:
        eval_main(["--json", str(tmp_path)])  # a folder: refused before the replay
    assert exit_.value.code == 2
    capsys.readouterr()
    assert eval_main(["--dataset", str(tmp_path / "missing")]) == 1
    write_inter(tmp_path / "nan", ["1\ta\t4\t1", "1\tb\t4\tnan"])
    assert eval_main(["--dataset", str(tmp_path / "nan")]) == 1
    write_inter(tmp_path / "short", ["1\ta\t4\t1", "1\tb\t4\t2", "2\ta\t4\t3"])
    assert eval_main(["--dataset", str(tmp_path / "short")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("stream-app: error: dataset") and "nan.inter line 3: timestamp and rating must be finite" in err[1]
    assert "short has no test target" in err[2] and len(err) == 3


def test_settings_refuse_inf_nan_and_non_positive_event_weights():
    for bad in ({"blend_text_weight": float("inf")}, {"slot_threshold": float("nan")}, {"weight_view": -3.0},
                {"decay_per_hour": float("inf")}):
        with pytest.raises(ValueError):
            Settings(**bad)


def test_export_model_names_an_unknown_model_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("STREAM_APP_MODEL_CACHE", str(tmp_path))
    from stream_app.settings import get_settings

    get_settings.cache_clear()
    try:
        assert cli.main(["export-model", "--model", "nope"]) == 1
    finally:
        get_settings.cache_clear()
    assert capsys.readouterr().err.strip().endswith("nor a checkpoint folder")
