-- A database written by radrouter as of commit 8ad7075 (schema version 1), before leases and
-- the prior stage: a study in progress with a running (interrupted) job, a done job, a queued
-- job, a result, a dispatch being sent, a dead dispatch, deliveries, a flag, feedback and the
-- prior index. Made with that commit's JobQueue, PriorIndex and queue_result, then iterdump().
BEGIN TRANSACTION;
CREATE TABLE association_studies (
    association_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    PRIMARY KEY (association_id, study_uid)
);
INSERT INTO "association_studies" VALUES('a1','1.2.826.0.1.3680043.8.498.1');
CREATE TABLE associations (
    id TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,
    called_ae TEXT NOT NULL,
    peer_host TEXT NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL,
    state TEXT NOT NULL CHECK (state IN ('open', 'released', 'aborted', 'interrupted'))
);
INSERT INTO "associations" VALUES('a1','PACS','RADROUTER','127.0.0.1',1764600000.0,1764600001.0,'released');
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    notify_id INTEGER NOT NULL REFERENCES notify_queue (id),
    study_uid TEXT NOT NULL,
    channel TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    last_error TEXT NOT NULL DEFAULT '',
    message_id TEXT NOT NULL DEFAULT '',
    acknowledgement TEXT NOT NULL DEFAULT '',
    UNIQUE (notify_id, channel)
);
INSERT INTO "deliveries" VALUES(1,1,'1.2.826.0.1.3680043.8.498.1','hl7','sending',2,0.0,1764600006.0,NULL,'','','');
INSERT INTO "deliveries" VALUES(2,1,'1.2.826.0.1.3680043.8.498.1','fhir','pending',0,0.0,1764600006.0,NULL,'','','');
CREATE TABLE dispatches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    result_id INTEGER,
    series_uid TEXT,
    destination TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'done', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    last_error TEXT NOT NULL DEFAULT ''
);
INSERT INTO "dispatches" VALUES(1,'1.2.826.0.1.3680043.8.498.1',1,NULL,'pacs','sending',1,0.0,1764600005.0,NULL,'');
INSERT INTO "dispatches" VALUES(2,'1.2.826.0.1.3680043.8.498.1',1,NULL,'archive','dead',6,0.0,1764600005.0,1764600060.0,'connection refused');
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    study_uid TEXT,
    job_id INTEGER,
    detail TEXT NOT NULL DEFAULT ''
);
INSERT INTO "events" VALUES(1,1764600000.0,'router_started',NULL,NULL,'');
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id INTEGER NOT NULL REFERENCES results (id),
    study_uid TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    algorithm_version TEXT NOT NULL,
    verdict TEXT NOT NULL,
    priority TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    agree INTEGER NOT NULL CHECK (agree IN (0, 1)),
    comment TEXT NOT NULL DEFAULT '',
    reader TEXT NOT NULL DEFAULT '',
    at REAL NOT NULL
);
INSERT INTO "feedback" VALUES(1,1,'1.2.826.0.1.3680043.8.498.1','lung_nodule','0.1.0','present','stat','AI: suspected PE',1,'','dr',1764600007.0);
CREATE TABLE flags (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    result_id INTEGER UNIQUE REFERENCES results (id),
    job_id INTEGER,
    algorithm TEXT NOT NULL,
    algorithm_version TEXT NOT NULL,
    priority TEXT NOT NULL CHECK (priority IN ('stat', 'urgent', 'routine')),
    priority_rank INTEGER NOT NULL,
    reason TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('present', 'absent', 'not_assessed', 'failed')),
    raised INTEGER NOT NULL CHECK (raised IN (0, 1)),
    last_image_at REAL NOT NULL,
    flagged_at REAL NOT NULL,
    last_image_to_flag_s REAL NOT NULL,
    CHECK (result_id IS NOT NULL OR (verdict = 'failed' AND job_id IS NOT NULL))
);
INSERT INTO "flags" VALUES(1,'1.2.826.0.1.3680043.8.498.1',1,1,'lung_nodule','0.1.0','stat',0,'AI: suspected PE','present',1,1764600001.0,1764600006.0,5.0);
CREATE TABLE instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    received_at REAL NOT NULL,
    association_id TEXT,
    calling_ae TEXT NOT NULL DEFAULT '',
    called_ae TEXT NOT NULL DEFAULT '',
    instance_number INTEGER,
    acquisition_number INTEGER,
    images_in_acquisition INTEGER,
    number_of_frames INTEGER,
    orientation TEXT,
    slice_position REAL
);
INSERT INTO "instances" VALUES('1.2.826.0.1.3680043.8.498.1.1.1','1.2.826.0.1.3680043.8.498.1.1','1.2.826.0.1.3680043.8.498.1','1.2.840.10008.5.1.4.1.1.2','1.2.840.10008.1.2.1','/data/spool/1.2.826.0.1.3680043.8.498.1/1.2.826.0.1.3680043.8.498.1.1/1.2.826.0.1.3680043.8.498.1.1.1.dcm',1000,'0000000000000000000000000000000000000000000000000000000000000000',1764600000.0,'a1','PACS','RADROUTER',1,NULL,NULL,NULL,NULL,NULL);
INSERT INTO "instances" VALUES('1.2.826.0.1.3680043.8.498.1.1.2','1.2.826.0.1.3680043.8.498.1.1','1.2.826.0.1.3680043.8.498.1','1.2.840.10008.5.1.4.1.1.2','1.2.840.10008.1.2.1','/data/spool/1.2.826.0.1.3680043.8.498.1/1.2.826.0.1.3680043.8.498.1.1/1.2.826.0.1.3680043.8.498.1.1.2.dcm',1000,'0000000000000000000000000000000000000000000000000000000000000000',1764600000.0,'a1','PACS','RADROUTER',2,NULL,NULL,NULL,NULL,NULL);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_revision INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    priority TEXT NOT NULL,
    priority_rank INTEGER NOT NULL,
    send_to TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'superseded')),
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    not_before REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL DEFAULT '',
    model_seconds REAL,
    device TEXT NOT NULL DEFAULT ''
);
INSERT INTO "jobs" VALUES(1,'1.2.826.0.1.3680043.8.498.1','1.2.826.0.1.3680043.8.498.1.1',1,'lung_nodule','chest','routine',2,'["pacs"]','done',1,2,0.0,1.79620497854141020774e+09,1.79620497854186177253e+09,1.79620497854196834557e+09,'','present',1.5,'cpu');
INSERT INTO "jobs" VALUES(2,'1.2.826.0.1.3680043.8.498.1','1.2.826.0.1.3680043.8.498.1.1',1,'pe','chest','stat',0,'["pacs"]','running',1,2,0.0,1.79620497854149723058e+09,1.79620497854159498216e+09,NULL,'','',NULL,'');
INSERT INTO "jobs" VALUES(3,'1.2.826.0.1.3680043.8.498.1','1.2.826.0.1.3680043.8.498.1.1',1,'fracture','chest','routine',2,'["pacs"]','queued',0,2,0.0,1.79620497854152727122e+09,NULL,NULL,'','',NULL,'');
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('schema_version','1');
CREATE TABLE notify_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    result_id INTEGER UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    created_at REAL NOT NULL,
    finished_at REAL
);
INSERT INTO "notify_queue" VALUES(1,'1.2.826.0.1.3680043.8.498.1',1,1,'done',1.79620497854227232931e+09,1764600006.0);
CREATE TABLE prior_index (
    study_uid TEXT PRIMARY KEY,
    patient_key TEXT NOT NULL,
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL
);
INSERT INTO "prior_index" VALUES('1.2.826.0.1.3680043.8.498.1','kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk','20261201','101010');
CREATE TABLE result_objects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id INTEGER NOT NULL REFERENCES results (id),
    kind TEXT NOT NULL CHECK (kind IN ('sr', 'seg', 'kos')),
    sop_class_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    series_number INTEGER NOT NULL,
    path TEXT NOT NULL
);
INSERT INTO "result_objects" VALUES(1,1,'sr','1.2.840.10008.5.1.4.1.1.88.34','1.2.826.0.1.3680043.8.498.1.9','1.2.826.0.1.3680043.8.498.1.9.1',9001,'/data/results/sr.dcm');
CREATE TABLE results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL REFERENCES jobs (id),
    study_uid TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    algorithm_version TEXT NOT NULL,
    version_number INTEGER NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    verdict TEXT NOT NULL,
    finding_count INTEGER NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    UNIQUE (study_uid, algorithm, version_number)
);
INSERT INTO "results" VALUES(1,1,'1.2.826.0.1.3680043.8.498.1','lung_nodule','0.1.0',1,'1.2.826.0.1.3680043.8.498.1.9','1.2.826.0.1.3680043.8.498.1.9.1','1.2.840.10008.5.1.4.1.1.88.34','/data/results/sr.dcm','present',1,'{"outcome": {}}',1764600005.0);
CREATE TABLE retrieved_priors (
    study_uid TEXT PRIMARY KEY,
    requested_at REAL NOT NULL,
    for_study_uid TEXT NOT NULL
);
CREATE TABLE series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies (study_uid),
    modality TEXT NOT NULL DEFAULT '',
    series_description TEXT NOT NULL DEFAULT '',
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    instance_count INTEGER NOT NULL DEFAULT 0,
    routed_revision INTEGER NOT NULL DEFAULT 0,
    routed_at REAL,
    rule_names TEXT NOT NULL DEFAULT '',
    route_explanation TEXT NOT NULL DEFAULT ''
);
INSERT INTO "series" VALUES('1.2.826.0.1.3680043.8.498.1.1','1.2.826.0.1.3680043.8.498.1','CT','',1764600000.0,1764600001.0,2,1,1764600002.0,'chest','');
CREATE TABLE studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 1,
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    completed_at REAL,
    completion_reason TEXT,
    finished_at REAL,
    accession_number_hash TEXT
);
INSERT INTO "studies" VALUES('1.2.826.0.1.3680043.8.498.1','processing',1,1764600000.0,1764600001.0,1764600002.0,'released',NULL,NULL);
CREATE INDEX studies_state ON studies (state);
CREATE INDEX series_study ON series (study_uid);
CREATE INDEX instances_series ON instances (series_uid);
CREATE INDEX instances_study ON instances (study_uid);
CREATE INDEX association_studies_study ON association_studies (study_uid);
CREATE INDEX jobs_claim ON jobs (state, priority_rank, created_at);
CREATE INDEX jobs_study ON jobs (study_uid);
CREATE INDEX dispatches_claim ON dispatches (state, not_before);
CREATE INDEX events_study ON events (study_uid);
CREATE INDEX result_objects_result ON result_objects (result_id);
CREATE INDEX notify_queue_state ON notify_queue (state, id);
CREATE INDEX deliveries_claim ON deliveries (state, not_before);
CREATE INDEX flags_study ON flags (study_uid, algorithm);
CREATE UNIQUE INDEX flags_failed_job ON flags (job_id) WHERE result_id IS NULL;
CREATE INDEX feedback_result ON feedback (result_id);
CREATE TRIGGER feedback_is_append_only_update BEFORE UPDATE ON feedback
BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;
CREATE TRIGGER feedback_is_append_only_delete BEFORE DELETE ON feedback
BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;
CREATE INDEX prior_index_patient ON prior_index (patient_key);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('jobs',3);
INSERT INTO "sqlite_sequence" VALUES('results',1);
INSERT INTO "sqlite_sequence" VALUES('result_objects',1);
INSERT INTO "sqlite_sequence" VALUES('dispatches',2);
INSERT INTO "sqlite_sequence" VALUES('notify_queue',1);
INSERT INTO "sqlite_sequence" VALUES('deliveries',2);
INSERT INTO "sqlite_sequence" VALUES('flags',1);
INSERT INTO "sqlite_sequence" VALUES('feedback',1);
INSERT INTO "sqlite_sequence" VALUES('events',1);
COMMIT;
