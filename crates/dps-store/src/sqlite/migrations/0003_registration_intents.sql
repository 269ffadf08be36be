-- 0003: registration intents (decision 0009).
--
-- A row is written before a registration writes its device identity to the hub, and deleted in
-- the transaction that commits the registration record. Rows still here at start-up are the
-- registrations a crash interrupted; the engine finishes them. `key` is the operation id (kept as
-- the server generated it), `doc` the whole `RegistrationIntent` as JSON. The table is almost
-- always empty, and rows live for one registration: WITHOUT ROWID, one b-tree.
CREATE TABLE registration_intents (
    key TEXT NOT NULL PRIMARY KEY,
    doc TEXT NOT NULL
) WITHOUT ROWID;
