-- medichat schema, version 8 (SQLite): notifications for offline users, sent as Standard
-- Webhooks from a durable outbox (see the PostgreSQL migration of the same number for the
-- columns).

CREATE TABLE conversation_employees (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
INSERT INTO conversation_employees (conversation_id, user_id)
    SELECT DISTINCT conversation_id, user_id FROM messages WHERE user_role = 'employee';

CREATE TABLE webhook_outbox (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id        TEXT    NOT NULL UNIQUE,
    conversation_id   TEXT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    message_id        TEXT    NOT NULL,
    recipient_user_id TEXT    NOT NULL,
    recipient_role    TEXT    NOT NULL CHECK (recipient_role IN ('customer', 'employee')),
    occurred          INTEGER NOT NULL,
    coalesced         INTEGER NOT NULL DEFAULT 1,
    due               INTEGER NOT NULL,
    attempts          INTEGER NOT NULL DEFAULT 0,
    pending_key       TEXT    UNIQUE,
    lease_owner       TEXT,
    lease_until       INTEGER,
    failed            INTEGER,
    last_error        TEXT
);

-- Claiming: the rows still to send, by due time.
CREATE INDEX webhook_outbox_due ON webhook_outbox (due, seq) WHERE failed IS NULL;
-- Pruning the given-up rows by age.
CREATE INDEX webhook_outbox_failed ON webhook_outbox (failed) WHERE failed IS NOT NULL;
