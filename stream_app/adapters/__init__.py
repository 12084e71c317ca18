"""Adapters to the outside world: the encoder (onnxruntime), the vector store, Kafka security and the broker script."""
