-- medichat schema, version 5 (sqlite): presence shared by every process on one database.
--
-- Each process is a node with a heartbeat; what it knows of its own STOMP sessions is stored
-- under its id, so that the others can remove it when the node stops beating.  The two
-- counter tables (presence_members, presence_employees) and the one-row presence_online are
-- kept by the same transactions that add and remove the per-node rows: their row locks
-- decide, once for the whole cluster, whether a subscription was a user's first or last one
-- in a conversation and whether the number of online employees changed.

CREATE TABLE nodes (
    id        TEXT   NOT NULL PRIMARY KEY,
    started   BIGINT NOT NULL,
    heartbeat BIGINT NOT NULL
);

-- Checked at commit, so that removing a dead node may delete its rows in any order.
CREATE TABLE presence_sessions (
    node_id     TEXT    NOT NULL REFERENCES nodes (id) DEFERRABLE INITIALLY DEFERRED,
    session_key TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    employee    INTEGER NOT NULL,
    PRIMARY KEY (node_id, session_key)
);

-- position: the order in which the node's sessions joined, so that leaving them all is
-- published in that order.
CREATE TABLE presence_subscriptions (
    node_id         TEXT    NOT NULL,
    session_key     TEXT    NOT NULL,
    conversation_id TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    subscriptions   INTEGER NOT NULL,
    position        BIGINT  NOT NULL,
    PRIMARY KEY (node_id, session_key, conversation_id)
);

CREATE TABLE presence_members (
    conversation_id TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    subscriptions   INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

CREATE TABLE presence_employees (
    user_id  TEXT    NOT NULL PRIMARY KEY,
    sessions INTEGER NOT NULL
);

CREATE TABLE presence_online (
    id     INTEGER NOT NULL PRIMARY KEY,
    online INTEGER NOT NULL
);

INSERT INTO presence_online (id, online) VALUES (1, 0);
