-- hub 0001 (PostgreSQL): the embedded hubs' registries and retained telemetry, every row keyed
-- by its hub's number, as SQLite's hub.db has it since its migration 9 (decision 0029), plus
-- the events its telemetry.db files keep. Keys sort bytewise (COLLATE "C"), as in SQLite.

CREATE TABLE devices (
    hub BIGINT NOT NULL,
    id  TEXT COLLATE "C" NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (hub, id)
);

-- Device counts by registry status, kept by a trigger in the transaction of every write.
CREATE TABLE device_counts (
    hub     BIGINT NOT NULL,
    status  TEXT NOT NULL,
    devices BIGINT NOT NULL,
    PRIMARY KEY (hub, status)
);

-- A document's status; '' for one that is not JSON or has none (neither comes from the hub).
CREATE FUNCTION dps_device_status(doc TEXT) RETURNS TEXT LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN coalesce(doc::jsonb ->> 'status', '');
EXCEPTION WHEN others THEN
    RETURN '';
END
$$;

CREATE FUNCTION dps_count_devices() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND dps_device_status(OLD.doc) = dps_device_status(NEW.doc) THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE device_counts SET devices = devices - 1
            WHERE hub = OLD.hub AND status = dps_device_status(OLD.doc);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO device_counts (hub, status, devices) VALUES (NEW.hub, dps_device_status(NEW.doc), 1)
            ON CONFLICT (hub, status) DO UPDATE SET devices = device_counts.devices + 1;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER devices_count AFTER INSERT OR UPDATE OF doc OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION dps_count_devices();

CREATE TABLE c2d (
    hub    BIGINT NOT NULL,
    seq    BIGINT NOT NULL,
    device TEXT COLLATE "C" NOT NULL,
    doc    TEXT NOT NULL,
    PRIMARY KEY (hub, seq)
);
CREATE INDEX c2d_device ON c2d (hub, device);

CREATE TABLE feedback (
    hub BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (hub, seq)
);

CREATE TABLE consumer_groups (
    hub  BIGINT NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    doc  TEXT NOT NULL,
    PRIMARY KEY (hub, name)
);

CREATE TABLE file_notifications (
    hub BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (hub, seq)
);

CREATE TABLE modules (
    hub    BIGINT NOT NULL,
    id     TEXT COLLATE "C" NOT NULL,
    device TEXT COLLATE "C" NOT NULL,
    doc    TEXT NOT NULL,
    PRIMARY KEY (hub, id)
);
CREATE INDEX modules_by_device ON modules (hub, device, id);

CREATE TABLE jobs (
    hub BIGINT NOT NULL,
    id  TEXT COLLATE "C" NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (hub, id)
);

CREATE TABLE device_jobs (
    hub BIGINT NOT NULL,
    id  TEXT COLLATE "C" NOT NULL,
    job TEXT COLLATE "C" NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (hub, id)
);
CREATE INDEX device_jobs_by_job ON device_jobs (hub, job);

CREATE TABLE twin_tags (
    hub    BIGINT NOT NULL,
    path   TEXT COLLATE "C" NOT NULL,
    value  TEXT COLLATE "C" NOT NULL,
    device TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (hub, path, value, device)
);
CREATE INDEX twin_tags_by_device ON twin_tags (hub, device);

-- Retained telemetry: `seq` the hub-wide sequence number (the event's offset), `partition` and
-- `pseq` its partition and position there, `device` the lower-cased device id, `enqueued_ms`
-- when the hub accepted it, `size` what it counts against the byte budget, `doc` the encoded
-- message (dps_hub::store::encode_event).
CREATE TABLE events (
    hub         BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    partition   BIGINT NOT NULL,
    pseq        BIGINT NOT NULL,
    device      TEXT COLLATE "C" NOT NULL,
    enqueued_ms BIGINT NOT NULL,
    size        BIGINT NOT NULL,
    doc         BYTEA NOT NULL,
    PRIMARY KEY (hub, seq)
);
CREATE UNIQUE INDEX events_partition ON events (hub, partition, pseq);

-- The bytes each hub retains, kept by a trigger (a SUM over the table would read all of it).
CREATE TABLE event_bytes (
    hub   BIGINT PRIMARY KEY,
    bytes BIGINT NOT NULL
);

CREATE FUNCTION dps_count_event_bytes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE event_bytes SET bytes = bytes - OLD.size WHERE hub = OLD.hub;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO event_bytes (hub, bytes) VALUES (NEW.hub, NEW.size)
            ON CONFLICT (hub) DO UPDATE SET bytes = event_bytes.bytes + NEW.size;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_bytes AFTER INSERT OR UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION dps_count_event_bytes();
