-- store 0002 (PostgreSQL): the files every node of a database shares, so that any node serves
-- the same service (issue 15 point 2): the identity (dps.json: ID scope, policies and keys,
-- embedded hubs), the local CAs and the server certificates, by the names a data directory
-- gives them. Created once, by the first node, under an advisory lock.
CREATE TABLE dps_files (
    name       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    content    TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
