-- hub 0009 (PostgreSQL): file uploads in progress, so that a device may report an upload
-- (POST /files/notifications) through another node than the one that started it
-- (POST /files; decision 0031). Expiry in ms since the epoch; the housekeeping node drops the
-- long-expired ones.
CREATE TABLE file_uploads (
    hub            BIGINT NOT NULL,
    correlation_id TEXT COLLATE "C" NOT NULL,
    device         TEXT COLLATE "C" NOT NULL,
    blob_name      TEXT NOT NULL,
    expires        BIGINT NOT NULL,
    PRIMARY KEY (hub, correlation_id)
);
CREATE INDEX file_uploads_by_device ON file_uploads (hub, device, expires);
CREATE INDEX file_uploads_by_expiry ON file_uploads (hub, expires);
