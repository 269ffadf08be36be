-- The IoT hubs devices may be assigned to (`/linkedHubs`), keyed by lower-cased host name.
CREATE TABLE linked_hubs (key TEXT NOT NULL PRIMARY KEY, etag TEXT, doc TEXT NOT NULL);
