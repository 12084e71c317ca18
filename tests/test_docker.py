"""What can be checked of the deployment files without a Docker engine: hadolint on the Dockerfile, the compose file
against the Compose Specification's JSON schema, and the properties the README promises of both."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"


def tool(name: str) -> str:
    """A linter installed with the [test] extra (next to this interpreter), or skip with the reason."""
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def compose_schema() -> dict:
    """The Compose Specification's JSON schema as vendored by check-jsonschema (read as data: no network)."""
    try:
        dist = importlib.metadata.distribution("check-jsonschema")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[test]')")
    return json.loads(Path(dist.locate_file("check_jsonschema/builtin_schemas/vendor/compose-spec.json")).read_text())


def test_compose_file_matches_the_compose_spec() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    schema = compose_schema()
    errors = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(spec), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_image_is_multi_stage_non_root_with_a_healthcheck_and_a_data_dir() -> None:
    lines = [line.strip() for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2, stages
    runtime = lines[lines.index(stages[1]):]
    users = [line for line in runtime if line.startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK") for line in runtime)
    assert any("/health" in line for line in runtime)
    assert any("mkdir -p /var/lib/stream_app" in line for line in runtime)  # STREAM_APP_DATA_DIR exists, owned
    assert any(line.startswith("COPY --from=build /opt/stream_app/models") for line in runtime)  # models baked in


def test_compose_runs_two_routable_workers_and_kafka_reachable_from_the_host() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    workers = {name: s for name, s in services.items() if name.startswith("worker")}
    assert len(workers) == 2
    hosts = {s["environment"]["STREAM_APP_WEB_HOST"] for s in workers.values()}
    assert hosts == set(workers), "each worker must advertise its own address, or routing to the owner breaks"
    assert all(s["hostname"] == name for name, s in workers.items())
    host_ports = [p.rsplit(":", 2)[-2] for s in workers.values() for p in s["ports"]]
    assert len(set(host_ports)) == 2
    assert {"kafka", "qdrant"} <= set(services)
    kafka_env = services["kafka"]["environment"]
    advertised = kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka:9092" in advertised and "127.0.0.1:29092" in advertised
    assert all(s["environment"]["STREAM_APP_QDRANT_URL"].startswith("http://qdrant") for s in workers.values())


def test_build_context_leaves_out_the_venv_and_state() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "data", "kafka/run", "kafka/lib"} <= set(ignored)
