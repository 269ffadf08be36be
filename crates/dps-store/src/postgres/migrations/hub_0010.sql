-- hub 0010 (PostgreSQL): the hubs' blobs (uploaded files, import and export jobs' blobs), so
-- that any node serves a blob whichever node wrote it (decision 0033). A blob names a
-- generation of chunks; a staged block is a generation of its own until a block list copies
-- it into the blob's. Times in µs since the epoch.
CREATE TABLE blobs (
    hub        BIGINT NOT NULL,
    container  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    generation TEXT COLLATE "C" NOT NULL,
    size       BIGINT NOT NULL,
    modified   BIGINT NOT NULL,
    PRIMARY KEY (hub, container, name)
);
-- A generation's bytes, at most 1 MiB a row, by their offset in it.
CREATE TABLE blob_chunks (
    generation TEXT COLLATE "C" NOT NULL,
    start      BIGINT NOT NULL,
    data       BYTEA NOT NULL,
    PRIMARY KEY (generation, start)
);
-- Uploaded files are mostly compressed already: store the chunks as they come.
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE blob_blocks (
    hub        BIGINT NOT NULL,
    container  TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    block_id   BYTEA NOT NULL,
    generation TEXT COLLATE "C" NOT NULL,
    size       BIGINT NOT NULL,
    staged     BIGINT NOT NULL,
    PRIMARY KEY (hub, container, name, block_id)
);
CREATE INDEX blob_blocks_by_age ON blob_blocks (hub, staged);
-- Import and export jobs (/jobs/create), so that any node answers for a job and may cancel it;
-- the node it was created through runs it and writes it at least every ten seconds ("updated",
-- ms since the epoch).
CREATE TABLE import_export_jobs (
    hub     BIGINT NOT NULL,
    id      TEXT COLLATE "C" NOT NULL,
    status  TEXT NOT NULL,
    doc     TEXT NOT NULL,
    created BIGINT NOT NULL,
    updated BIGINT NOT NULL,
    PRIMARY KEY (hub, id)
);
CREATE INDEX import_export_jobs_by_age ON import_export_jobs (hub, created);
