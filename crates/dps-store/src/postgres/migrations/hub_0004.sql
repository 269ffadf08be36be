-- hub 0004 (PostgreSQL): conditional registry writes for several nodes (decision 0031). A
-- write that expects the stored record to be absent, or to be the one it read (by its etags),
-- runs as one statement whose count of rows written is checked here: anything but one raises
-- SQLSTATE DP001, which fails that write alone (its batch is retried without it) and tells the
-- node that another node changed the record meanwhile.
CREATE FUNCTION dps_expect_one(written BIGINT) RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
    IF written <> 1 THEN
        RAISE EXCEPTION 'the record was changed by another node' USING ERRCODE = 'DP001';
    END IF;
    RETURN written;
END
$$;
