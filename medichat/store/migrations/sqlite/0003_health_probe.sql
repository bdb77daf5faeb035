-- medichat schema, version 3 (SQLite): one row that the health check rewrites, so that /health
-- finds out whether the store can still write (a full disk, a read-only mount or a
-- read-only replica answer reads but not writes).

CREATE TABLE health_probe (
    id      INTEGER NOT NULL PRIMARY KEY,
    checked BIGINT  NOT NULL
);
