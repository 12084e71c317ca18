"""Adapters to the outside world: the vector store (and, as they move here, the encoder and Kafka admin)."""
