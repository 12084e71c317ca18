"""stream_app: real-time recommendations from a Kafka behaviour stream."""

__version__ = "0.1.0"
