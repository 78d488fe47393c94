"""The text report of a bench result (the JSON ``cli.run`` writes)."""

from __future__ import annotations

from typing import Any

COLUMNS = ("scenario", "offered/s", "accepted/s", "stored/s", "refused/s", "failed",
           "p50 ms", "p95 ms", "p99 ms", "srv CPU%", "gen CPU%", "peak RSS MB", "lost")  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def render(result: dict[str, Any]) -> str:
    scenarios = result["scenarios"]
    machine = result["machine"]
    lines = [f"trio-audio bench {result['started']}: {machine['cpus']} CPUs, "
             f"Python {machine['python']}, load average before "
             f"{machine['loadavg_before']}, after {machine.get('loadavg_after')}", ""]  # fmt: skip
    rows = [list(COLUMNS)]
    for s in scenarios:
        latency = s["latency_ms"]
        rows.append([s["name"], _cell(s["offered_per_s"]), _cell(s["accepted_per_s"]),
                     _cell(s["stored_per_s"]), _cell(s["refused_per_s"]), _cell(s["failed"]),
                     _cell(latency["p50"]), _cell(latency["p95"]), _cell(latency["p99"]),
                     _cell(s["server_cpu_percent"]), _cell(s["loadgen_cpu_percent"]),
                     _cell(s["memory"].get("peak_rss_mb")), _cell(len(s["lost"]))])  # fmt: skip
    lines += _table(rows)
    summary = result.get("summary", [])
    if any(row["runs"] > 1 for row in summary):
        lines += ["", "spread over repeats: median (min-max)"]
        rows = [["scenario", "runs", "accepted/s", "p99 ms", "srv CPU%"]]
        for row in summary:
            rows.append([row["name"], str(row["runs"])] + [
                _spread(row.get(key)) for key in ("accepted_per_s", "p99_ms",
                                                  "server_cpu_percent")])  # fmt: skip
        lines += _table(rows)
    lines += _ratios(scenarios)
    shares = [row for row in summary if "share_of_bare" in row]
    if shares:
        lines.append("")
        lines += [f"{row['name']}: {row['share_of_bare']:.2f}x of the bare front door's "
                  f"rate, {row.get('cpu_share_of_bare', 0):.3f}x of its chunks per server "
                  f"CPU-second ({_spread(row.get('cpu_ms_per_accepted'))} ms CPU each; "
                  f"medians of {row['runs']} runs)" for row in shares]  # fmt: skip
        lines += [f"{row['name']}: {row['share_of_baseline']:.2f}x the rate of the same work "
                  f"done plainly, {row.get('cpu_share_of_baseline', 0):.3f}x its chunks per "
                  f"server CPU-second" for row in shares if "share_of_baseline" in row]  # fmt: skip
    for s in scenarios:
        if "overload" in s["name"]:
            lines += _overload(s)
    for s in scenarios:
        if "profile" in s:
            lines += ["", f"server profile ({s['profile']['file']}), % of samples:"]
            for kind in ("parts", "self", "inclusive"):
                lines.append(f"  {kind}:")
                lines += [f"    {share:5.1f}  {name}" for name, share in s["profile"][kind]]
    lines.append("")
    for s in scenarios:
        if not s["accepted"]:
            lines.append(f"NOTHING ACKNOWLEDGED in {s['name']!r}: {s['statuses']} {s['errors']}")
    everything_lost = [item for s in scenarios for item in s["lost"]]
    verified = sum(s["verified"] for s in scenarios)
    if everything_lost:
        lines.append(f"lost: {len(everything_lost)} of {verified} acknowledged chunks")
        lines += [f"  {item['chunk_id']}: {item['reason']}" for item in everything_lost[:100]]
    else:
        lines.append(f"lost: 0 (all {verified} acknowledged chunks read back, checksums match)")
    return "\n".join(lines)


def _spread(value: dict[str, float] | None) -> str:
    if value is None:
        return "-"
    return f"{_cell(value['median'])} ({_cell(value['min'])}-{_cell(value['max'])})"


def _ratios(scenarios: list[dict[str, Any]]) -> list[str]:
    def first(prefix: str) -> dict[str, Any] | None:
        return next((s for s in scenarios if s["name"] == prefix), None)

    server = first("http closed c=32, fsync always")
    lines = []
    for name in ("baseline closed c=32", "baseline closed c=32, fsync each"):
        base = first(name)
        if server is None or base is None or not base["accepted_per_s"]:
            continue
        ratio = server["accepted_per_s"] / base["accepted_per_s"]
        p99s = (server["latency_ms"]["p99"], base["latency_ms"]["p99"])
        lines.append(f"service (fsync always) vs {name}: {ratio:.2f}x uploads/s, "
                     f"p99 {_cell(p99s[0])} vs {_cell(p99s[1])} ms")  # fmt: skip
    return ["", *lines] if lines else []


def _overload(s: dict[str, Any]) -> list[str]:
    memory = s["memory"]
    curve = " ".join(f"{mb:.0f}" for _, mb in memory.get("curve_mb", []))
    refused = s["refused"]
    lines = ["", f"overload ({s['name']}): offered {_cell(s['offered_per_s'])}/s "
             f"(sent {_cell(s['sent'] / s['elapsed_s'])}/s), "
             f"accepted {_cell(s['accepted_per_s'])}/s, refused {refused} "
             f"({_cell(s['refused_per_s'])}/s, p99 refusal "
             f"{_cell(s['refusal_latency_ms']['p99'])} ms), failed {s['failed']}; "
             f"{s['not_sent']} ticks found all {s['spec']['concurrency']} connections busy",
             f"  server RSS MB over the run: {curve}",
             f"  RSS {memory.get('rss_start_mb')} -> {memory.get('rss_end_mb')} MB "
             f"(second half of the run: +{memory.get('rss_growth_second_half_mb')} MB), "
             f"lost: {len(s['lost'])}"]  # fmt: skip
    return lines
