-- medichat schema, version 1 (PostgreSQL).
--
-- Times are BIGINT microseconds since the epoch (UTC), never timestamptz, so that they
-- round-trip exactly.  Ids are text (UUIDs, or the identity provider's subject for
-- customers) in the "C" collation, so that they sort bytewise exactly as in SQLite
-- whatever the database's locale, and compare fast.

CREATE TABLE conversations (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    created       BIGINT           NOT NULL,
    customer_id   TEXT COLLATE "C" NOT NULL,
    customer_name TEXT             NOT NULL
);

-- A customer's list and the employees' list, both ordered and paged by (created, id).
CREATE INDEX conversations_customer_created ON conversations (customer_id, created, id);
CREATE INDEX conversations_created ON conversations (created, id);

-- seq comes from a sequence: increasing in insertion order, never reused.
CREATE TABLE messages (
    seq             BIGSERIAL        NOT NULL PRIMARY KEY,
    id              TEXT COLLATE "C" NOT NULL UNIQUE,
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    created         BIGINT           NOT NULL,
    user_id         TEXT COLLATE "C" NOT NULL,
    user_name       TEXT             NOT NULL,
    user_role       TEXT             NOT NULL CHECK (user_role IN ('customer', 'employee')),
    message         TEXT             NOT NULL
);

-- A conversation's history in (created, seq) order, and its created=ge= / =le= ranges.
CREATE INDEX messages_conversation_created ON messages (conversation_id, created, seq);

-- One row per Idempotency-Key a user sent while posting to a conversation.
CREATE TABLE idempotency_keys (
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    user_id         TEXT COLLATE "C" NOT NULL,
    idempotency_key TEXT COLLATE "C" NOT NULL,
    message_id      TEXT COLLATE "C" NOT NULL REFERENCES messages (id),
    created         BIGINT           NOT NULL,
    PRIMARY KEY (conversation_id, user_id, idempotency_key)
);

-- When each user last read, and last received, each conversation.
CREATE TABLE receipts (
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    kind            TEXT             NOT NULL CHECK (kind IN ('read', 'received')),
    user_id         TEXT COLLATE "C" NOT NULL,
    at              BIGINT           NOT NULL,
    PRIMARY KEY (conversation_id, kind, user_id)
);

-- email keeps what was entered; email_lower (computed by medichat, not by the server's
-- locale-dependent lower()) makes it unique regardless of case and is what lookups use.
CREATE TABLE employees (
    id            TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    email         TEXT             NOT NULL,
    email_lower   TEXT COLLATE "C" NOT NULL UNIQUE,
    name          TEXT             NOT NULL,
    password_hash TEXT             NOT NULL,
    disabled      BOOLEAN          NOT NULL DEFAULT FALSE,
    created       BIGINT           NOT NULL,
    last_login    BIGINT
);

-- Only a hash of each session token is stored.
CREATE TABLE login_sessions (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    employee_id TEXT COLLATE "C" NOT NULL REFERENCES employees (id) ON DELETE CASCADE,
    token_hash  TEXT COLLATE "C" NOT NULL UNIQUE,
    created     BIGINT           NOT NULL,
    expires_at  BIGINT           NOT NULL,
    revoked     BOOLEAN          NOT NULL DEFAULT FALSE
);
