-- medichat schema, version 4 (PostgreSQL): the durable conversation events (message, read,
-- received), written in the transaction of the change they report, so that every process
-- delivers them in commit order and a client can replay what it missed.
--
-- position: global, gap-free, in commit order.  It comes from the one row of
-- event_counter, incremented by the last statements of the writing transaction: the row
-- lock serialises only the tail of those transactions, so they commit in position order,
-- and a rollback undoes its increment (a sequence would leave gaps and hand out numbers
-- out of commit order).  stream_offset: per conversation, 1, 2, 3, ..., from
-- conversations.last_offset, whose row the writing transaction holds locked anyway.
-- body: the event's JSON exactly as published, of any size (never sent in a NOTIFY).

ALTER TABLE conversations ADD COLUMN last_offset BIGINT NOT NULL DEFAULT 0;

CREATE TABLE event_counter (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last BIGINT  NOT NULL
);
INSERT INTO event_counter (id, last) VALUES (1, 0);

CREATE TABLE events (
    position        BIGINT           NOT NULL PRIMARY KEY,
    conversation_id TEXT COLLATE "C" NOT NULL REFERENCES conversations (id),
    stream_offset   BIGINT           NOT NULL,
    kind            TEXT             NOT NULL CHECK (kind IN ('message', 'read', 'received')),
    body            TEXT             NOT NULL,
    created         BIGINT           NOT NULL,
    UNIQUE (conversation_id, stream_offset)
);

-- Pruning by age.
CREATE INDEX events_created ON events (created);
