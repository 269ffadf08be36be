-- CA certificates registered with the service (proof of possession), referenced by caReferences.
CREATE TABLE certificates (key TEXT NOT NULL PRIMARY KEY, etag TEXT, doc TEXT NOT NULL);
