#!/usr/bin/env python3
"""Fills a PostgreSQL store with N registrations and their hub devices, for measuring a node
whose database already holds many (BENCHMARKS.md, "1,000,000 registrations in PostgreSQL").

Each new registration record and hub device is a copy of one the service wrote itself (so the
documents are exactly what the store holds), with its id replaced by `{prefix}{i}`: register
one device first and keep it (`dps bench register --devices 1 --keep`), then

    scripts/bench/fill_postgres.py postgres://dps@127.0.0.1:PORT/db 1000000 [--prefix fill-]

The copies are put in an enrollment group of their own (`{prefix}group`, a group key no
enrollment group has), so that listings of the bench's group do not walk them. Rows go in with
INSERT … SELECT from generate_series in batches of 100,000 (one transaction each); the schema's
triggers keep the hub's device counts. Needs `psql` on the PATH.
"""
import argparse
import subprocess
import time

BATCH = 100_000


def psql(url: str, sql: str) -> str:
    out = subprocess.run(
        ["psql", url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("count", type=int)
    ap.add_argument("--prefix", default="fill-")
    a = ap.parse_args()

    template = psql(a.url, "SELECT key FROM registrations ORDER BY key LIMIT 1")
    if not template:
        raise SystemExit("no registration to copy: register one device first (dps bench register --devices 1 --keep)")
    hub = psql(a.url, f"SELECT hub FROM devices WHERE id = '{template}' LIMIT 1")
    if not hub:
        raise SystemExit(f"registration {template} has no hub device in this database")
    p, group = a.prefix, a.prefix + "group"
    started = time.monotonic()
    for first in range(0, a.count, BATCH):
        last = min(first + BATCH, a.count) - 1
        ids = f"generate_series({first}, {last}) AS i"
        psql(
            a.url,
            f"""
            BEGIN;
            INSERT INTO registrations (key, group_key, etag, doc)
              SELECT '{p}' || i, '{group}', t.etag, replace(t.doc, t.key, '{p}' || i)
              FROM registrations t, {ids} WHERE t.key = '{template}';
            INSERT INTO devices (hub, id, doc)
              SELECT d.hub, '{p}' || i, replace(d.doc, d.id, '{p}' || i)
              FROM devices d, {ids} WHERE d.hub = {hub} AND d.id = '{template}';
            COMMIT;
            """,
        )
        print(f"{last + 1} rows each ({time.monotonic() - started:.0f} s)", flush=True)
    for table in ("registrations", "devices"):
        psql(a.url, f"VACUUM ANALYZE {table}")
    print(f"done: {a.count} registrations and hub devices in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
