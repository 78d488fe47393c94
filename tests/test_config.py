"""Config: defaults, TRIO_AUDIO_* variables, flags over variables, clear errors."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from trio_audio import settings
from trio_audio.__main__ import build_parser
from trio_audio.config import MAX_ASR_PARTITIONS, Config


def test_defaults_are_the_embedded_set_up() -> None:
    config = Config.from_sources(env={})
    assert config.data_dir == Path("data")
    assert (config.host, config.port, config.fsync) == ("127.0.0.1", 8000, "always")


def test_environment_then_flags() -> None:
    env = {"TRIO_AUDIO_PORT": "9000", "TRIO_AUDIO_DATA_DIR": "/srv/a", "TRIO_AUDIO_FSYNC": "never",
           "TRIO_AUDIO_STAGE_TIMEOUT_S": "2.5", "OTHER": "x"}  # fmt: skip
    config = Config.from_sources(env=env, overrides={"port": 9100})
    assert config.port == 9100
    assert config.data_dir == Path("/srv/a")
    assert config.fsync == "never"
    assert config.stage_timeout_s == 2.5


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TRIO_AUDIO_PORT": "eighty"}, "TRIO_AUDIO_PORT='eighty' is not a valid int"),
        ({"TRIO_AUDIO_PORT": "70000"}, "port must be a port number"),
        ({"TRIO_AUDIO_FSYNC": "sometimes"}, "fsync must be one of always, interval, never"),
        ({"TRIO_AUDIO_INGRESS_QUEUE": "0"}, "ingress_queue must be positive"),
        ({"TRIO_AUDIO_ASR_TRANSCRIBE": "on"}, "asr_transcribe applies to a cluster store"),
    ],
)
def test_bad_values_name_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Config.from_sources(env=env)


def test_every_field_is_a_serve_flag() -> None:
    argv = ["serve", "--data-dir", "d", "--ws-port", "0", "--fsync", "interval",
            "--max-body-bytes", "10"]  # fmt: skip
    args = build_parser().parse_args(argv)
    assert args.data_dir == Path("d")
    assert (args.ws_port, args.fsync, args.max_body_bytes) == (0, "interval", 10)


def test_what_a_new_chunk_starts_as_on_a_cluster() -> None:
    store = {"TRIO_AUDIO_STORE": "nats://127.0.0.1:4222"}
    status = {
        (engine, transcribe): Config.from_sources(
            env={**store, "TRIO_AUDIO_ASR_ENGINE": engine, "TRIO_AUDIO_ASR_TRANSCRIBE": transcribe}
        ).transcript_status()
        for engine in ("none", "whisper")
        for transcribe in ("auto", "on", "off")
    }
    assert status == {("none", "auto"): "disabled", ("none", "on"): "pending",
                      ("none", "off"): "disabled", ("whisper", "auto"): "pending",
                      ("whisper", "on"): "pending", ("whisper", "off"): "disabled"}  # fmt: skip


def test_more_asr_partitions_than_the_work_stream_takes_is_a_bad_setting() -> None:
    with pytest.raises(ValueError, match="asr_partitions"):
        Config(asr_partitions=MAX_ASR_PARTITIONS + 1)
    assert Config(asr_partitions=MAX_ASR_PARTITIONS).asr_partitions == MAX_ASR_PARTITIONS


def test_store_urls_are_logged_without_their_secrets() -> None:
    from trio_audio.config import redact, redacted

    assert redact("nats://svc:s3cret@h1:4222") == "nats://svc:***@h1:4222"
    assert redact("tls://t0ken@h1:4222/x") == "tls://***@h1:4222/x"
    assert redact("nats://svc:p@ss@h1:4222") == "nats://svc:***@h1:4222"  # "@" in a password
    assert redact("nats://h1:4222") == "nats://h1:4222"
    both = redacted("nats://a:pw@h1:4222, nats://a:pw@h2:4222")
    assert both == "nats://a:***@h1:4222,nats://a:***@h2:4222" and "pw" not in both


def test_config_is_its_groups_and_each_group_s_fields_keep_their_env_and_flags() -> None:
    groups = [settings.Network, settings.Storage, settings.Cluster, settings.Limits,
              settings.Pipeline, settings.WebSocket, settings.Speech, settings.Security,
              settings.Lifecycle]  # fmt: skip
    names = [field.name for group in groups for field in attrs.fields(group)]
    assert names == [field.name for field in attrs.fields(Config)]  # in the groups' order
    env = {"TRIO_AUDIO_PORT": "9001", "TRIO_AUDIO_FSYNC": "never", "TRIO_AUDIO_VAD_MODE": "3",
           "TRIO_AUDIO_WS_QUEUE": "5", "TRIO_AUDIO_STAGE_QUEUE": "3"}  # fmt: skip
    config = Config.from_sources(env, {"ws_queue": 7})
    assert (config.port, config.fsync, config.vad_mode) == (9001, "never", 3)
    assert (config.ws_queue, config.stage_queue) == (7, 3)  # the flag over the variable
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="vad_mode"):
        Config.from_sources({"TRIO_AUDIO_VAD_MODE": "9"})  # a group's own validator
