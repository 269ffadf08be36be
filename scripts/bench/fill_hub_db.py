#!/usr/bin/env python3
"""Fills a data directory's hub.db with N SAS devices, for measuring a hub with many devices
(BENCHMARKS.md, "Hub with 1,000,000 stored devices").

The hub.db must exist with its schema: start `dps serve --data-dir DIR` once and stop it. Rows
are the JSON `DeviceRecord` documents `SqliteHubStore` writes (crates/dps-hub/src/record.rs),
keyed by the first hub's number (1, hub migration 9) and the lower-cased device id; the schema's
triggers keep the device counts.

    scripts/bench/fill_hub_db.py DIR/hub.db 1000000 [--prefix bulk-] [--query-tags]

`--query-tags` writes the twins `dps bench query` expects (prefix `qb-`, tags `benchSite` =
`site-{i // 100:05}` and `benchN` = i), so that it finds them seeded. The string tag index
(hub migration 8) is then marked to be rebuilt: `dps serve` indexes every device when it next
opens `hub.db` (its log says how long that took).
"""
import argparse
import base64
import json
import os
import random
import sqlite3
import time


def doc(device_id: str, now: str, tags: dict) -> str:
    key = lambda: base64.b64encode(os.urandom(32)).decode()
    return json.dumps(
        {
            "deviceId": device_id,
            "generationId": str(random.randrange(10**17, 10**18)),
            "etag": base64.b64encode(os.urandom(8)).decode(),
            "status": "enabled",
            "statusUpdatedTime": now,
            "createdTime": now,
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key(), "secondaryKey": key()}},
            "capabilities": {"iotEdge": False},
            "twin": {
                "etag": base64.b64encode(os.urandom(8)).decode(),
                "version": 1,
                "tags": tags,
                "desired": {},
                "desiredVersion": 1,
                "desiredUpdated": now,
                "reported": {},
                "reportedVersion": 1,
                "reportedUpdated": now,
            },
        },
        separators=(",", ":"),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hub_db")
    p.add_argument("count", type=int)
    p.add_argument("--prefix", default="bulk-")
    p.add_argument("--query-tags", action="store_true", help="the twins of `dps bench query`")
    a = p.parse_args()
    if not os.path.exists(a.hub_db):
        raise SystemExit(f"{a.hub_db} does not exist: start `dps serve` once to create it")
    db = sqlite3.connect(a.hub_db)
    db.execute("PRAGMA synchronous=OFF")
    # Files from before hub migration 9 have no hub column.
    by_hub = any(col[1] == "hub" for col in db.execute("PRAGMA table_info(devices)"))
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    start = time.time()
    batch = 50_000
    for lo in range(0, a.count, batch):
        rows = []
        for i in range(lo, min(lo + batch, a.count)):
            if a.query_tags:
                did, tags = f"qb-{i:07d}", {"benchSite": f"site-{i // 100:05d}", "benchN": i}
            else:
                did, tags = f"{a.prefix}{i:07d}", {}
            rows.append((did.lower(), doc(did, now, tags)))
        if by_hub:
            db.executemany("INSERT OR REPLACE INTO devices (hub, id, doc) VALUES (1, ?, ?)", rows)
        else:
            db.executemany("INSERT OR REPLACE INTO devices (id, doc) VALUES (?, ?)", rows)
        db.commit()
    has_index = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'hub_meta'").fetchone()
    if has_index:
        db.execute("INSERT OR REPLACE INTO hub_meta (name, value) VALUES ('tag_index', 'pending')")
        db.commit()
    total = db.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
    print(f"{total} devices in {a.hub_db} ({time.time() - start:.1f} s)")


if __name__ == "__main__":
    main()
