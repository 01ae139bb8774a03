BEGIN TRANSACTION;
CREATE TABLE backup_intents (
        job_id      TEXT PRIMARY KEY,
        vm_uuid     TEXT NOT NULL,
        vm_name     TEXT NOT NULL,
        host_uri    TEXT NOT NULL,
        step        TEXT NOT NULL,
        originals   TEXT NOT NULL,          -- JSON {target: original disk path}
        overlays    TEXT NOT NULL DEFAULT '{}',
        point_id    TEXT,
        freeze_token TEXT,
        updated_at  TEXT NOT NULL
    );
INSERT INTO "backup_intents" VALUES('20261129-102158-4f1282','6b0f3c1e-0000-4000-8000-000000000010','old-vm','qemu:///system','started','{"vda": "/var/lib/old.qcow2"}','{}',NULL,NULL,'2026-11-29T10:21:58.973+00:00');
CREATE TABLE hosts (
    uri TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    added_at TEXT NOT NULL
);
INSERT INTO "hosts" VALUES('qemu:///system','local','2026-11-29T10:21:58.971197+00:00');
CREATE TABLE job_phases (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    duration_s REAL,
    bytes INTEGER,
    PRIMARY KEY (job_id, seq)
);
INSERT INTO "job_phases" VALUES('20261129-102158-4f1282',1,'copy','completed','2026-11-29T10:21:58.973296+00:00','2026-11-29T10:21:58.973335+00:00',0.0,NULL);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    vm_uuid TEXT,
    vm_name TEXT,
    host_uri TEXT,
    state TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    ended_at TEXT,
    bytes_total INTEGER NOT NULL DEFAULT 0,
    details_json TEXT NOT NULL DEFAULT '{}',
    error_code TEXT,
    error_message TEXT,
    error_remediation TEXT,
    owner_pid INTEGER,
    owner_start TEXT,
    lock_key TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "jobs" VALUES('20261129-102158-4f1282','backup','6b0f3c1e-0000-4000-8000-000000000010','old-vm','qemu:///system','completed','2026-11-29T10:21:58.972721+00:00','2026-11-29T10:21:58.973137+00:00','2026-11-29T10:21:58.973378+00:00',0,'{}',NULL,NULL,NULL,32407,'5355866f-f54f-494b-93fb-fb74d6a81c69:238467','6b0f3c1e-0000-4000-8000-000000000010',0);
CREATE TABLE policies (
    name        TEXT PRIMARY KEY,
    yaml        TEXT NOT NULL,
    parsed_json TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
INSERT INTO "policies" VALUES('nightly','name: nightly
schedule:
  daily: ''22:00''
  timezone: UTC
retention:
  keep_last: 2
','{"boot_check_every": null, "limits": {"bandwidth_mbps": null, "max_concurrent_jobs": null}, "min_consistency": null, "name": "nightly", "retention": {"keep_daily": 0, "keep_last": 2, "keep_monthly": 0, "keep_weekly": 0, "keep_yearly": 0, "max_age_s": null}, "schedule": {"days": [], "every": 0, "hour": 22, "kind": "daily", "minute": 0, "timezone": "UTC"}}','2026-11-29T10:21:58+00:00','2026-11-29T10:21:58+00:00');
CREATE TABLE protections (
    vm_uuid TEXT PRIMARY KEY,
    policy  TEXT NOT NULL,
    state   TEXT NOT NULL CHECK (state IN ('protected', 'unprotected-retain')),
    since   TEXT NOT NULL,
    vm_name TEXT NOT NULL DEFAULT ''
);
INSERT INTO "protections" VALUES('6b0f3c1e-0000-4000-8000-000000000010','nightly','protected','2026-11-29T10:21:58+00:00','old-vm');
CREATE TABLE registrations (
    vm_uuid       TEXT PRIMARY KEY,
    vm_name       TEXT NOT NULL,
    host_uri      TEXT NOT NULL,
    agent_host    TEXT NOT NULL,
    agent_port    INTEGER NOT NULL,
    ssh_host      TEXT NOT NULL,
    ssh_port      INTEGER NOT NULL,
    ssh_user      TEXT NOT NULL,
    ssh_key       TEXT,
    agent_version TEXT NOT NULL,
    cert_serial   TEXT NOT NULL,
    registered_at TEXT NOT NULL
);
INSERT INTO "registrations" VALUES('6b0f3c1e-0000-4000-8000-000000000010','old-vm','qemu:///system','127.0.0.1',7470,'127.0.0.1',2222,'root',NULL,'0.1.0','1a2b','2026-11-01T00:00:00+00:00');
CREATE TABLE vm_locks (
    vm_uuid TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    acquired_at TEXT NOT NULL
);
CREATE TABLE vms (
    uuid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    host_uri TEXT NOT NULL,
    state TEXT NOT NULL,
    disks_json TEXT NOT NULL DEFAULT '[]',
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    gone INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "vms" VALUES('6b0f3c1e-0000-4000-8000-000000000010','old-vm','qemu:///system','running','[{"target": "vda", "path": "/var/lib/old.qcow2", "format": "qcow2", "virtual_size": null, "allocated": null, "physical": null}]','2026-11-29T10:21:58.971350+00:00','2026-11-29T10:21:58.971350+00:00',0);
CREATE INDEX vms_host ON vms(host_uri);
CREATE INDEX vms_name ON vms(name);
CREATE INDEX jobs_created ON jobs(created_at);
CREATE INDEX jobs_vm ON jobs(vm_uuid);
CREATE INDEX jobs_state ON jobs(state);
CREATE INDEX protections_policy ON protections(policy);
COMMIT;
