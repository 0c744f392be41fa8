-- geats database, schema version 1 (PRAGMA user_version).
-- The running state of a VM is never stored here: it is read from the VM type.

CREATE TABLE vms (
    name        TEXT PRIMARY KEY,
    vm_type     TEXT NOT NULL,
    definition  TEXT NOT NULL,            -- JSON, as validated
    locked      INTEGER NOT NULL DEFAULT 0, -- the admin lock
    defined     INTEGER NOT NULL DEFAULT 1, -- 0: undefined, volumes kept
    created     TEXT NOT NULL,
    updated     TEXT NOT NULL
);

CREATE TABLE volumes (
    vm           TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    position     INTEGER NOT NULL,
    storage_type TEXT NOT NULL,
    record       TEXT NOT NULL,           -- JSON: what the storage driver recorded
    PRIMARY KEY (vm, name)
);

-- One row per VM while an action runs on it.
CREATE TABLE op_locks (
    vm          TEXT PRIMARY KEY,
    pid         INTEGER NOT NULL,
    start_time  INTEGER NOT NULL,         -- /proc/PID/stat field 22: detects pid reuse
    action      TEXT NOT NULL,
    since       TEXT NOT NULL
);

CREATE TABLE journal (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    vm          TEXT,
    action      TEXT NOT NULL,
    caller      TEXT,
    request_id  TEXT,
    pid         INTEGER NOT NULL,
    started     TEXT NOT NULL,
    ended       TEXT,
    outcome     TEXT,                     -- 'ok', an errorcode, or NULL while running
    changed     INTEGER,
    steps       TEXT NOT NULL DEFAULT '[]', -- JSON array of completed steps
    reply       TEXT                      -- JSON reply data of a successful action
);
CREATE INDEX journal_request ON journal (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX journal_vm ON journal (vm, id);
