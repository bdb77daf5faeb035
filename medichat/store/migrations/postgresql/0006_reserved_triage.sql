-- Placeholder on the webhooks branch for migration 0006, which the lead assigned to the
-- triage work; it changes nothing.  Delete this file when merging that branch's 0006.
SELECT 1;
