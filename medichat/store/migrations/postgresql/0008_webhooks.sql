-- medichat schema, version 8 (PostgreSQL): notifications for offline users, sent as
-- Standard Webhooks from a durable outbox.
--
-- conversation_employees: the employees who wrote in a conversation (they and its
-- customer are whom a new message there concerns), kept by the message's transaction and
-- filled here from the messages already stored.
--
-- webhook_outbox: one row per event to send, written by the message's transaction.
-- webhook_id is the Standard Webhooks id, the same on every attempt.  pending_key is
-- "<conversation id> <recipient id>" while the row has never been claimed, so that further
-- messages for the same recipient in the same conversation update it (coalescing) instead
-- of adding rows; a claim clears it.  due: the earliest time of the next attempt.
-- lease_owner/lease_until: the process sending it and until when it may; a row whose lease
-- ran out (its process died) is claimed again.  failed: when it was given up (kept for the
-- operator, then pruned); delivered rows are deleted.

CREATE TABLE conversation_employees (
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
INSERT INTO conversation_employees (conversation_id, user_id)
    SELECT DISTINCT conversation_id, user_id FROM messages WHERE user_role = 'employee';

CREATE TABLE webhook_outbox (
    seq               BIGSERIAL        NOT NULL PRIMARY KEY,
    webhook_id        TEXT COLLATE "C" NOT NULL UNIQUE,
    conversation_id   TEXT COLLATE "C" NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    message_id        TEXT COLLATE "C" NOT NULL,
    recipient_user_id TEXT COLLATE "C" NOT NULL,
    recipient_role    TEXT             NOT NULL CHECK (recipient_role IN ('customer', 'employee')),
    occurred          BIGINT           NOT NULL,
    coalesced         INTEGER          NOT NULL DEFAULT 1,
    due               BIGINT           NOT NULL,
    attempts          INTEGER          NOT NULL DEFAULT 0,
    pending_key       TEXT COLLATE "C" UNIQUE,
    lease_owner       TEXT,
    lease_until       BIGINT,
    failed            BIGINT,
    last_error        TEXT
);

-- Claiming: the rows still to send, by due time.
CREATE INDEX webhook_outbox_due ON webhook_outbox (due, seq) WHERE failed IS NULL;
-- Pruning the given-up rows by age.
CREATE INDEX webhook_outbox_failed ON webhook_outbox (failed) WHERE failed IS NOT NULL;
