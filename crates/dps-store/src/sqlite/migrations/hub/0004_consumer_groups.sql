-- hub 0004: the consumer groups created on the Event Hub-compatible endpoint ($Default is built
-- in and never stored). `name` is the lower-cased group name; `doc` the hub's JSON record.
CREATE TABLE consumer_groups (
    name TEXT PRIMARY KEY NOT NULL,
    doc  TEXT NOT NULL
);
