-- 0001: the three document tables.
--
-- Every row is keyed by the lower-cased id (ids are case-insensitive in Azure DPS; the original
-- casing lives inside the document). The etag has its own column so preconditions are checked
-- without parsing JSON; `doc` is the whole dps-proto model as JSON, so model fields can grow
-- without a migration.

-- Enrollments and groups may carry X.509 certificate chains (several KB), so they stay ordinary
-- rowid tables: large rows in a WITHOUT ROWID b-tree spill to overflow pages sooner.
CREATE TABLE enrollments (
    key  TEXT NOT NULL PRIMARY KEY,
    etag TEXT,
    doc  TEXT NOT NULL
);

CREATE TABLE enrollment_groups (
    key  TEXT NOT NULL PRIMARY KEY,
    etag TEXT,
    doc  TEXT NOT NULL
);

-- Registration records are small (a few hundred bytes) and written on every device
-- registration: WITHOUT ROWID makes an upsert touch one b-tree instead of two.
CREATE TABLE registrations (
    key       TEXT NOT NULL PRIMARY KEY,
    group_key TEXT,
    etag      TEXT,
    doc       TEXT NOT NULL
) WITHOUT ROWID;

-- `list_registrations_by_group`: equality on group_key, then ordered by key for paging.
-- Partial: most individual-enrollment registrations have no group and need no index entry.
CREATE INDEX registrations_by_group ON registrations (group_key, key)
    WHERE group_key IS NOT NULL;
