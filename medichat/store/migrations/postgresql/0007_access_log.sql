-- medichat schema, version 7 (PostgreSQL): the access log (NEN 7513).
--
-- One row per access by an employee (or an operator's export or erasure) to a customer's
-- conversation data: when, who (id, name and role as they were at the time), what
-- (view, list, subscribe, message, read, received, claim, resolve, export, erase, ...),
-- which conversation of which customer, and from which client address.  Never message
-- text.  No foreign keys: the rows outlive the conversations they name, as the law wants
-- them kept after an erasure.  Rows are only ever inserted, and deleted by age past the
-- retention; the trigger refuses any UPDATE.
--
-- seq: strictly increasing (a sequence; a rolled-back insert leaves a gap, which is fine:
-- it only orders rows that share a time and pages).

CREATE TABLE access_log (
    seq             BIGSERIAL        NOT NULL PRIMARY KEY,
    at              BIGINT           NOT NULL,
    employee_id     TEXT COLLATE "C" NOT NULL,
    employee_name   TEXT             NOT NULL,
    role            TEXT             NOT NULL,
    action          TEXT             NOT NULL,
    conversation_id TEXT COLLATE "C",
    customer_id     TEXT COLLATE "C",
    address         TEXT
);

-- A customer's own log, newest first, paged by (at, seq).
CREATE INDEX access_log_customer ON access_log (customer_id, at, seq);
-- Time ranges for the privacy officer, and pruning by age.
CREATE INDEX access_log_at ON access_log (at, seq);

CREATE FUNCTION access_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'access_log is append-only';
END;
$$;

CREATE TRIGGER access_log_append_only BEFORE UPDATE ON access_log
    FOR EACH ROW EXECUTE FUNCTION access_log_append_only();
