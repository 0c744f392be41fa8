-- geats database: the migration that adds intent and events (issue 14).
--
-- vms.desired: 'running' or 'stopped', the intent of the last successful
--            start/reboot/stop/shutdown (define of a new VM: 'stopped');
--            NULL when no intent was ever recorded (a VM from version 1).
-- vms.drift: the drift ('down_unexpected' or 'up_unexpected') a read already
--            reported with an event, NULL when none is outstanding; cleared
--            when a read sees the VM healthy again or an intent is recorded.
-- events:    the event feed; seq is the rowid, and pruning (by count and age,
--            `[events]` in the config, when an event is appended) never
--            removes the newest event, so a seq is never given twice without
--            AUTOINCREMENT (whose sqlite_sequence table every connection would
--            parse); time RFC 3339 UTC; body is the rest of the event as JSON
--            (kind, ok, errorcode, caller, request_id, detail): every column
--            is parsed by every connection, and only seq, time and vm are
--            queried. No index besides the seq: the feed reads by seq, and
--            only a drift write looks up a VM's recent events.

ALTER TABLE vms ADD COLUMN desired TEXT;
ALTER TABLE vms ADD COLUMN drift TEXT;
CREATE TABLE events (seq INTEGER PRIMARY KEY, time TEXT NOT NULL, vm TEXT, body TEXT NOT NULL);
