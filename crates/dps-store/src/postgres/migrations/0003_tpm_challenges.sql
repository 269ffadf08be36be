-- store 0003 (PostgreSQL): outstanding TPM challenges, so that a device's signed registration
-- may reach another node than its challenge request did (decision 0031). UNLOGGED: they live
-- minutes, and one lost to a crash (or a failover: unlogged tables are not replicated) is
-- asked for again by the device. A row is spent by the one node whose UPDATE marks it; a spent
-- one still authenticates the device's polls until it expires.
CREATE UNLOGGED TABLE tpm_challenges (
    id               BIGSERIAL PRIMARY KEY,
    registration_key TEXT COLLATE "C" NOT NULL,
    key              BYTEA NOT NULL,
    ek               BYTEA NOT NULL,
    srk              BYTEA NOT NULL,
    -- Unix milliseconds.
    expires          BIGINT NOT NULL,
    spent            BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX tpm_challenges_by_registration ON tpm_challenges (registration_key, id);
CREATE INDEX tpm_challenges_by_expiry ON tpm_challenges (expires);
