"""The settings, one frozen attrs class per part of the service; ``config.Config`` is all of
them at once.

Each group is a mixin of ``Config``: its fields are ``Config``'s own (``config.port``,
``config.stage_queue``), each settable as ``TRIO_AUDIO_<NAME>`` and as ``--<name>`` of
``trio-audio serve``. A group holds the fields of one part and their validators; rules that
tie fields of several groups together are ``Config``'s (``__attrs_post_init__``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import attrs

FSYNC_MODES: Final = ("always", "interval", "never")
MAX_ASR_PARTITIONS: Final = 1024  # the work stream's partitions (one consumer each)
# What one decoded sample costs while the pipeline holds it: 4 bytes of float32, its share of
# the mono mix, and the analysis's working arrays at their peak (measured: up to ~29 bytes a
# sample, when 384 kHz mono is resampled to 16 kHz for the VAD).
DECODED_BYTES_PER_SAMPLE: Final = 32


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        msg = f"{attribute.name} must be positive, got {value!r}"
        raise ValueError(msg)


def _port(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if not 0 <= value <= 65535:
        msg = f"{attribute.name} must be a port number 0..65535 (0 picks a free one), got {value}"
        raise ValueError(msg)


def _fsync(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in FSYNC_MODES:
        msg = f"fsync must be one of {', '.join(FSYNC_MODES)}, got {value!r}"
        raise ValueError(msg)


# Fields only: ``Config`` puts the groups together (slots=False lets it inherit them all).
@attrs.frozen(kw_only=True, slots=False)
class Network:
    """Where the service listens."""

    host: str = attrs.field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = attrs.field(default=8000, validator=_port, metadata={"help": "HTTP port"})
    ws_port: int = attrs.field(
        default=8001, validator=_port, metadata={"help": "WebSocket listener port"}
    )


@attrs.frozen(kw_only=True, slots=False)
class Storage:
    """The local log: where and how durably it writes, and compaction; and the committer's
    batches and events, which every backend's committer takes."""

    data_dir: Path = attrs.field(
        default=Path("data"), converter=Path, metadata={"help": "data directory"}
    )
    fsync: str = attrs.field(
        default="always",
        validator=_fsync,
        metadata={"help": "always (no acknowledged chunk is lost), interval (1 s), never"},
    )
    fsync_interval_s: float = attrs.field(
        default=1.0, validator=_positive, metadata={"help": "fsync period in interval mode"}
    )
    segment_max_bytes: int = attrs.field(
        default=256 * 1024 * 1024, validator=_positive, metadata={"help": "log segment size"}
    )
    meta_cache_mb: float = attrs.field(
        default=64.0,
        validator=_positive,
        metadata={"help": "MB of chunk metadata read back from the log kept in memory"},
    )
    compact_min_bytes: int = attrs.field(
        default=64 * 1024 * 1024,
        validator=_positive,
        metadata={"help": "compact once deleted data reaches this many bytes ..."},
    )
    compact_dead_ratio: float = attrs.field(
        default=0.5,
        validator=_positive,
        metadata={"help": "... and this share of the log's bytes"},
    )
    store_reserve_bytes: int = attrs.field(
        default=4 * 1024 * 1024,
        validator=attrs.validators.ge(0),
        metadata={"help": "disk kept back for deletes when the disk is full (0: none)"},
    )

    commit_batch_max: int = attrs.field(
        default=256, validator=_positive, metadata={"help": "most records in one group commit"}
    )
    commit_wait_ms: float = attrs.field(
        default=2.0,
        validator=attrs.validators.ge(0),
        metadata={"help": "how long a group commit waits to fill a batch"},
    )
    event_queue: int = attrs.field(
        default=1024,
        validator=_positive,
        metadata={"help": "committed-change events queued for watchers and the transcriber"},
    )


@attrs.frozen(kw_only=True, slots=False)
class Cluster:
    """A JetStream cluster store (``--store nats://...``), and its transcription work (see
    ``cluster/work.py``)."""

    store: str = attrs.field(
        default="",
        metadata={"help": "empty: the local log; nats://h1:4222,nats://h2:4222,...: JetStream"},
    )
    store_stream: str = attrs.field(
        default="AUDIO", metadata={"help": "JetStream stream (and subject prefix) of the log"}
    )
    store_replicas: int = attrs.field(
        default=3, validator=_positive, metadata={"help": "replicas of the stream (1: dev set-up)"}
    )
    store_timeout_s: float = attrs.field(
        default=4.0,
        validator=_positive,
        metadata={"help": "how long a write waits for the cluster before 503 unavailable"},
    )
    store_dedupe_s: float = attrs.field(
        default=120.0,
        validator=_positive,
        metadata={"help": "the stream's duplicate window for re-sent publishes"},
    )
    store_max_bytes: int = attrs.field(
        default=0,
        validator=attrs.validators.ge(0),
        metadata={
            "help": "cluster: the stream's size limit; at it, writes get 507 (0: the "
            "stream's own, none on a new one)"
        },
    )
    store_max_age_s: float = attrs.field(
        default=0.0,
        validator=attrs.validators.ge(0),
        metadata={
            "help": "cluster: records older than this leave the stream (0: the "
            "stream's own; none on a new one)"
        },
    )
    store_tls_ca: str = attrs.field(
        default="", metadata={"help": "cluster: CA file to verify the NATS servers (TLS)"}
    )
    store_tls_cert: str = attrs.field(
        default="", metadata={"help": "cluster: client certificate for NATS (mutual TLS)"}
    )
    store_tls_key: str = attrs.field(
        default="", metadata={"help": "cluster: the client certificate's key file"}
    )
    store_creds: str = attrs.field(
        default="", metadata={"help": "cluster: NATS credentials file (user JWT and NKey seed)"}
    )
    asr_transcribe: str = attrs.field(
        default="auto",
        validator=attrs.validators.in_(("auto", "on", "off")),
        metadata={"help": "cluster: new chunks start transcript pending (on) or disabled "
                  "(off); auto: pending when this node has a speech engine"},
    )  # fmt: skip
    asr_partitions: int = attrs.field(
        default=8,
        validator=[_positive, attrs.validators.le(MAX_ASR_PARTITIONS)],
        metadata={"help": "cluster: work partitions sessions are spread over (all nodes agree)"},
    )
    asr_lease_s: float = attrs.field(
        default=5.0,
        validator=_positive,
        metadata={"help": "cluster: a worker's unrenewed hold on a partition ends after"},
    )


@attrs.frozen(kw_only=True, slots=False)
class Limits:
    """How much one request may carry, and how much the service holds at once."""

    max_body_bytes: int = attrs.field(
        default=16 * 1024 * 1024, validator=_positive, metadata={"help": "largest request body"}
    )
    max_duration_s: float = attrs.field(
        default=600.0, validator=_positive, metadata={"help": "longest decoded chunk"}
    )
    max_parts: int = attrs.field(
        default=32, validator=_positive, metadata={"help": "most files in one multipart upload"}
    )
    export_block_s: float = attrs.field(
        default=5.0,
        validator=_positive,
        metadata={"help": "a session's WAV is decoded and sent this much audio at a time"},
    )
    max_decoded_samples: int = attrs.field(
        default=16 * 1024 * 1024,
        validator=_positive,
        metadata={"help": "most decoded samples (frames x channels) in one upload, then 413"},
    )
    max_decoded_bytes_inflight: int = attrs.field(
        default=512 * 1024 * 1024,
        validator=_positive,
        metadata={"help": "decoded audio held by the pipeline at once, in bytes (32 a sample, "
                  "with its analysis); more waits, then 503"},
    )  # fmt: skip
    max_body_bytes_inflight: int = attrs.field(
        default=256 * 1024 * 1024,
        validator=_positive,
        metadata={"help": "upload bodies held at once (being read or in the pipeline), in "
                  "bytes; more waits, then 503"},
    )  # fmt: skip


@attrs.frozen(kw_only=True, slots=False)
class Pipeline:
    """The ingress, the stages and their CPU, and the admission of uploads."""

    ingress_queue: int = attrs.field(
        default=64, validator=_positive, metadata={"help": "ingress queue size (then 503)"}
    )
    stage_queue: int = attrs.field(
        default=8,
        validator=_positive,
        metadata={
            "help": "the queue between stages and the committer's write queue; the most "
            "jobs a stage takes as one group"
        },
    )
    stage_workers: int = attrs.field(
        default=2,
        validator=_positive,
        metadata={"help": "workers per pipeline stage (at most one per CPU the process may use)"},
    )
    cpu_threads: int = attrs.field(
        default=2, validator=_positive, metadata={"help": "threads for CPU work (one limiter)"}
    )
    inline_max_samples: int = attrs.field(
        default=131072,
        validator=attrs.validators.ge(0),
        metadata={"help": "chunks up to this many samples are analysed without a thread hop"},
    )
    stage_timeout_s: float = attrs.field(
        default=10.0, validator=_positive, metadata={"help": "per-chunk timeout of each stage"}
    )
    admit_max: int = attrs.field(
        default=64,
        validator=_positive,
        metadata={"help": "uploads inside the service at once; more wait for a slot"},
    )
    admit_wait_s: float = attrs.field(
        default=1.0,
        validator=attrs.validators.ge(0),
        metadata={"help": "longest wait for an upload slot before 503 (0: refuse at once)"},
    )
    retry_after_s: int = attrs.field(
        default=3,
        validator=_positive,
        metadata={
            "help": "Retry-After sent with a 503; also the shortest time between two refusals "
            "on one connection (a refusal sent sooner is held until then)"
        },
    )


@attrs.frozen(kw_only=True, slots=False)
class WebSocket:
    """A WebSocket session's queues, budgets and timeouts."""

    ws_queue: int = attrs.field(
        default=256,
        validator=_positive,
        metadata={"help": "messages queued for one WebSocket reader before it is cut off"},
    )
    ws_max_inflight: int = attrs.field(
        default=32,
        validator=_positive,
        metadata={"help": "unacknowledged chunks per WebSocket before it stops reading"},
    )
    ws_max_inflight_bytes: int = attrs.field(
        default=32 * 1024 * 1024,
        validator=_positive,
        metadata={"help": "bytes of unacknowledged chunks per WebSocket before it stops reading"},
    )
    ws_user_inflight_bytes: int = attrs.field(
        default=64 * 1024 * 1024,
        validator=_positive,
        metadata={"help": "bytes of unacknowledged chunks per user, over all their WebSockets"},
    )
    ws_idle_timeout_s: float = attrs.field(
        default=60.0, validator=_positive, metadata={"help": "close a silent WebSocket after"}
    )
    ws_overload_timeout_s: float = attrs.field(
        default=5.0,
        validator=_positive,
        metadata={"help": "how long a WebSocket chunk waits for room before 'overloaded'"},
    )
    ws_flow_interval_s: float = attrs.field(
        default=1.0, validator=_positive, metadata={"help": "period of 'flow' messages"}
    )
    ws_send_timeout_s: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata={"help": "a WebSocket client that reads nothing for this long is cut off"},
    )


@attrs.frozen(kw_only=True, slots=False)
class Speech:
    """Transcription and voice activity."""

    asr_engine: str = attrs.field(
        default="whisper",
        metadata={"help": "speech engine: whisper, pocketsphinx, none, or package.module:Class"},
    )
    asr_model_dir: str = attrs.field(
        default="", metadata={"help": "engine model directory (empty: the model it ships)"}
    )
    asr_grammar: str = attrs.field(
        default="", metadata={"help": "JSGF grammar file: recognise only its sentences"}
    )
    asr_keyphrases: str = attrs.field(
        default="", metadata={"help": "keyphrase list file (one 'phrase /threshold/' a line)"}
    )
    asr_window_s: float = attrs.field(
        default=30.0,
        validator=[attrs.validators.ge(1), attrs.validators.le(30)],
        metadata={"help": "whisper: shortest encoder window, s (30: always Whisper's full 30 s)"},
    )
    asr_short_window_s: float = attrs.field(
        default=10.0,
        validator=[attrs.validators.ge(1), attrs.validators.le(30)],
        metadata={"help": "whisper: the window a live final late for its deadline is decoded in"},
    )
    asr_final_deadline_s: float = attrs.field(
        default=1.4,  # finals at p95 <= 1.5 s at 8 talkers on 2 cores (docs/speech.md)
        validator=_positive,
        metadata={"help": "a live final not out this long after its speech ends: short window"},
    )
    asr_workers: int = attrs.field(
        default=0,
        validator=attrs.validators.ge(0),
        metadata={"help": "transcription worker processes (0: one per core, at nice 10)"},
    )
    asr_streams_per_worker: int = attrs.field(
        default=1,
        validator=_positive,
        metadata={"help": "no effect: each worker decodes one utterance at a time"},
    )
    asr_backlog: int = attrs.field(
        default=64,
        validator=_positive,
        metadata={"help": "chunks of one session held back waiting for an earlier seq"},
    )
    asr_backlog_bytes: int = attrs.field(
        default=64 * 1024 * 1024,
        validator=_positive,
        metadata={"help": "audio held for transcription (past it: re-read from the log)"},
    )
    asr_idle_timeout_s: float = attrs.field(
        default=10.0,
        validator=_positive,
        metadata={"help": "finalize a silent session's open utterance after"},
    )
    asr_max_utterance_s: float = attrs.field(
        default=29.0,  # with the 0.5 s overlap, within Whisper's 30 s window
        validator=_positive,
        metadata={"help": "longest utterance: cut at its quietest point before, with overlap"},
    )
    asr_partial_interval_s: float = attrs.field(
        default=1.0,
        validator=attrs.validators.ge(0),
        metadata={"help": "re-decode the open utterance for live words this often (0: never)"},
    )
    vad_mode: int = attrs.field(
        default=2,
        validator=[attrs.validators.ge(0), attrs.validators.le(3)],
        metadata={"help": "VAD strictness 0-3: Silero speech threshold 0.3/0.4/0.5/0.6"},
    )
    vad_gap_ms: float = attrs.field(
        default=500.0,
        validator=_positive,
        metadata={"help": "silence that ends a speech segment and an utterance"},
    )


@attrs.frozen(kw_only=True, slots=False)
class Security:
    """Who may do what, and limits that hold under attack."""

    tokens_file: str = attrs.field(
        default="", metadata={"help": "bearer tokens file; set: auth on (empty: auth off)"}
    )
    allow_unauthenticated_remote: bool = attrs.field(
        default=False,
        metadata={"help": "serve a non-loopback address with auth off (no access control!)"},
    )
    certfile: str = attrs.field(default="", metadata={"help": "TLS certificate (PEM): HTTPS, WSS"})
    keyfile: str = attrs.field(default="", metadata={"help": "TLS private key (PEM)"})
    rate_limit_per_s: float = attrs.field(
        default=500.0,
        validator=attrs.validators.ge(0),
        metadata={"help": "uploads per second per user, then 429 (0: no limit)"},
    )
    rate_limit_burst: int = attrs.field(
        default=1000, validator=_positive, metadata={"help": "uploads a user may send at once"}
    )
    max_part_bytes: int = attrs.field(
        default=16 * 1024 * 1024, validator=_positive, metadata={"help": "largest multipart file"}
    )
    read_timeout_s: float = attrs.field(
        default=30.0, validator=_positive, metadata={"help": "longest wait for any socket read"}
    )
    min_upload_bytes_per_s: float = attrs.field(
        default=16 * 1024,
        validator=attrs.validators.ge(0),
        metadata={
            "help": "slower request bodies are cut off with 408 (after the grace), "
            "whatever length they declare"
        },
    )
    upload_grace_s: float = attrs.field(
        default=5.0,
        validator=_positive,
        metadata={"help": "time before a body must keep up min_upload_bytes_per_s (on average)"},
    )
    allowed_hosts: str = attrs.field(
        default="",
        metadata={"help": "with auth off: Host names served besides loopback ones and the "
                  "bound address (comma-separated; * for any)"},
    )  # fmt: skip
    allowed_origins: str = attrs.field(
        default="",
        metadata={"help": "with auth off: web origins (scheme://host:port) that may use the "
                  "API besides the service's own pages (comma-separated; * for any)"},
    )  # fmt: skip
    ws_max_sessions: int = attrs.field(
        default=1000, validator=_positive, metadata={"help": "open WebSocket sessions, in all"}
    )
    ws_max_sessions_per_user: int = attrs.field(
        default=16, validator=_positive, metadata={"help": "open WebSocket sessions per user"}
    )


@attrs.frozen(kw_only=True, slots=False)
class Lifecycle:
    """Start-up and drain."""

    drain_timeout_s: float = attrs.field(
        default=15.0, validator=_positive, metadata={"help": "deadline for a graceful drain"}
    )
    log_level: str = attrs.field(default="info", metadata={"help": "logging level"})
