-- geats database, schema version 2: snapshots (issue 18).
--
-- snapshots: one row per snapshot of a VM (of all its volumes, under one
--            name); created is RFC 3339 UTC; size_bytes the sum of what the
--            drivers reported, NULL when one of them does not know; volumes
--            the JSON array of the volume names it covers.
--            Deleted with the VM's row when it is forgotten (deprovision).

CREATE TABLE snapshots (vm TEXT NOT NULL, name TEXT NOT NULL, created TEXT NOT NULL,
 size_bytes INTEGER, volumes TEXT NOT NULL DEFAULT '[]', PRIMARY KEY (vm, name));
