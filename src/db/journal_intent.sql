-- geats database, schema version 3: crash convergence (issue 11).
--
-- journal.intent:  JSON written with the entry, before the first side
--                  effect: what the action set out to do (define and
--                  provision: the definition and what existed before), so
--                  the next request can finish or undo it.
-- journal.pending: the step being run now, written before its side effect
--                  and cleared after it; with steps it says exactly how far
--                  a killed action got.
-- journal_open:    the entries that have not ended (running or killed),
--                  found without a scan of the whole journal.

ALTER TABLE journal ADD COLUMN intent TEXT;
ALTER TABLE journal ADD COLUMN pending TEXT;
CREATE INDEX journal_open ON journal (vm) WHERE ended IS NULL;
