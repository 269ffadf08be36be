-- store 0005 (PostgreSQL): credential policies, the CAs that issue certificates to devices
-- sending a CSR at registration. The document holds the issuing CA's private key (PEM): the
-- database is as secret as the enrollment keys it already holds.
CREATE TABLE credential_policies (key TEXT COLLATE "C" NOT NULL PRIMARY KEY, etag TEXT, doc TEXT NOT NULL);
