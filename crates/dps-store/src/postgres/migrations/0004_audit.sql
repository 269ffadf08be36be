-- store 0004 (PostgreSQL): the audit trail (decision 0036), every node's entries in one table.
-- `seq` orders them as their inserts drew it (nearly the commit order across nodes); a page
-- continues after the previous page's last entry.
CREATE TABLE audit (
    seq              BIGSERIAL PRIMARY KEY,
    at_ms            BIGINT NOT NULL,
    kind             TEXT COLLATE "C" NOT NULL,
    registration_key TEXT COLLATE "C",
    outcome          TEXT COLLATE "C" NOT NULL,
    doc              TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit (at_ms);
CREATE INDEX audit_by_registration ON audit (registration_key, seq) WHERE registration_key IS NOT NULL;
