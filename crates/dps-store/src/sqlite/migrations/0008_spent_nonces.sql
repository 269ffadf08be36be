-- The nonces of single-use tokens already spent (the portal's one-time sign-in links), so that
-- a link stays spent across restarts. A row lives as long as its token could (15 minutes), then
-- is dropped by the next spend.
CREATE TABLE spent_nonces (nonce TEXT NOT NULL PRIMARY KEY, expires INTEGER NOT NULL);
CREATE INDEX spent_nonces_by_expiry ON spent_nonces (expires);
