"""Kafka connection settings -> client arguments, the web token policy, and the collapsed repeated-error log."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from stream_app.adapters.kafka_security import client_kwargs, faust_credentials
from stream_app.stream.logfilter import RepeatFilter
from stream_app.settings import Settings
from stream_app.stream.webauth import access_denied, is_loopback

CA = Path(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt")


def test_plaintext_is_the_default_and_carries_no_credentials():
    s = Settings(kafka_bootstrap="b:1")
    assert client_kwargs(s) == {"bootstrap_servers": "b:1", "security_protocol": "PLAINTEXT"}
    assert faust_credentials(s) is None


def test_sasl_plaintext_kwargs_and_the_same_values_for_faust():
    s = Settings(kafka_bootstrap="b:1", kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="SCRAM-SHA-512",
                 kafka_sasl_username="svc", kafka_sasl_password="pw-123")
    kwargs = client_kwargs(s)
    assert kwargs == {"bootstrap_servers": "b:1", "security_protocol": "SASL_PLAINTEXT",
                      "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "svc", "sasl_plain_password": "pw-123"}
    creds = faust_credentials(s)
    assert isinstance(creds, SASLCredentials)
    # What Faust hands its own aiokafka clients equals what ours get (Faust adds ssl_context=None).
    assert credentials_to_aiokafka_auth(creds) == {**{k: v for k, v in kwargs.items() if k != "bootstrap_servers"},
                                                   "ssl_context": None}


@pytest.mark.skipif(not CA.exists(), reason="no system CA bundle to load")
def test_sasl_ssl_and_ssl_build_a_verifying_tls_context():
    s = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="svc", kafka_sasl_password="pw",
                 kafka_ssl_cafile=CA)
    kwargs = client_kwargs(s)
    ctx = kwargs["ssl_context"]
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert credentials_to_aiokafka_auth(faust_credentials(s))["security_protocol"] == "SASL_SSL"
    tls = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=CA)
    assert "sasl_mechanism" not in client_kwargs(tls)
    assert isinstance(faust_credentials(tls), SSLCredentials)
    assert credentials_to_aiokafka_auth(faust_credentials(tls))["security_protocol"] == "SSL"


def test_incomplete_security_settings_are_refused():
    with pytest.raises(ValueError, match="SASL_USERNAME"):
        client_kwargs(Settings(kafka_security_protocol="SASL_PLAINTEXT"))
    with pytest.raises(ValueError, match="go together"):
        client_kwargs(Settings(kafka_security_protocol="SSL", kafka_ssl_certfile=Path("/x.pem")))
    with pytest.raises(ValueError):
        Settings(kafka_security_protocol="SASL_TLS")


def test_secrets_do_not_show_in_the_settings_repr():
    s = Settings(kafka_sasl_password="pw-123", kafka_ssl_key_password="key-456", web_token="tok-789")
    text = repr(s) + str(s) + str(s.model_dump())
    assert "pw-123" not in text and "key-456" not in text and "tok-789" not in text
    assert repr(faust_credentials(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u",
                                           kafka_sasl_password="pw-123"))).count("pw-123") == 0


def test_the_web_server_binds_loopback_by_default_and_faust_table_views_are_off():
    """Read from the Faust app's own configuration, in a fresh interpreter (the app reads settings at import)."""
    code = ("from stream_app.stream.app import app; c = app.conf; "
            "print(c.web_bind, c.web_tables_enabled, c.web_router_enabled)")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("STREAM_APP_WEB")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["127.0.0.1", "False", "False"]


def request(remote: str | None, authorization: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(remote=remote, headers={"Authorization": authorization} if authorization else {})


@pytest.mark.parametrize("address, expected", [("127.0.0.1", True), ("127.5.6.7", True), ("::1", True),
                                               ("::ffff:127.0.0.1", True), ("192.0.2.7", False), ("::ffff:10.0.0.1", False),
                                               ("", False), (None, False), ("not-an-ip", False)])
def test_loopback_addresses(address, expected):
    assert is_loopback(address) is expected


def test_without_a_token_only_loopback_clients_see_user_data():
    s = Settings()
    assert access_denied(request("127.0.0.1"), s) is None
    assert access_denied(request("192.0.2.7"), s)[0] == 403
    assert access_denied(request(None), s)[0] == 403


def test_with_a_token_everyone_must_present_it():
    s = Settings(web_token="tok-789")
    assert access_denied(request("192.0.2.7", "Bearer tok-789"), s) is None
    assert access_denied(request("127.0.0.1", "bearer tok-789"), s) is None
    for auth in (None, "Bearer wrong", "Basic tok-789", "Bearer ", "tok-789"):
        assert access_denied(request("127.0.0.1", auth), s)[0] == 401, auth
        assert access_denied(request("192.0.2.7", auth), s)[0] == 401, auth


def record(msg: str, level: int = logging.ERROR, name: str = "aiokafka.conn") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, (), None)


def test_repeat_filter_passes_one_record_per_kind_per_interval_and_reports_the_rest():
    now = [0.0]
    f = RepeatFilter(10.0, clock=lambda: now[0])
    assert f.filter(record("Unable connect to node %s"))
    assert f.filter(record("Unable to update metadata"))  # another kind passes
    for _ in range(500):
        now[0] += 0.01
        assert not f.filter(record("Unable connect to node %s"))
    assert f.filter(record("Unable connect to node %s", logging.WARNING))  # another level is another kind
    assert f.filter(record("Unable connect to node %s", name="aiokafka.client"))  # and another logger
    assert f.filter(record("fine", logging.INFO)) and f.filter(record("fine", logging.INFO))  # INFO untouched
    now[0] = 10.5
    again = record("Unable connect to node %s")
    assert f.filter(again)
    assert "500 more like this" in again.getMessage()
    assert not f.filter(record("Unable connect to node %s"))


def test_the_filter_sits_on_the_kafka_client_loggers_and_folds_their_repeats(caplog):
    from stream_app.stream.logfilter import install_connection_error_filter

    installed = install_connection_error_filter(10.0)
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.consumer.fetcher", "aiokafka.consumer.group_coordinator",
                 "faust.transport.drivers.aiokafka"):
        assert installed in logging.getLogger(name).filters, name
    assert install_connection_error_filter(10.0) is installed  # idempotent: one filter, not one per call
    assert sum(isinstance(f, RepeatFilter) for f in logging.getLogger("aiokafka.conn").filters) == 1
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        for _ in range(1000):
            logging.getLogger("aiokafka").error("Unable to update metadata from %s", [1])  # aiokafka.client logs here
    assert len([r for r in caplog.records if r.name == "aiokafka"]) == 1


def test_a_malformed_request_is_logged_without_its_path(caplog):
    """aiohttp quotes the raw request line of a request it cannot parse; the path holds a user id, which is logged
    only at DEBUG: the filter keeps the exception's type and status and drops the text."""
    import asyncio

    from aiohttp import web

    from stream_app.stream.logfilter import install_malformed_request_filter

    install_malformed_request_filter()
    install_malformed_request_filter()  # idempotent

    async def scenario() -> bytes:
        app = web.Application()
        app.router.add_get("/users/{user}/", lambda request: web.Response(text="ok"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /users/" + b"SECRETUSER" * 900 + b"/ HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            answer = await reader.read(100)
            writer.close()
            return answer
        finally:
            await runner.cleanup()

    with caplog.at_level(logging.DEBUG):
        answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.0 400")
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "SECRETUSER" not in logged and "refused a malformed HTTP request: LineTooLong (status 400)" in logged
    assert len(logging.getLogger("aiohttp.server").filters) == 1
