-- The audit trail (decision 0036): every registration attempt and every change through the
-- service and hub APIs, in the order written. `seq` never goes back (AUTOINCREMENT), so a
-- page continues after the previous page's last entry even while old ones are pruned.
CREATE TABLE audit (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms            INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    registration_key TEXT,
    outcome          TEXT NOT NULL,
    doc              TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit (at_ms);
CREATE INDEX audit_by_registration ON audit (registration_key, seq) WHERE registration_key IS NOT NULL;
