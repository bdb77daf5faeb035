-- Placeholder on the webhooks branch for migration 0007, which the lead assigned to the
-- access log; it changes nothing.  Delete this file when merging that branch's 0007.
SELECT 1;
