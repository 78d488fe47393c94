"""Numbers and ids from clients are ASCII: Unicode digits, signs and spaces are refused."""

from __future__ import annotations

import httpx
import pytest

from trio_audio.audio.decode import raw_format_from
from trio_audio.errors import InvalidField
from trio_audio.models import check_id, parse_seq, parse_timestamp

from .audio_samples import pcm_s16le, wav
from .conftest import upload_params
from .test_http import assert_problem

FULL_WIDTH_ONE = "\uff11"
# Full-width, Arabic-Indic, Devanagari, superscript, mixed, mathematical digits.
NOT_ASCII_NUMBERS = [FULL_WIDTH_ONE, "\u0663", "\u0967\u0968", "\u00b2", "1\uff11", "\U0001d7d9"]
NOT_PLAIN_NUMBERS = [" 1", "1 ", "+1", "-1", "1_0", "1.0", "0x1", "1e3", "1\n"]
FULL_WIDTH_EPOCH = "\uff11\uff17" + "\uff10" * 8  # 1700000000


@pytest.mark.parametrize("value", NOT_ASCII_NUMBERS + NOT_PLAIN_NUMBERS)
def test_seq_is_ascii_digits_only(value: str) -> None:
    with pytest.raises(InvalidField, match="seq must be an integer"):
        parse_seq(value)


def test_seq_accepts_what_it_should() -> None:
    assert parse_seq("0") == 0 and parse_seq("007") == 7 and parse_seq(2**53 - 1) == 2**53 - 1
    assert parse_seq(None) is None and parse_seq("") is None
    for bad in (True, 1.0, 2**53, -1, [1]):
        with pytest.raises(InvalidField):
            parse_seq(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [FULL_WIDTH_EPOCH, "1_700_000_000", " 1700000000", "+1700000000", "inf", "nan",
     "\uff12\uff10\uff12\uff13-11-14T22:13:20Z"],
)  # fmt: skip
def test_timestamp_is_ascii_only(value: str) -> None:
    with pytest.raises(InvalidField, match="timestamp must be"):
        parse_timestamp(value)


def test_timestamp_accepts_what_it_should() -> None:
    assert parse_timestamp("1700000000.5") == "2023-11-14T22:13:20.500Z"
    assert parse_timestamp("1700000000") == "2023-11-14T22:13:20.000Z"
    assert parse_timestamp(1700000000.5) == "2023-11-14T22:13:20.500Z"
    assert parse_timestamp("2023-11-14T22:13:20Z") == "2023-11-14T22:13:20.000Z"


@pytest.mark.parametrize("value", NOT_ASCII_NUMBERS)
def test_raw_format_numbers_and_ids_are_ascii(value: str) -> None:
    with pytest.raises(InvalidField):
        raw_format_from("", {}, "pcm_s16le", value, "1")
    with pytest.raises(InvalidField):
        raw_format_from("", {}, "pcm_s16le", "16000", value)
    with pytest.raises(InvalidField):
        raw_format_from("audio/l16", {"rate": "16000", "channels": value}, None, None, None)
    with pytest.raises(InvalidField):
        check_id("user_id", "alice" + value)


async def test_unicode_digits_are_refused_over_http(client: httpx.AsyncClient) -> None:
    async def post(body: bytes, **params: str) -> httpx.Response:
        return await client.post("/upload", params=upload_params(**params), content=body)

    problem = assert_problem(await post(wav(), seq=FULL_WIDTH_ONE), 400, "invalid_field")
    assert repr(FULL_WIDTH_ONE) in problem["detail"]
    for field in ("sample_rate", "channels"):
        raw = {"encoding": "pcm_s16le", "sample_rate": "16000", "channels": "1"}
        response = await post(pcm_s16le(), **{**raw, field: FULL_WIDTH_ONE})
        assert_problem(response, 400, "invalid_field")
    assert_problem(await post(wav(), timestamp=FULL_WIDTH_EPOCH), 400, "invalid_field")
    listing = await client.get("/sessions/alice", params={"limit": FULL_WIDTH_ONE})
    assert_problem(listing, 400, "invalid_field")
    assert (await client.get("/sessions/alice")).json()["sessions"] == []  # nothing stored
