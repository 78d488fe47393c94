"""``flow.transcript_lag_ms`` is the stream's own lag, not the backlog of other sessions."""

from __future__ import annotations

import json

import numpy as np
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from .conftest import StartServer
from .speech import OTHER_SENTENCE, SENTENCE, pieces, speak, to_wav


async def test_transcript_lag_counts_only_the_streams_own_session(
    start_server: StartServer,
) -> None:
    server = await start_server(asr_engine="pocketsphinx", asr_workers=1,
                                ws_flow_interval_s=0.05)  # fmt: skip
    long_speech = np.concatenate([speak(s) for s in [SENTENCE, OTHER_SENTENCE] * 12])
    async with server.client() as client:
        response = await client.post(
            "/upload", params={"user_id": "bob", "session_id": "busy"},
            content=to_wav(long_speech),
        )  # fmt: skip
        assert response.status_code == 201
    await trio.sleep(0.5)  # bob's chunk waits half a second before alice's stream starts
    flows = []
    with trio.fail_after(60):
        async with open_websocket_url(server.running.ws_url) as ws:
            started_at = trio.current_time()
            async with server.client() as client:
                busy = (await client.get("/sessions/bob")).json()["sessions"][0]
            await ws.send_message(json.dumps({
                "type": "start", "user_id": "alice", "session_id": "mine",
                "format": {"encoding": "pcm_s16le", "sample_rate": 16000, "channels": 1},
            }))  # fmt: skip
            for piece in pieces(speak(SENTENCE), 0.1):
                await ws.send_message((piece * 32767).astype("<i2").tobytes())
            await ws.send_message(json.dumps({"type": "end"}))
            try:
                while True:
                    message = json.loads(await ws.get_message())
                    if message["type"] == "flow":
                        flows.append((trio.current_time() - started_at, message))
            except ConnectionClosed:
                pass
    assert busy["transcript"]["status"] == "pending"  # behind when alice's stream started
    assert flows
    for age_s, flow in flows:  # never more than alice's own stream has lasted
        assert flow["transcript_lag_ms"] <= age_s * 1000 + 20, (age_s, flow)
