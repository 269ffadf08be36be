-- hub 0001: device identities and twins, one JSON document per device keyed by the lower-cased
-- device id. This is the table (and `user_version` 1) of the hub's own migrations before the hub
-- store moved into dps-store: existing hub.db files are at this step already.
CREATE TABLE devices (
     id  TEXT PRIMARY KEY NOT NULL,
     doc TEXT NOT NULL
 ) WITHOUT ROWID;
