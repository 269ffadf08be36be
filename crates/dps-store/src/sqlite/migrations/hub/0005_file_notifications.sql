-- hub 0005: file upload notifications waiting for the service (stored before they are readable,
-- deleted when the service completes them or they expire). `doc` is the hub's JSON record.
CREATE TABLE file_notifications (
    seq INTEGER PRIMARY KEY NOT NULL,
    doc TEXT NOT NULL
);
