-- geats database, schema version 1 (PRAGMA user_version).
-- The running state of a VM is never stored here: it is read from the VM type.
--
-- Comments live here, outside the statements: SQLite stores each CREATE
-- statement's text and parses it again on every connection.
--
-- vms:       definition is the validated JSON; locked is the admin lock;
--            defined = 0 once undefined with its volumes kept.
-- volumes:   record is JSON: what the storage driver recorded.
-- op_locks:  one row per VM while an action runs on it; start_time is field
--            22 of /proc/PID/stat, so a reused pid is not mistaken for the owner.
-- journal:   outcome is 'ok', an errorcode, or NULL while running (or if the
--            process was killed); steps is a JSON array of completed steps;
--            reply is the JSON reply data of a successful action.

CREATE TABLE vms (name TEXT PRIMARY KEY, vm_type TEXT NOT NULL, definition TEXT NOT NULL,
 locked INTEGER NOT NULL DEFAULT 0, defined INTEGER NOT NULL DEFAULT 1, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE volumes (vm TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE, name TEXT NOT NULL,
 position INTEGER NOT NULL, storage_type TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (vm, name));
CREATE TABLE op_locks (vm TEXT PRIMARY KEY, pid INTEGER NOT NULL, start_time INTEGER NOT NULL,
 action TEXT NOT NULL, since TEXT NOT NULL);
CREATE TABLE journal (id INTEGER PRIMARY KEY AUTOINCREMENT, vm TEXT, action TEXT NOT NULL, caller TEXT,
 request_id TEXT, pid INTEGER NOT NULL, started TEXT NOT NULL, ended TEXT, outcome TEXT, changed INTEGER,
 steps TEXT NOT NULL DEFAULT '[]', reply TEXT);
CREATE INDEX journal_request ON journal (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX journal_vm ON journal (vm, id);
