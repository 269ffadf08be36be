-- hub 0005 (PostgreSQL): several nodes serving the same hubs (decision 0031). Which nodes are
-- alive (each refreshes its row every few seconds), where each connected device or module is
-- connected, and direct-method calls between nodes. Presence and calls are UNLOGGED: a crash of
-- PostgreSQL ends every connection they describe anyway.
CREATE TABLE dps_nodes (
    node TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    seen TIMESTAMPTZ NOT NULL
);

CREATE UNLOGGED TABLE hub_presence (
    hub     BIGINT NOT NULL,
    key     TEXT COLLATE "C" NOT NULL,
    node    TEXT COLLATE "C" NOT NULL,
    session BIGINT NOT NULL,
    PRIMARY KEY (hub, key)
);
CREATE INDEX hub_presence_by_node ON hub_presence (node);

CREATE UNLOGGED TABLE hub_calls (
    id         TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    hub        BIGINT NOT NULL,
    key        TEXT COLLATE "C" NOT NULL,
    caller     TEXT COLLATE "C" NOT NULL,
    callee     TEXT COLLATE "C" NOT NULL,
    method     TEXT NOT NULL,
    payload    TEXT NOT NULL,
    timeout_ms BIGINT NOT NULL,
    status     INTEGER,
    response   TEXT,
    created    TIMESTAMPTZ NOT NULL DEFAULT now()
);
