-- hub 0008: an index of the devices' string tags, so a query `WHERE tags.x = 'v'` reads just the
-- matching devices: one row per string leaf of a device's tags (`path` dotted below `tags`).
-- Existing devices are indexed by the store when it opens, in Rust (the tag paths are computed
-- as the hub computes them); `tag_index` in `hub_meta` says whether that is still to do.
CREATE TABLE twin_tags (
     path   TEXT NOT NULL,
     value  TEXT NOT NULL,
     device TEXT NOT NULL,
     PRIMARY KEY (path, value, device)
 ) WITHOUT ROWID;
CREATE INDEX twin_tags_by_device ON twin_tags (device);
CREATE TABLE hub_meta (
     name  TEXT PRIMARY KEY NOT NULL,
     value TEXT NOT NULL
 ) WITHOUT ROWID;
INSERT INTO hub_meta (name, value) SELECT 'tag_index', 'pending' WHERE EXISTS (SELECT 1 FROM devices);
