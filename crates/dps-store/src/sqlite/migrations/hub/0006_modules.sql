-- hub 0006: module identities with their twins, one JSON document per module keyed by
-- `{device key}/modules/{module key}` (both lower-cased), with the device's key beside it so that
-- a device's modules are listed and deleted with it.
CREATE TABLE modules (
     id     TEXT PRIMARY KEY NOT NULL,
     device TEXT NOT NULL,
     doc    TEXT NOT NULL
 ) WITHOUT ROWID;
CREATE INDEX modules_by_device ON modules (device, id);
