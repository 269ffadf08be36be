-- hub 0008 (PostgreSQL): feedback and file upload notifications are read from their tables by
-- whichever node the service reads through, and a device receiving over HTTPS may settle a
-- cloud-to-device message through another node than it received it from (decision 0031): what
-- is handed out is locked in its rows, by a lock token until a time (ms since the epoch), after
-- which it is free again.
ALTER TABLE c2d ADD COLUMN lock_token TEXT, ADD COLUMN locked_until BIGINT;
ALTER TABLE feedback ADD COLUMN lock_token TEXT, ADD COLUMN locked_until BIGINT;
ALTER TABLE file_notifications ADD COLUMN lock_token TEXT, ADD COLUMN locked_until BIGINT;
CREATE INDEX feedback_locks ON feedback (hub, lock_token) WHERE lock_token IS NOT NULL;
CREATE INDEX file_notification_locks ON file_notifications (hub, lock_token) WHERE lock_token IS NOT NULL;
