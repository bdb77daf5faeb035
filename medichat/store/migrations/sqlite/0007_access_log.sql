-- medichat schema, version 7 (sqlite): the access log (NEN 7513).
--
-- One row per access by an employee (or an operator's export or erasure) to a customer's
-- conversation data: when, who (id, name and role as they were at the time), what
-- (view, list, subscribe, message, read, received, claim, resolve, export, erase, ...),
-- which conversation of which customer, and from which client address.  Never message
-- text.  No foreign keys: the rows outlive the conversations they name, as the law wants
-- them kept after an erasure.  Rows are only ever inserted, and deleted by age past the
-- retention; the trigger refuses any UPDATE.
--
-- seq: strictly increasing, never reused (AUTOINCREMENT); with at, it orders and pages.

CREATE TABLE access_log (
    seq             INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    at              INTEGER NOT NULL,
    employee_id     TEXT    NOT NULL,
    employee_name   TEXT    NOT NULL,
    role            TEXT    NOT NULL,
    action          TEXT    NOT NULL,
    conversation_id TEXT,
    customer_id     TEXT,
    address         TEXT
);

-- A customer's own log, newest first, paged by (at, seq).
CREATE INDEX access_log_customer ON access_log (customer_id, at, seq);
-- Time ranges for the privacy officer, and pruning by age.
CREATE INDEX access_log_at ON access_log (at, seq);

CREATE TRIGGER access_log_append_only BEFORE UPDATE ON access_log
BEGIN
    SELECT RAISE(ABORT, 'access_log is append-only');
END;
