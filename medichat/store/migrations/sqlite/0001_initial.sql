-- medichat schema, version 1 (SQLite).
--
-- Times are integer microseconds since the epoch (UTC).  Ids are text (UUIDs, or the
-- identity provider's subject for customers).  Booleans are 0/1.

CREATE TABLE conversations (
    id            TEXT    NOT NULL PRIMARY KEY,
    created       INTEGER NOT NULL,
    customer_id   TEXT    NOT NULL,
    customer_name TEXT    NOT NULL
);

-- A customer's list and the employees' list, both ordered and paged by (created, id).
CREATE INDEX conversations_customer_created ON conversations (customer_id, created, id);
CREATE INDEX conversations_created ON conversations (created, id);

-- seq is the rowid: AUTOINCREMENT keeps it strictly increasing, never reused.
CREATE TABLE messages (
    seq             INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    conversation_id TEXT    NOT NULL REFERENCES conversations (id),
    created         INTEGER NOT NULL,
    user_id         TEXT    NOT NULL,
    user_name       TEXT    NOT NULL,
    user_role       TEXT    NOT NULL CHECK (user_role IN ('customer', 'employee')),
    message         TEXT    NOT NULL
);

-- A conversation's history in (created, seq) order, and its created=ge= / =le= ranges.
CREATE INDEX messages_conversation_created ON messages (conversation_id, created, seq);

-- One row per Idempotency-Key a user sent while posting to a conversation.
CREATE TABLE idempotency_keys (
    conversation_id TEXT    NOT NULL REFERENCES conversations (id),
    user_id         TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    message_id      TEXT    NOT NULL REFERENCES messages (id),
    created         INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id, idempotency_key)
);

-- When each user last read, and last received, each conversation.
CREATE TABLE receipts (
    conversation_id TEXT    NOT NULL REFERENCES conversations (id),
    kind            TEXT    NOT NULL CHECK (kind IN ('read', 'received')),
    user_id         TEXT    NOT NULL,
    at              INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, kind, user_id)
);

-- email keeps what was entered; email_lower (computed by medichat) makes it unique
-- regardless of case and is what lookups use.
CREATE TABLE employees (
    id            TEXT    NOT NULL PRIMARY KEY,
    email         TEXT    NOT NULL,
    email_lower   TEXT    NOT NULL UNIQUE,
    name          TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created       INTEGER NOT NULL,
    last_login    INTEGER
);

-- Only a hash of each session token is stored.
CREATE TABLE login_sessions (
    id          TEXT    NOT NULL PRIMARY KEY,
    employee_id TEXT    NOT NULL REFERENCES employees (id) ON DELETE CASCADE,
    token_hash  TEXT    NOT NULL UNIQUE,
    created     INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1))
);
