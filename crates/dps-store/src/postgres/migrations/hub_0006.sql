-- hub 0006 (PostgreSQL): keys of queue records (cloud-to-device messages, feedback, file upload
-- notifications) that no two nodes hand out twice (decision 0031), starting after every key a
-- single node numbered on its own before.
CREATE SEQUENCE hub_queue_seq;
SELECT setval('hub_queue_seq', GREATEST(
    (SELECT COALESCE(MAX(seq), 0) FROM c2d),
    (SELECT COALESCE(MAX(seq), 0) FROM feedback),
    (SELECT COALESCE(MAX(seq), 0) FROM file_notifications)
) + 1, false);
