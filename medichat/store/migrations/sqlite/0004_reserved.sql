-- medichat schema, version 4 (placeholder): reserved for the events outbox, which is
-- developed on another branch; this file keeps the migrations numbered without gaps until
-- that branch's 0004 replaces it at merge.

SELECT 1;
