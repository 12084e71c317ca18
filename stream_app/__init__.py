"""stream_app: real-time recommendations from a Kafka behaviour stream."""

import os

# The worker's matrix products are small (a batch's candidates times a few interest slots): OpenBLAS's thread pool
# gains nothing on them and, on few cores, spins against the encoder thread and the store process (a user's text
# affinity measured 5.5 ms with the default pool vs 0.3 ms with one thread on 2 cores). Set before numpy loads;
# an explicit OPENBLAS_NUM_THREADS still wins. The encoder (onnxruntime) has its own threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
