"""Every endpoint, credential, topic, bucket and model option, in one place.

Values come from the environment (prefix ``SKYEYE_``, nested fields with ``__``, e.g.
``SKYEYE_ENCODER__MAX_REPLICAS=4``). Endpoints left unset mean "the embedded stack": they are
filled in from the state folder of a running ``skyeye up`` (see :func:`skyeye.stack.resolve`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from skyeye.contracts import MAX_CLIP_FRAMES

# skyeye-tiny, trained by `skyeye model train` and shipped in the package (docs/skyeye-tiny.md).
PACKAGED_MODEL = Path(__file__).parent / "model" / "weights" / "skyeye-tiny"


DecodeSteps = Literal["eager", "static", "compiled"]
"""How the decoding steps after the prompt run.

``eager``: on a key/value cache that grows with the answer, one eager forward per step.
``static``: on a preallocated cache of fixed shapes (rows rounded up to a multiple of 8, length
up to a multiple of 128), still eager: the same answers, in the layout compiling needs.
``compiled``: ``static`` with each step's forward through ``torch.compile`` (``reduce-overhead``:
CUDA graphs on a GPU, so a step is one launch instead of hundreds). It compiles at most three
times (tens of seconds each): on the first batch, and when the rows and the length of a batch
first differ from the first's. See ``skyeye.model.decoder``.
"""


class DeploymentSettings(BaseModel):
    """Resources, autoscaling and batching of one Ray Serve deployment."""

    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    max_batch_size: int = Field(4, ge=1)
    batch_wait_timeout_s: float = Field(0.02, ge=0)
    upscale_delay_s: float | None = Field(
        None,
        ge=0,
        description="seconds of load above the target before Serve adds a replica; "
        "unset: Serve's default (30)",
    )
    downscale_delay_s: float | None = Field(
        None,
        ge=0,
        description="seconds of load below the target before Serve removes a replica; "
        "unset: Serve's default (600)",
    )
    look_back_period_s: float | None = Field(
        None,
        gt=0,
        description="the window Serve averages each replica's load over; unset: Serve's "
        "default (30)",
    )

    @model_validator(mode="after")
    def _replicas_ordered(self) -> DeploymentSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})"
            )
        return self

    def autoscaling_config(self) -> dict[str, float | int]:
        """Replica bounds, load target and the delays set, as Serve's ``autoscaling_config``."""
        config: dict[str, float | int] = {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }
        for name in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s"):
            if (value := getattr(self, name)) is not None:
                config[name] = value
        return config


class DecodingSettings(BaseModel):
    """How the LlmDecoder generates: greedy by default, as the published benchmarks were run."""

    max_new_tokens: int = Field(24, ge=1, le=1024)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(50, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    double_bos: bool = Field(
        False,
        description="start each prompt with two BOS tokens, as MiniGPT-v2's evaluation prompt "
        "does (its template's literal <s> after the tokenizer's BOS), to compare with the "
        "published figures; off: one BOS, as Llama-2 and skyeye-tiny were trained "
        "(docs/published-model.md)",
    )
    steps: DecodeSteps = Field(
        "eager",
        description="how the steps after the prompt run: eager, on a key/value cache that "
        "grows; static, on a preallocated cache of fixed shapes; compiled, static through "
        "torch.compile (CUDA graphs on a GPU; compiles at most three times, tens of seconds "
        "each, on the first batches). The answers are the same; compiled is meant for GPUs "
        "(docs/published-model.md)",
    )

    def call_options(self) -> dict[str, Any]:
        """What each decoding call takes: all but the decoder's own ``double_bos`` and ``steps``."""
        return self.model_dump(exclude={"double_bos", "steps"})


class ClipSettings(BaseModel):
    """How UAV clips are sampled into frames, and the limits that refuse a clip before work."""

    frames: int = Field(8, ge=1, le=MAX_CLIP_FRAMES, description="frames sampled per clip")
    scene_changes: bool = Field(
        False, description="sample at detected scene cuts first, uniform samples filling the rest"
    )
    scene_threshold: float = Field(
        0.15,
        gt=0,
        le=1,
        description="mean absolute difference (0-1) of consecutive 64x64 RGB thumbnails that "
        "counts as a cut",
    )
    caption_prompt: str = "briefly describe the video frame image"
    max_duration_s: float = Field(600.0, gt=0)
    max_pixels: int = Field(3840 * 2160, gt=0, description="frame width x height")
    max_frames_decoded: int = Field(
        20_000, ge=1, description="frames the planner may decode for one clip, all passes together"
    )


class RetrySettings(BaseModel):
    """How a consumer retries a message that failed for a transient reason, then dead-letters it.

    Transient: S3, PostgreSQL, Kafka or Serve unavailable or timing out. The offset is held
    meanwhile, so the backoff's sum must stay well below Kafka's max.poll.interval (300 s).
    """

    attempts: int = Field(10, ge=1, description="tries of one message, the first included")
    initial_backoff_s: float = Field(0.5, gt=0)
    max_backoff_s: float = Field(15.0, gt=0)

    def backoff_s(self, attempt: int) -> float:
        """The wait after failed try number ``attempt`` (1-based): doubling, capped."""
        return min(self.initial_backoff_s * 2 ** (attempt - 1), self.max_backoff_s)


class ReconcilerSettings(BaseModel):
    """How the reconciler lists the ingest bucket and announces objects that have no asset.

    Those are objects written by any S3 client, and those whose notification was lost.
    """

    interval_s: float = Field(10.0, gt=0, description="seconds between two listings")
    min_age_s: float = Field(
        5.0,
        ge=0,
        description="objects younger than this are left to their own notification, which is "
        "most likely still on its way",
    )
    prefixes: list[str] = Field(
        default_factory=lambda: [""], description="key prefixes to list; [''] = the whole bucket"
    )


class ApiSettings(BaseModel):
    """The results API: where it listens, who may read, and the limits on every request."""

    host: str = Field("127.0.0.1", description="address the API binds")
    port: int = Field(
        0, ge=0, le=65535, description="TCP port; 0 = a free port (the embedded stack records it)"
    )
    public_url: str | None = Field(
        None,
        description="base URL clients reach the API at, for links; unset = the request's own",
    )
    anonymous_read: bool = Field(
        False, description="allow reads without a token (scope read); asks always need one"
    )
    default_limit: int = Field(10, ge=1, description="page size when a request names none")
    max_limit: int = Field(1000, ge=1, description="largest page size a request may ask for")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="largest request body")
    requests_per_minute: int = Field(
        600, ge=1, description="requests one token (or one anonymous client address) may make"
    )
    ask_timeout_s: float = Field(120.0, gt=0, description="longest an ask may wait on the model")
    preview_url_expiry_s: int = Field(
        300, ge=1, le=7 * 24 * 3600, description="lifetime of a presigned preview URL"
    )
    dashboard_tile_url: str | None = Field(
        None,
        description="the dashboard map's base layer, an XYZ tile URL template "
        "('https://tiles.example/{z}/{x}/{y}.png') the operators' browsers can reach; unset = "
        "no base map: footprints, detections and previews on a plain background",
    )

    @model_validator(mode="after")
    def _limits_ordered(self) -> ApiSettings:
        if self.default_limit > self.max_limit:
            raise ValueError(f"default_limit ({self.default_limit}) > max_limit ({self.max_limit})")
        return self


class EmbeddingCacheSettings(BaseModel):
    """Each tile's image embeddings kept in the object store, so a later ask skips the encoder."""

    enabled: bool = True
    prefix: str = Field("embeddings/", description="key prefix in the derived bucket")
    max_bytes: int = Field(
        2 * 1024**3, ge=1024**2, description="the cache is trimmed, oldest first, above this"
    )
    ttl_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="entries older than this are deleted and not used"
    )


class AlertSettings(BaseModel):
    """How alerts reach people: the outbox relay to Kafka and the webhook deliveries."""

    allow_private_webhooks: bool = Field(
        False,
        description="accept webhook URLs on loopback, private or link-local addresses (tests, "
        "a receiver inside the cluster); off, they are refused: a rule must not probe the "
        "network the pipeline runs in",
    )
    webhook_timeout_s: float = Field(5.0, gt=0, le=60, description="one delivery attempt's limit")
    retry_for_s: float = Field(
        24 * 3600.0, gt=0, description="how long a failing delivery is retried before it fails"
    )
    initial_backoff_s: float = Field(1.0, gt=0)
    max_backoff_s: float = Field(600.0, gt=0)
    disable_after: int = Field(
        50, ge=1, description="an endpoint failing this many deliveries in a row is disabled"
    )
    poll_s: float = Field(
        0.2, gt=0, le=10, description="how often the relay and the deliverer look for work"
    )
    max_webhooks_per_rule: int = Field(10, ge=0)


class ObservabilitySettings(BaseModel):
    """Where a service answers health probes and metric scrapes, and how it logs."""

    host: str = Field("127.0.0.1", description="listen address (0.0.0.0 in a cluster)")
    port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="/healthz, /readyz and /metrics on this port; unset: not served (the "
        "embedded stack gives each service a free port)",
    )
    liveness_s: float = Field(
        300.0,
        gt=0,
        description="/healthz fails when the service's loop has not gone round for this long",
    )
    json_logs: bool = Field(True, description="log one JSON object a line, with the trace id")


class Settings(BaseSettings):
    """Every setting of the product, from ``SKYEYE_*`` variables; unset endpoints: embedded."""

    # A variable set but empty (`SKYEYE_MODEL_DIR= skyeye ...`) means "unset", not "." or "".
    model_config = SettingsConfigDict(
        env_prefix="SKYEYE_", env_nested_delimiter="__", extra="ignore", env_ignore_empty=True
    )

    home: Path = Field(
        default_factory=lambda: platformdirs.user_data_path("skyeye-stream"),
        description="State folder of the embedded stack (data, logs, pids, ports).",
    )

    # --- object store (S3 API; MinIO in production, nanio embedded) ---
    s3_endpoint: str | None = Field(None, description="host:port; unset = embedded nanio")
    s3_secure: bool = False
    s3_access_key: str = "skyeye"
    s3_secret_key: SecretStr = SecretStr("skyeye-secret-key")
    s3_region: str = "us-east-1"
    bucket: str = "incoming"
    kafka_storage_bucket: str = Field(
        "kafka-log", description="bucket the embedded tansu broker keeps its log in"
    )
    max_object_bytes: int = Field(2 * 1024**3, gt=0)
    derived_bucket: str = Field(
        "skyeye-derived",
        description="objects the pipeline makes (sampled clip frames, previews); no notifications "
        "on it, so "
        "nothing written there is ingested again",
    )

    # --- Kafka ---
    kafka_bootstrap: str | None = Field(None, description="host:port[,...]; unset = embedded")
    topic_events: str = "skyeye.object-events"
    topic_work: str = "skyeye.work-items"
    topic_dead_letter: str = Field(
        "skyeye.dead-letter",
        description="copies of the messages a consumer gave up on, with the error in headers",
    )
    topic_alerts: str = Field(
        "skyeye.alerts", description="alerts, from the outbox (key: rule id, id header: alert id)"
    )
    topic_partitions: int = Field(2, ge=1)
    planner_group: str = "skyeye-planner"
    worker_group: str = "skyeye-worker"
    kafka_session_timeout_ms: int = Field(10_000, ge=1000)
    kafka_heartbeat_interval_ms: int = Field(1_000, ge=100)
    max_event_bytes: int = Field(1024 * 1024, gt=0)
    kafka_idempotent_producer: bool = Field(
        False,
        description="turn on with Apache Kafka; the embedded tansu broker answers "
        "OutOfOrderSequenceNumber when idempotent producers publish concurrently",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how clients talk to the brokers (TLS and/or SASL)"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="with SASL_*: how clients authenticate"
    )
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = Field(
        None, description="with SSL/SASL_SSL: the CA bundle the brokers' certificates chain to"
    )

    # --- PostgreSQL ---
    database_url: str | None = Field(None, description="SQLAlchemy URL; unset = embedded")

    # --- Ray Serve ---
    ray_address: str | None = Field(
        None,
        description="GCS host:port on a Ray node, or ray://head:10001 (Ray Client) from "
        "outside the cluster; unset = embedded head",
    )
    ray_num_cpus: int = Field(2, ge=1, description="CPUs the embedded Ray head offers")
    ray_object_store_bytes: int = Field(
        512 * 1024**2,
        ge=100 * 1024**2,
        description="shared memory of the embedded head's object store (Ray's default is 30% "
        "of RAM; tiles and embeddings need far less)",
    )
    serve_app: str = "skyeye"
    encoder: DeploymentSettings = DeploymentSettings()
    decoder: DeploymentSettings = DeploymentSettings(max_batch_size=8)
    embedder: DeploymentSettings = Field(
        DeploymentSettings(num_cpus=0.25, max_batch_size=32),
        description="TextEmbedder: sentence embeddings of answers and search queries",
    )
    inference_timeout_s: float = Field(300.0, gt=0)

    # --- reliability ---
    retry: RetrySettings = RetrySettings()
    reconciler: ReconcilerSettings = ReconcilerSettings()
    finish_sweep_s: float = Field(
        2.0,
        gt=0,
        description="how often an idle worker looks for assets whose last step (duplicate "
        "flags, preview) is still to do, e.g. after the worker doing it was killed",
    )
    fault_file: Path | None = Field(
        None,
        description='test hook: a JSON file {"planner": [...], "worker": [...]} of object '
        "key substrings whose messages make that consumer raise an unexpected exception",
    )

    # --- model ---
    model_dir: Path | None = Field(
        None,
        description="a saved SkyEye model folder (see `skyeye model inspect --save`); unset = "
        "skyeye-tiny, the CPU model trained on the procedural world and shipped in the package",
    )
    device: str = "cpu"
    decoding: DecodingSettings = DecodingSettings()

    # --- work per tile ---
    caption_prompt: str = "briefly describe the image"
    grounding_phrases: list[str] = ["building", "road", "vehicle"]
    vqa_questions: list[str] = [
        "Is there any water in the image?",
        "How many buildings are in the image?",
    ]
    tile_size: int = Field(448, ge=14, description="tile side in output pixels")
    tile_overlap: int = Field(32, ge=0, description="overlap of neighbouring scene tiles, px")
    target_gsd: float | None = Field(
        None, gt=0, description="metres per tile pixel; unset = each scene's native resolution"
    )
    rgb_bands: list[int | str] | None = Field(
        None, description='bands shown to the model, e.g. ["B4", "B3", "B2"]; unset = RGB'
    )
    preview_max_side: int = Field(
        1024, ge=16, description="long side of an asset's preview JPEG, px (never enlarged)"
    )
    gdal_cache_bytes: int = Field(64 * 1024**2, ge=1024**2)
    max_scene_pixels: int = Field(
        50_000 * 50_000, gt=0, description="larger georeferenced scenes are refused"
    )
    max_question_chars: int = Field(512, ge=1)
    max_image_pixels: int = Field(
        64_000_000, gt=0, description="larger images are refused before decoding"
    )
    clips: ClipSettings = ClipSettings()

    # --- results API and semantic search ---
    api: ApiSettings = ApiSettings()
    embedding_cache: EmbeddingCacheSettings = EmbeddingCacheSettings()
    alerts: AlertSettings = AlertSettings()
    observability: ObservabilitySettings = ObservabilitySettings()

    @field_validator("grounding_phrases", "vqa_questions")
    @classmethod
    def _no_blank(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip() for v in values]
        if any(not v for v in cleaned):
            raise ValueError("blank entries are not allowed")
        return cleaned

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_"):
            missing = [
                f"kafka_{name}"
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, f"kafka_{name}") is None
            ]
            if missing:
                raise ValueError(
                    f"kafka_security_protocol={self.kafka_security_protocol} needs "
                    + ", ".join(missing)
                )
        return self

    @model_validator(mode="after")
    def _questions_fit(self) -> Settings:
        texts = [*self.grounding_phrases, *self.vqa_questions, self.caption_prompt]
        for text in [*texts, self.clips.caption_prompt]:
            if len(text) > self.max_question_chars:
                raise ValueError(
                    f"task text of {len(text)} chars exceeds max_question_chars="
                    f"{self.max_question_chars}: {text[:40]!r}..."
                )
        return self

    @property
    def resolved_model_dir(self) -> Path:
        """The model folder to serve: ``model_dir``, else the packaged skyeye-tiny."""
        return self.model_dir or PACKAGED_MODEL

    def as_env(self) -> dict[str, str]:
        """These settings as ``SKYEYE_*`` variables, so a child process reads back the same."""
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            secret = getattr(self, name)
            if isinstance(secret, SecretStr):
                value = secret.get_secret_value()
            text = value if isinstance(value, str) else json.dumps(value)
            env[f"SKYEYE_{name.upper()}"] = text
        return env


def invalid_settings(error: ValidationError) -> str | None:
    """What is wrong with the settings, naming each environment variable; None for another model.

    For example ``SKYEYE_DECODING__STEPS='bogus': Input should be 'eager', 'static' or
    'compiled'``: a user sets these in the environment, not in Python.
    """
    if error.title != Settings.__name__:
        return None
    prefix = str(Settings.model_config.get("env_prefix", ""))
    delimiter = str(Settings.model_config.get("env_nested_delimiter", "__"))
    said = []
    for problem in error.errors():
        name = prefix + delimiter.join(str(part) for part in problem["loc"]).upper()
        value = f"={problem['input']!r}" if isinstance(problem["input"], str) else ""
        said.append(f"{name}{value}: {problem['msg']}")
    return "; ".join(said)
