-- hub 0002 (PostgreSQL): the hubs this database has held, so a node can tell a hub that is new
-- to the service (and gets linked at start) from one another node, or an earlier start, made.
CREATE TABLE hubs (
    hub BIGINT PRIMARY KEY
);
