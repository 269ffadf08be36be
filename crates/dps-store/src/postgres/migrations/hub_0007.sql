-- hub 0007 (PostgreSQL): telemetry numbered by the database, among every node's messages
-- (decision 0031): per hub, the next hub-wide sequence number (partition -1) and the next
-- sequence number of each partition. A message takes its numbers in the transaction that
-- stores it, so they are handed out in commit order. Continues from what is stored.
CREATE TABLE event_counters (
    hub       BIGINT NOT NULL,
    partition BIGINT NOT NULL,
    next      BIGINT NOT NULL,
    PRIMARY KEY (hub, partition)
);
INSERT INTO event_counters (hub, partition, next)
    SELECT hub, -1, MAX(seq) + 1 FROM events GROUP BY hub;
INSERT INTO event_counters (hub, partition, next)
    SELECT hub, partition, MAX(pseq) + 1 FROM events GROUP BY hub, partition;
