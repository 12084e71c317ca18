"""Model preparation: fetch checkpoints (sources), build ONNX graphs (bert_onnx) and export encoder folders (export)."""
