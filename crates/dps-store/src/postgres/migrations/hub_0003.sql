-- hub 0003 (PostgreSQL): a device's status without a subtransaction. The function of hub 0001
-- caught a document that is not JSON in an EXCEPTION block, and PL/pgSQL opens a
-- subtransaction for every call of a block with an EXCEPTION clause: two per device write,
-- on the registration path. The hub writes only documents it serialised itself, so a plain
-- SQL function (inlinable, no subtransaction) is enough; a document that is not JSON would now
-- fail its write instead of being counted under ''.
CREATE OR REPLACE FUNCTION dps_device_status(doc TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(doc::jsonb ->> 'status', '')
$$;
