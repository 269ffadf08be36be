-- hub 0003: the durable cloud-to-device queues and the service's feedback queue.
--
-- A message is stored before the service's send is acknowledged and deleted when it reaches a
-- final outcome, in the same transaction as the feedback record its sender asked for. `seq` is
-- the hub-wide enqueue order; `device` the lower-cased device id, so that deleting a device
-- deletes its messages. Documents are the hub's JSON records (the body base64 inside).
CREATE TABLE c2d (
    seq    INTEGER PRIMARY KEY NOT NULL,
    device TEXT NOT NULL,
    doc    TEXT NOT NULL
);
CREATE INDEX c2d_device ON c2d (device);

CREATE TABLE feedback (
    seq INTEGER PRIMARY KEY NOT NULL,
    doc TEXT NOT NULL
);
