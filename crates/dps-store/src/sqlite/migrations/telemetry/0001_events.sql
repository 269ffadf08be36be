-- telemetry 0001: the hub's device-to-cloud messages, retained for the Event Hub-compatible
-- endpoint and `monitor-events` (in `telemetry.db`, apart from the registry, so that a telemetry
-- flood does not share the registry's writer and fsyncs).
--
-- `seq` is the hub-wide sequence number (the event's offset); `partition` and `pseq` its
-- partition and position there; `device` the lower-cased device id; `enqueued_ms` when the hub
-- accepted it; `size` what it counts against the byte budget; `doc` the encoded message.
-- Trimming goes oldest first by `seq`, so no time index is kept.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY NOT NULL,
    partition   INTEGER NOT NULL,
    pseq        INTEGER NOT NULL,
    device      TEXT NOT NULL,
    enqueued_ms INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    doc         BLOB NOT NULL
);
CREATE UNIQUE INDEX events_partition ON events (partition, pseq);

-- The bytes retained, kept by triggers in the transaction of every write (a SUM over the
-- table would read all of it).
CREATE TABLE event_bytes (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    bytes INTEGER NOT NULL
);
INSERT INTO event_bytes (id, bytes) VALUES (1, 0);
CREATE TRIGGER events_bytes_insert AFTER INSERT ON events BEGIN
    UPDATE event_bytes SET bytes = bytes + NEW.size WHERE id = 1;
END;
CREATE TRIGGER events_bytes_delete AFTER DELETE ON events BEGIN
    UPDATE event_bytes SET bytes = bytes - OLD.size WHERE id = 1;
END;
