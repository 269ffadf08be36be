#!/usr/bin/env python3
"""Prints the `dps bench --json` results in a directory as the Markdown table of BENCHMARKS.md.

Usage: scripts/bench_table.py DIR   (one <scenario>.json per run, as scripts/bench.sh writes them)
"""

import json
import pathlib
import sys


def mb(v):
    return f"{v / 1e6:.0f} MB" if isinstance(v, (int, float)) else "—"


def num(v, fmt="{:.0f}"):
    return fmt.format(v) if isinstance(v, (int, float)) else "—"


def main() -> None:
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
    print(
        "| scenario | devices | ok | failed | throughput/s | tls ceiling/s | ratio | p50 ms | p90 ms | p99 ms | max ms "
        "| server CPU µs/op | bench CPU µs/op | server peak RSS |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in sorted(out.glob("*.json")):
        try:
            r = json.loads(f.read_text())
        except ValueError:
            print(f"| {f.stem} | (no result: the run failed or is still going) |")
            continue
        lat = r.get("latencyMs", {})
        ok = r.get("succeeded") or 0
        per_op = lambda k: num(r[k] * 1e6 / ok) if ok and isinstance(r.get(k), (int, float)) else "—"  # noqa: E731
        ceiling = r.get("tlsCeilingPerSecond")
        print(
            f"| {f.stem} | {r.get('devices')} | {ok} | {r.get('failed')} | {num(r.get('throughputPerSecond'))} "
            f"| {num(ceiling)} | {num(r.get('ratioToTls'), '{:.2f}')} | {num(lat.get('p50'), '{:.1f}')} "
            f"| {num(lat.get('p90'), '{:.1f}')} | {num(lat.get('p99'), '{:.1f}')} | {num(lat.get('max'), '{:.1f}')} "
            f"| {per_op('serverCpuSeconds')} | {per_op('clientCpuSeconds')} | {mb(r.get('serverPeakRssBytes'))} |"
        )
    hold = out / "hold.json"
    if hold.exists() and hold.stat().st_size:
        r = json.loads(hold.read_text())
        print()
        print(
            f"hold: {r.get('established')} of {r.get('connections')} connections established, "
            f"{r.get('openAtEnd')} open after {r.get('heldSeconds')} s; server "
            f"{num(r.get('serverRssPerConnectionBytes'))} bytes/connection "
            f"(baseline {mb(r.get('serverRssBaselineBytes'))}, peak {mb(r.get('serverRssPeakBytes'))}); "
            f"bench {num(r.get('clientRssPerConnectionBytes'))} bytes/connection"
        )


if __name__ == "__main__":
    main()
