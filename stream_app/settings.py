"""All configuration of stream_app in one typed object, read from `STREAM_APP_*` environment variables."""

from __future__ import annotations

import socket
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_model_cache() -> Path:
    """Where exported model folders live between runs (outside any clone, so CI reuses them)."""
    return Path.home() / ".cache" / "stream_app" / "models"


class Settings(BaseSettings):
    """Every knob of the service; `STREAM_APP_<FIELD>` overrides each one (e.g. STREAM_APP_KAFKA_BOOTSTRAP)."""

    # allow_inf_nan=False: an inf or NaN weight, threshold or timeout is rejected at start, not served.
    model_config = SettingsConfigDict(env_prefix="STREAM_APP_", extra="ignore", frozen=True, allow_inf_nan=False)

    # --- Kafka / Faust -----------------------------------------------------------------------
    kafka_bootstrap: str = "127.0.0.1:9092"
    app_id: str = "stream_app"
    items_topic: str = "items"
    behaviour_topic: str = "behaviour"
    recommendations_topic: str = "recommendations"
    dlq_topic: str = "behaviour-dlq"
    items_dlq_topic: str = "items-dlq"
    item_vectors_topic: str = Field("", description="Compacted topic of encoded items that every worker's embedded "
                                    "store replicates (stream_app.stream.replica); empty = <app_id>-item-vectors.")
    table_standby_replicas: int = Field(1, ge=0, description="Standby copies of each user-state partition kept warm "
                                        "on other workers, so a failed worker's users move with their state.")
    signal_snapshot_interval_s: float = Field(30.0, gt=0, description="How often a worker saves its collaborative "
                                              "counters and their stream positions (a restart replays the rest).")
    signal_max_users: int = Field(200_000, ge=1, description="Users whose recent-item window the counters keep "
                                  "(least recently active forgotten first).")
    topic_partitions: int = Field(4, ge=1, description="Partitions of the input topics and tables: the unit of scale-out.")
    table_store: str = Field("rocksdb://", description="Faust table store: rocksdb:// (durable) or memory:// (tests).")
    table_write_buffer_mb: int = Field(8, ge=1, description="RocksDB memtable size of each table partition (Faust's default, 64 MB x 3 per partition, let a worker's memory grow by ~200 MB per partition of a busy user-state table before anything is flushed).")
    table_block_cache_mb: int = Field(16, ge=1, description="RocksDB read cache of each table partition (Faust's default: 2 GiB each).")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How every Kafka client of the service talks to the broker.")
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle that signed the broker's certificate (default: system CAs).")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    kafka_ssl_key_password: SecretStr = SecretStr("")
    worker_id: str = Field("", description="Stable name of this worker (static group membership: restarted within the "
                                           "session timeout, it takes its partitions back at once); empty = "
                                           "<hostname>-<web_port>.")
    kafka_session_timeout_s: float = Field(10.0, ge=6.0, description="A worker that stops heartbeating leaves the group "
                                                                     "after this long (Kafka's minimum is 6 s).")
    kafka_metadata_max_age_s: float = Field(15.0, ge=1.0, description="The consumer refreshes its topic metadata at least "
                                                                      "this often; a group whose metadata missed a "
                                                                      "just-created topic is rebalanced onto it then.")
    log_repeat_interval_s: float = Field(10.0, gt=0, description="Identical Kafka-client warnings/errors (e.g. the broker "
                                                                 "is down) are logged once per this interval.")
    # web_host is the name other workers use to reach this one's web view (advertised); web_bind what it listens on.
    web_bind: str = Field("127.0.0.1", description="Interface the web server listens on; 0.0.0.0 exposes it to the network.")
    web_token: SecretStr = Field(SecretStr(""), description="Bearer token for pages showing a user's data (then asked of every "
                                                          "client); empty = served to loopback clients only.")
    web_debug_views: bool = Field(False, description="Serve Faust's /table/ and /router/ views (they show raw table data).")
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    batch_size: int = Field(256, ge=1, description="Most events taken per batch by the agents (stream.take_events); under load batches fill up, at low rates batch_timeout_s closes them.")
    batch_timeout_s: float = Field(0.02, gt=0, description="Longest wait to fill a batch before processing it.")
    items_batch_timeout_s: float = Field(0.25, gt=0, description="The same for catalogue batches: Faust's take() stops buffering while a batch is processed, so a longer wait lets ingestion batches fill (the encoder's best batch) at the cost of an item update's latency.")

    # --- Reliability (README "Reliability"; input bounds are constants in stream_app/core/events.py) -------------
    dedupe_window: int = Field(256, ge=0, description="Event ids remembered per user (8 bytes each), so a redelivered event is not applied twice.")
    batch_retries: int = Field(3, ge=0, description="Retries of a failing batch step (encoder, store) before it is split to find the culprit.")
    retry_backoff_s: float = Field(0.1, gt=0, description="First wait between retries; doubles each time.")
    retry_backoff_max_s: float = Field(10.0, gt=0, description="Longest wait between retries (an outage is retried for as long as it lasts).")

    # --- Local state ---------------------------------------------------------------------------
    data_dir: Path = Path("./data")

    # --- Vector store ----------------------------------------------------------------------
    qdrant_url: str = Field("", description="Qdrant server URL; empty means the embedded store under data_dir.")
    qdrant_api_key: str | None = None
    qdrant_collection: str = "items"
    item_cache_size: int = Field(20_000, ge=0, description="Item vectors kept in memory to avoid a store round trip.")
    store_timeout_s: float = Field(30.0, gt=0, description="Deadline of every vector-store call (an index build gets its own); a stuck embedded store is restarted, and a call still going after it makes /health answer 503.")

    # --- Encoder -----------------------------------------------------------------------------
    model_name: str = Field("multilingual-e5-small", description="Model folder name: multilingual-e5-small or all-MiniLM-L6-v2.")
    model_dir: Path | None = Field(None, description="An exported model folder; overrides model_name + model_cache.")
    model_cache: Path = Field(default_factory=default_model_cache)
    encoder_int8: bool = Field(False, description="CPU only: the static int8 graph instead of fp32 (faster, but reorders "
                               "8-10% of top-10 neighbours; fp32 is served by default, see README Encoders).")
    encoder_provider: str = Field("auto", description="auto (CUDA when available), cuda or cpu.")
    encoder_threads: int = Field(0, ge=0, description="onnxruntime intra-op threads; 0 lets onnxruntime decide.")
    encoder_spin: bool = Field(False, description="Let onnxruntime's intra-op threads spin-wait between operators. Off: a worker shares its cores with the event loop, the store process and the broker, and spinning threads stall when a core is taken (2-core AMD EPYC, one core busy: 46 texts/s spinning vs 65 not; 63 vs 69 with both cores free).")
    encoder_batch_size: int = Field(64, ge=1)
    agent_stuck_s: float = Field(300.0, gt=0, description="An agent still on one batch after this long makes /health answer 503: a step that never finishes, or a broker outage that holds its sends (they are retried until the broker takes them). So does a partition waiting this long to read a skipped offset again (stream_app/stream/offsets.py).")
    encoder_timeout_s: float = Field(120.0, gt=0, description="Deadline of one call to the encoder thread (a batch is retried after it; a run still going after it makes /health answer 503).")

    # --- Interest model (dynamic attention) ---------------------------------------------------
    temperature: float = Field(0.1, gt=0, description="Softmax temperature tau of the attention scores.")
    decay_per_hour: float = Field(0.01, ge=0, description="lambda: log-weight lost per hour of age.")
    max_slots: int = Field(3, ge=1, description="Interest vectors per user.")
    slot_threshold: float = Field(0.35, description="Cosine below which an event opens a new interest slot. On MiniLM's cosine scale; multilingual-e5-small puts every pair of the sample catalogue above 0.68, so with it no second slot opens there (README, Limits known today; benchmarks/interest_slots.py).")
    weight_view: float = Field(1.0, gt=0)
    weight_click: float = Field(1.5, gt=0)
    weight_search: float = Field(1.5, gt=0)
    weight_review: float = Field(2.0, gt=0)
    weight_cart: float = Field(3.0, gt=0)
    weight_purchase: float = Field(5.0, gt=0)
    weight_dislike: float = Field(2.0, gt=0)
    recent_items: int = Field(100, ge=1, description="Recent item ids kept per user: the items the co-occurrence and sequence scores start from, and the explanations (exclusions are a separate set of every excluded item).")

    # --- Recommendation ------------------------------------------------------------------------
    top_k: int = Field(10, ge=1)
    qdrant_optimize_every: int = Field(50_000, ge=1, description="Embedded store: build the HNSW index after this many new points.")

    # --- Collaborative signals and the ranking blend (tuned on ML-100K validation targets: `stream-app eval --tune`) --
    # The one place these defaults are written: collab.CollabParams and ranking.RankParams read them from here.
    collab_window: int = Field(20, ge=1, description="Co-occurrence counted with the user's last N items.")
    collab_query_items: int = Field(20, ge=1, description="Recent items whose co-occurring neighbours are scored.")
    collab_recency: float = Field(0.9, gt=0, le=1, description="Weight ratio of each older recent item (co-occurrence).")
    collab_neighbour_pop_exponent: float = Field(0.5, ge=0, description="Damping of popular neighbours (ItemKNN-style).")
    collab_cooc_half_life_hours: float = Field(0.0, ge=0, description="0 = no decay of co-occurrence/sequence counts.")
    collab_pop_half_life_hours: float = Field(0.0, ge=0, description="0 = no decay of popularity counts.")
    collab_max_neighbours: int = Field(300, ge=1, description="Neighbours kept per item and counter.")
    seq_window: int = Field(3, ge=1, description="Directed transitions counted from the user's last N items.")
    seq_distance_decay: float = Field(0.5, gt=0, le=1, description="Weight ratio of each step further back.")
    seq_query_items: int = Field(5, ge=1, description="Recent items whose successors are scored.")
    seq_recency: float = Field(0.7, gt=0, le=1, description="Weight ratio of each older recent item (sequence).")
    seq_neighbour_pop_exponent: float = Field(0.5, ge=0, description="Damping of popular successors.")
    rank_pool: int = Field(200, ge=1, description="Candidates taken from each counter signal (co-occurrence, sequence, popular).")
    rank_text_pool: int = Field(50, ge=1, description="Candidates taken from the interest slots' text search (the search limit). While blend_cold_text_weight is 0 the text part rises with the text score and every other part is >= 0, so an item below text rank k never makes a top-k list; with the cold-item text boost (default 0.2) a little-known item below the limit can miss a place it would have earned. The evaluator searches with the same limit, so its tables measure the product as served; 50 searches far less than the counters' pool.")
    blend_text_weight: float = Field(0.02, ge=0, description="Weight of the interest slots' text affinity.")
    blend_cooc_weight: float = Field(1.0, ge=0, description="Weight of the co-occurrence score.")
    blend_seq_weight: float = Field(0.5, ge=0, description="Weight of the directed sequence score.")
    blend_pop_weight: float = Field(0.0, ge=0, description="Weight of popularity (0: popularity only fills lists of users with no other signal; see README, Offline evaluation).")
    blend_text_temperature: float = Field(0.02, gt=0, description="Temperature of the text affinity's exp().")
    blend_cold_text_weight: float = Field(0.2, ge=0, description="Extra text weight of items with little support: "
                                          "+ w exp(-n/blend_cold_support). With the collab boost below, the least "
                                          "validation cost at which the default ranks cold-item events at least 2x as "
                                          "well as item-knn (`stream-app eval --tune cold`, README).")
    blend_cold_collab_weight: float = Field(0.3, ge=0, description="Extra factor on the co-occurrence and sequence parts "
                                            "of items with little support: x (1 + w exp(-n/blend_cold_support)); 0: off.")
    blend_cold_support: float = Field(5.0, gt=0, description="Interactions at which the extra cold weights fall to 1/e.")
    exclude_types: str = Field(
        "view,click,review,cart,purchase,dislike",
        description="Comma-separated event types whose item is never recommended again to that user; purchase and "
        "dislike are always added; drop view/cart to allow retargeting.",
    )

    def item_vectors_topic_name(self) -> str:
        """The item-vectors topic: item_vectors_topic, else one of this app's own (<app_id>-item-vectors)."""
        return self.item_vectors_topic or f"{self.app_id}-item-vectors"

    def resolved_model_dir(self) -> Path:
        """The model folder the encoder loads: model_dir if set, else model_cache/model_name."""
        return self.model_dir if self.model_dir is not None else self.model_cache / self.model_name

    def group_instance_id(self) -> str:
        """Kafka static-membership id of this worker: worker_id, else <hostname>-<web_port> (unique on a host)."""
        return f"{self.app_id}-{self.worker_id or f'{socket.gethostname()}-{self.web_port}'}"


def setting_default(name: str) -> Any:
    """The default of a Settings field: parameter objects of the pure modules (CollabParams, RankParams, ...)
    take their defaults from here, so each default is written once."""
    return Settings.model_fields[name].default


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
