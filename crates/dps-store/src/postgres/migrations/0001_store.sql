-- store 0001 (PostgreSQL): the DPS store's tables, the same as SQLite's (sqlite migrations
-- 0001-0004): one JSON document per row, keyed by the lower-cased id. Keys sort bytewise
-- (COLLATE "C"), as in SQLite, so pages come in the same order on both.
CREATE TABLE enrollments (
    key  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    etag TEXT,
    doc  TEXT NOT NULL
);

CREATE TABLE enrollment_groups (
    key  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    etag TEXT,
    doc  TEXT NOT NULL
);

CREATE TABLE registrations (
    key       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    group_key TEXT COLLATE "C",
    etag      TEXT,
    doc       TEXT NOT NULL
);
CREATE INDEX registrations_by_group ON registrations (group_key, key) WHERE group_key IS NOT NULL;

CREATE TABLE certificates (
    key  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    etag TEXT,
    doc  TEXT NOT NULL
);

CREATE TABLE registration_intents (
    key TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    doc TEXT NOT NULL
);

CREATE TABLE linked_hubs (
    key  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    etag TEXT,
    doc  TEXT NOT NULL
);
