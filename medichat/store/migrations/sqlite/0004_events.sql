-- medichat schema, version 4 (SQLite): the durable conversation events (message, read,
-- received), written in the transaction of the change they report, so that every process
-- delivers them in commit order and a client can replay what it missed.
--
-- position: global, gap-free, in commit order (taken from event_counter at the end of the
-- writing transaction).  stream_offset: per conversation, 1, 2, 3, ... (taken from
-- conversations.last_offset).  body: the event's JSON exactly as published.

ALTER TABLE conversations ADD COLUMN last_offset INTEGER NOT NULL DEFAULT 0;

CREATE TABLE event_counter (
    id   INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last INTEGER NOT NULL
);
INSERT INTO event_counter (id, last) VALUES (1, 0);

CREATE TABLE events (
    position        INTEGER NOT NULL PRIMARY KEY,
    conversation_id TEXT    NOT NULL REFERENCES conversations (id),
    stream_offset   INTEGER NOT NULL,
    kind            TEXT    NOT NULL CHECK (kind IN ('message', 'read', 'received')),
    body            TEXT    NOT NULL,
    created         INTEGER NOT NULL,
    UNIQUE (conversation_id, stream_offset)
);

-- Pruning by age.
CREATE INDEX events_created ON events (created);
