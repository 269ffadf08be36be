-- store 0007 (PostgreSQL): the nonces of single-use tokens already spent (the portal's one-time
-- sign-in links), so that a link opened on one node is refused on every other. A row lives as
-- long as its token could (15 minutes), then is dropped by the next spend. Logged, unlike the
-- TPM challenges: a spend lost to a crash would let the link be opened again.
CREATE TABLE spent_nonces (
    nonce   TEXT COLLATE "C" PRIMARY KEY,
    -- Unix milliseconds.
    expires BIGINT NOT NULL
);
CREATE INDEX spent_nonces_by_expiry ON spent_nonces (expires);
