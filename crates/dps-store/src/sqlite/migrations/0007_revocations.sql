-- Revoked certificates (decision 0040): entered by hand or imported from CRLs, keyed by an id
-- derived from what they name (issuer and serial, or thumbprint).
CREATE TABLE revocations (key TEXT NOT NULL PRIMARY KEY, etag TEXT, doc TEXT NOT NULL);
