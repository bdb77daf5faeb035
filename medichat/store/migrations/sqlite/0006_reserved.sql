-- Reserved: migration 0006 belongs to the triage change (conversation status and
-- assignment), developed on another branch.  This placeholder keeps the numbering without
-- gaps until that change lands; it is replaced by it at merge and changes nothing.
SELECT 1;
