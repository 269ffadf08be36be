-- Credential policies: the CAs that issue certificates to devices sending a CSR at registration.
-- The document holds the issuing CA's private key (PEM): the database is as secret as the keys
-- of the enrollments it already holds.
CREATE TABLE credential_policies (key TEXT NOT NULL PRIMARY KEY, etag TEXT, doc TEXT NOT NULL);
