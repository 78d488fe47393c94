"""Hostile input: only the project's own typed errors may come out, never a crash.

Property tests over the audio decoders, the WebSocket message parser and log replay. The
same targets run under a coverage-guided fuzzer in ``nox -s fuzz`` (tests/fuzz_targets.py).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_audio.audio.decode import RawFormat, decode
from trio_audio.errors import ServiceError, StoreError
from trio_audio.store.files import list_segments, log_dir
from trio_audio.store.record import RecordType
from trio_audio.store.replay import replay
from trio_audio.store.writer import LogWriter
from trio_audio.web.messages import parse_control, parse_start

from .strategies import AUDIO_INPUT, JSON_VALUES, MEDIA_TYPES, start_messages

RAW = st.none() | st.builds(
    RawFormat,
    st.sampled_from(["pcm_s16le", "pcm_s24le", "pcm_u8", "pcm_f32le"]),
    st.sampled_from([8000, 16000]),
    st.integers(1, 8),
)


@settings(max_examples=400, deadline=None)
@given(data=AUDIO_INPUT, content_type=MEDIA_TYPES, raw=RAW)
def test_decoders_raise_only_client_errors(
    data: bytes, content_type: str, raw: RawFormat | None
) -> None:
    try:
        decoded = decode(data, content_type=content_type, raw=raw, max_duration_s=60)
    except ServiceError as exc:
        assert 400 <= exc.status < 500 and exc.detail
        return
    assert decoded.frames > 0 and decoded.samples.shape == (decoded.frames, decoded.channels)
    assert 1 <= decoded.channels <= 8 and decoded.duration_ms <= 60_000


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(max_size=200), JSON_VALUES.map(json.dumps)))
def test_control_messages_parse_or_raise_bad_message(text: str) -> None:
    try:
        message = parse_control(text)
    except ServiceError as exc:
        assert exc.status in (400, 413)
        return
    assert isinstance(message, dict) and isinstance(message["type"], str)


@settings(max_examples=300, deadline=None)
@given(message=start_messages(), query=st.dictionaries(st.text(max_size=10), st.text(max_size=10)))
def test_start_messages_validate_or_raise_typed_errors(
    message: dict[str, Any], query: dict[str, str]
) -> None:
    try:
        start = parse_start(message, query)
    except ServiceError as exc:
        assert 400 <= exc.status < 500 and exc.close_code in (4400, 4403, 4415)
        return
    assert start.user_id and start.session_id
    assert start.watch_only == ("format" not in message or message["format"] is None)


@pytest.fixture(scope="module")
def good_log(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real one-segment log of a few records, as bytes."""
    directory = tmp_path_factory.mktemp("log")
    writer = LogWriter(directory, next_seq=1)
    for n in range(4):
        meta = {"chunk_id": f"c{n}", "n": n}
        writer.append(RecordType.CHUNK, meta, bytes(range(n * 10)))
    writer.append(RecordType.UPDATE, {"chunk_id": "c1", "set": {"x": 1}})
    writer.flush()
    writer.close()
    return (log_dir(directory) / list_segments(directory)[0]).read_bytes()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
                      max_size=4), cut=st.integers(0, 10**6))  # fmt: skip
def test_replay_of_damaged_logs_returns_records_or_a_typed_error(
    tmp_path_factory: pytest.TempPathFactory, good_log: bytes,
    edits: list[tuple[int, bytes]], cut: int,
) -> None:  # fmt: skip
    data = bytearray(good_log)
    for at, chunk in edits:
        at %= len(data)
        data[at : at + len(chunk)] = chunk
    data = data[: max(1, cut % (len(data) + 1))]
    directory = tmp_path_factory.mktemp("damaged")
    log_dir(directory).mkdir()
    (log_dir(directory) / "0000000000000001.seg").write_bytes(bytes(data))
    seen: list[int] = []
    try:
        replay(directory, lambda record: seen.append(record.seq))
    except StoreError:
        return
    assert seen == list(range(1, len(seen) + 1))  # whole records, in order, nothing invented
