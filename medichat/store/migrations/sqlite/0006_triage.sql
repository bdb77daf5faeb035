-- medichat schema, version 6 (SQLite): triage and assignment, and the employees' live
-- feed of conversations.
--
-- status: 'open' (new ones, and any a customer writes to) or 'resolved'.  assignee_id,
-- assignee_name: the employee who claimed the conversation, '' when nobody has (never
-- NULL, so that an RSQL assigneeId!=... keeps the unassigned ones, as it reads).
-- last_activity: the created time of its newest message, or its own created time before
-- the first; only moves forward.  Existing rows get the values they would have had.
--
-- feed_events: the durable events of /v1/topic/conversations (conversationCreated,
-- conversationUpdated), written in the transaction of the change they report.  Their
-- positions come from the same event_counter as the conversation events', so the event
-- feed reads both tables as one gap-free sequence in commit order.  They are not part of
-- any conversation's stream (no stream_offset), so a replay never sees them.

ALTER TABLE conversations ADD COLUMN status TEXT NOT NULL DEFAULT 'open'
    CHECK (status IN ('open', 'resolved'));
ALTER TABLE conversations ADD COLUMN assignee_id TEXT NOT NULL DEFAULT '';
ALTER TABLE conversations ADD COLUMN assignee_name TEXT NOT NULL DEFAULT '';
ALTER TABLE conversations ADD COLUMN last_activity INTEGER NOT NULL DEFAULT 0;

UPDATE conversations SET last_activity = COALESCE(
    (SELECT max(m.created) FROM messages m WHERE m.conversation_id = conversations.id),
    conversations.created
);

-- The lists ordered by last activity (order=-lastActivity), everyone's and a customer's.
CREATE INDEX conversations_last_activity ON conversations (last_activity, id);
CREATE INDEX conversations_customer_last_activity
    ON conversations (customer_id, last_activity, id);

CREATE TABLE feed_events (
    position        INTEGER NOT NULL PRIMARY KEY,
    conversation_id TEXT    NOT NULL REFERENCES conversations (id),
    kind            TEXT    NOT NULL
        CHECK (kind IN ('conversationCreated', 'conversationUpdated')),
    body            TEXT    NOT NULL,
    created         INTEGER NOT NULL
);

-- Pruning by age, with the conversation events.
CREATE INDEX feed_events_created ON feed_events (created);
