"""The bench's own accounting, against real servers (a few seconds: the full bench is
``nox -s bench``).

Rules: localhost, port 0, real server processes, ``fail_after`` on anything that could hang.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import trio

from trio_audio.bench.http1 import Connection, request_bytes
from trio_audio.bench.loadgen import Spec
from trio_audio.bench.report import render
from trio_audio.bench.runner import (
    Scenario,
    host_port,
    profile_summary,
    run_load,
    run_scenario,
    run_server,
    server_command,
    verify,
)


async def test_every_ack_is_checked_and_a_lost_chunk_is_caught(tmp_path: Path) -> None:
    # A small ingress queue under 16 concurrent uploads: some are stored, some refused (503).
    spec = Spec(kind="http", duration_s=1.0, concurrency=16, chunk_s=0.25, bodies=4, run_id="t")
    scenario = Scenario(name="t", spec=spec, server_args=("--ingress-queue", "2"))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(run_server, server_command(scenario, tmp_path / "d"))
            outcome = await run_load(attrs.evolve(spec, url=server.http_url), tmp_path, [])
            statuses = {record[2] for record in outcome.records}
            assert statuses <= {201, 503}, outcome.errors
            assert 201 in statuses
            assert 503 in statuses
            acked = [(r[3], outcome.checksums[r[4]]) for r in outcome.records if r[2] == 201]
            assert len({chunk_id for chunk_id, _ in acked}) == len(acked)
            assert await verify(server.http_url, acked) == []

            # Take one acknowledged chunk away for real, forge one id and one checksum.
            gone, _ = acked[1]
            host, port = host_port(server.http_url)
            connection = Connection(host, port)
            deleted = await connection.request(
                request_bytes("DELETE", f"/chunks/{gone}", f"{host}:{port}")
            )
            await connection.aclose()
            assert deleted.status == 200
            forged = [("000000000000forgedchunkid", acked[0][1]), (acked[0][0], "0" * 64)]
            lost = await verify(server.http_url, acked + forged)
            assert [(item.chunk_id, item.reason) for item in lost] == [
                (gone, "missing"),
                ("000000000000forgedchunkid", "missing"),
                (acked[0][0], "checksum mismatch"),
            ]
            nursery.cancel_scope.cancel()


async def test_websocket_scenario_reports_rates_cpu_memory_and_nothing_lost(
    tmp_path: Path,
) -> None:
    spec = Spec(kind="ws", duration_s=1.0, concurrency=2, window=8, bodies=4, run_id="w")
    with trio.fail_after(60):
        result = await run_scenario(Scenario(name="ws", spec=spec), tmp_path)
    assert result["accepted"] > 0
    assert result["failed"] == 0, result["errors"]
    assert result["lost"] == []
    assert result["verified"] == result["accepted"]
    assert result["stored_per_s"] > 0
    assert result["latency_ms"]["p99"] is not None
    assert result["server_cpu_percent"] is not None
    assert result["memory"]["peak_rss_mb"] > 0
    text = render({"started": "now", "machine": {"cpus": 2, "python": "3", "loadavg_before": []},
                   "scenarios": [result]})  # fmt: skip
    assert "lost: 0" in text


async def test_baseline_takes_the_same_uploads_and_is_accounted(tmp_path: Path) -> None:
    spec = Spec(kind="http", duration_s=0.5, concurrency=4, chunk_s=0.25, bodies=4, run_id="b")
    with trio.fail_after(60):
        result = await run_scenario(Scenario(name="b", spec=spec, target="baseline"), tmp_path)
    assert result["accepted"] > 0
    assert result["stored_per_s"] > 0
    assert result["lost"] == []


async def test_baseline_takes_websocket_frames_with_the_same_work_and_is_accounted(
    tmp_path: Path,
) -> None:
    """The same-work WebSocket floor acknowledges frames it analysed and appended, and the
    bench reads every acknowledged chunk back from it, as it does from the service."""
    spec = Spec(kind="ws", duration_s=0.5, concurrency=2, window=4, bodies=4, run_id="bw")
    with trio.fail_after(60):
        result = await run_scenario(Scenario(name="bw", spec=spec, target="baseline"), tmp_path)
    assert result["accepted"] > 0 and result["failed"] == 0, result["errors"]
    assert result["lost"] == []
    assert result["verified"] == result["accepted"]


async def test_the_bare_front_doors_answer_and_the_ceiling_ratio_is_reported(
    tmp_path: Path,
) -> None:
    """The bare servers answer the same loads (nothing to verify: they keep nothing), pinned
    to one CPU with the load on the others, and the service's share of them is computed."""
    from trio_audio.bench.cli import spread

    results = []
    with trio.fail_after(120):
        for kind in ("http", "ws"):
            spec = Spec(kind=kind, duration_s=1.0, concurrency=2, window=4, bodies=4,
                        chunk_s=0.25, run_id=f"c{kind}", metadata_every=0)  # fmt: skip
            for target in ("server", "baseline", "bare"):
                scenario = Scenario(name=f"{kind} {target}", spec=spec, target=target,
                                    verify=target != "bare", cpu=0)  # fmt: skip
                results.append(await run_scenario(scenario, tmp_path))
    for result in results:
        assert result["accepted"] > 0 and result["failed"] == 0, result["errors"]
        assert result["lost"] == []
        assert result["server_cpu_ms_per_accepted"] is not None
    assert results[2]["verified"] == 0 and results[0]["verified"] == results[0]["accepted"]
    rows = {row["name"]: row for row in spread(results)}
    for kind in ("http", "ws"):
        for side in ("bare", "baseline"):
            assert rows[f"{kind} server"][f"share_of_{side}"] > 0
            assert rows[f"{kind} server"][f"cpu_share_of_{side}"] > 0
    text = render({"started": "now", "machine": {"cpus": 2, "python": "3", "loadavg_before": []},
                   "scenarios": results, "summary": spread(results)})  # fmt: skip
    assert "of the bare front door's rate" in text
    assert "the same work done plainly" in text


def test_a_profile_is_summed_by_part_of_the_service_our_work_before_the_libraries(
    tmp_path: Path,
) -> None:
    stages = "run_worker (trio_audio/pipeline/stages.py:119)"
    vad_call = f"{stages};analyze_batch (trio_audio/audio/vad.py:318);run (onnxruntime/x.py:1)"
    http = "H11Protocol.handle (hypercorn/protocol/h11.py:116);next_event (h11/_connection.py:1)"
    collapsed = tmp_path / "profile.txt"
    collapsed.write_text(
        f"thread (1): MainThread;{vad_call} 6\n"
        f"thread (1): MainThread;{http} 3\n"
        "thread (1): MainThread;unrolled_run (trio/_core/_run.py:2866) 1\n"
    )
    summary = profile_summary(collapsed)
    assert summary["parts"] == [
        ("VAD (Silero in onnxruntime)", 60.0),
        ("hypercorn and h11 (HTTP parsing)", 30.0),
        ("Trio: scheduler, cancel scopes, channels, sockets", 10.0),
    ]
    assert ("run_worker (trio_audio/pipeline/stages.py", 60.0) in summary["inclusive"]
