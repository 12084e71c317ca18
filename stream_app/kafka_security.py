"""How every Kafka client of stream_app connects: bootstrap, security protocol, SASL and TLS, from the Settings.

`client_kwargs()` is the one mapping from settings to connection keyword arguments. aiokafka's producer, consumer
and admin client take them as they are; `faust_credentials()` hands the same values to the Faust app, which passes
them on to the aiokafka clients it creates. Secrets stay `SecretStr` in the settings and are only revealed here,
into the client's arguments; nothing in this module logs them.
"""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka.helpers import create_ssl_context
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import CredentialsT

from stream_app.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS context for SSL / SASL_SSL: the configured CA (else the system's), and a client certificate if given."""
    if (settings.kafka_ssl_certfile is None) != (settings.kafka_ssl_keyfile is None):
        raise ValueError("STREAM_APP_KAFKA_SSL_CERTFILE and STREAM_APP_KAFKA_SSL_KEYFILE go together (mutual TLS)")
    password = settings.kafka_ssl_key_password.get_secret_value() or None
    return create_ssl_context(cafile=settings.kafka_ssl_cafile, certfile=settings.kafka_ssl_certfile,
                              keyfile=settings.kafka_ssl_keyfile, password=password)


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for any aiokafka client (AIOKafkaProducer, AIOKafkaConsumer, AIOKafkaAdminClient)."""
    protocol = settings.kafka_security_protocol
    kwargs: dict[str, Any] = {"bootstrap_servers": settings.kafka_bootstrap, "security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl_context(settings)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        if not settings.kafka_sasl_username:
            raise ValueError(f"STREAM_APP_KAFKA_SECURITY_PROTOCOL={protocol} needs STREAM_APP_KAFKA_SASL_USERNAME "
                             "and STREAM_APP_KAFKA_SASL_PASSWORD")
        kwargs.update(sasl_mechanism=settings.kafka_sasl_mechanism,
                      sasl_plain_username=settings.kafka_sasl_username,
                      sasl_plain_password=settings.kafka_sasl_password.get_secret_value())
    return kwargs


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """The same connection settings as Faust's `broker_credentials` (None = plaintext)."""
    kwargs = client_kwargs(settings)
    protocol = kwargs["security_protocol"]
    if protocol == "SSL":
        return SSLCredentials(kwargs["ssl_context"])
    if protocol.startswith("SASL_"):
        # SASLCredentials picks SASL_SSL exactly when it is given an SSL context.
        return SASLCredentials(username=kwargs["sasl_plain_username"], password=kwargs["sasl_plain_password"],
                               mechanism=kwargs["sasl_mechanism"], ssl_context=kwargs.get("ssl_context"))
    return None
