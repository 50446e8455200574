-- An audit store written by the first schema (audit/store.py before per-class figures, Wilson
-- intervals and the degenerate flag), dumped with sqlite3's iterdump: run 1 a one-class model
-- (answers "a" to all eight images), run 2 a trained model, run 3 a failed run.
BEGIN TRANSACTION;
CREATE TABLE audit_points (
	run_id INTEGER NOT NULL, 
	epsilon VARCHAR(32) NOT NULL, 
	epsilon_value FLOAT NOT NULL, 
	robust_accuracy FLOAT NOT NULL, 
	balanced_robust_accuracy FLOAT NOT NULL, 
	per_class JSON NOT NULL, 
	attacked INTEGER NOT NULL, 
	fooled INTEGER NOT NULL, 
	noise_robust_accuracy FLOAT, 
	PRIMARY KEY (run_id, epsilon), 
	FOREIGN KEY(run_id) REFERENCES audit_runs (id) ON DELETE CASCADE
);
INSERT INTO "audit_points" VALUES(1,'0',0.0,0.5,3.33333333333333314829e-01,'{"a": 1.0, "b": 0.0, "c": 0.0}',4,0,0.5);
INSERT INTO "audit_points" VALUES(1,'0.01',0.01,0.5,3.33333333333333314829e-01,'{"a": 1.0, "b": 0.0, "c": 0.0}',4,0,0.5);
INSERT INTO "audit_points" VALUES(1,'0.02',0.02,0.5,3.33333333333333314829e-01,'{"a": 1.0, "b": 0.0, "c": 0.0}',4,0,0.5);
INSERT INTO "audit_points" VALUES(2,'0',0.0,0.75,0.75,'{"a": 0.75}',4,1,0.75);
INSERT INTO "audit_points" VALUES(2,'0.01',0.01,0.5,0.5,'{"a": 0.5}',4,1,0.5);
INSERT INTO "audit_points" VALUES(2,'0.02',0.02,0.25,0.25,'{"a": 0.25}',4,1,0.25);
CREATE TABLE audit_runs (
	id INTEGER NOT NULL, 
	model VARCHAR(200) NOT NULL, 
	version INTEGER NOT NULL, 
	task VARCHAR(100) NOT NULL, 
	backbone VARCHAR(100) NOT NULL, 
	attention BOOLEAN NOT NULL, 
	backend VARCHAR(50) NOT NULL, 
	attack VARCHAR(50) NOT NULL, 
	status VARCHAR(20) NOT NULL, 
	"trigger" VARCHAR(50) NOT NULL, 
	owner VARCHAR(300) NOT NULL, 
	started_at FLOAT NOT NULL, 
	finished_at FLOAT, 
	duration_seconds FLOAT, 
	error TEXT, 
	config JSON NOT NULL, 
	audit_set VARCHAR(64), 
	clean_accuracy FLOAT, 
	balanced_clean_accuracy FLOAT, 
	robustness_score FLOAT, 
	sanity_passed BOOLEAN, 
	artefacts TEXT, 
	PRIMARY KEY (id), 
	FOREIGN KEY(audit_set) REFERENCES audit_sets (fingerprint)
);
INSERT INTO "audit_runs" VALUES(1,'demo-resnet50-baseline',1,'demo','resnet50',0,'embedded','linf_pgd','succeeded','manual','audit-worker-0:4242',1767225600.0,1767225600.0,2.0,NULL,'{"dataset": "synthetic:240", "samples": 8, "seed": 0, "attack": "linf_pgd", "epsilons": ["0", "0.01", "0.02"], "steps": 20, "restarts": 1}','eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee',0.5,3.33333333333333314829e-01,0.5,1,NULL);
INSERT INTO "audit_runs" VALUES(2,'demo-resnet50-attention',1,'demo','resnet50',1,'embedded','linf_pgd','succeeded','manual','audit-worker-0:4242',1767225600.0,1767225600.0,1.5,NULL,'{"dataset": "synthetic:240", "samples": 8, "seed": 0, "attack": "linf_pgd", "epsilons": ["0", "0.01", "0.02"], "steps": 20, "restarts": 1}','eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee',0.75,0.75,0.375,1,NULL);
INSERT INTO "audit_runs" VALUES(3,'demo-resnet50-attention',2,'demo','resnet50',1,'embedded','linf_pgd','failed','manual','audit-worker-0:4242',1767225600.0,1767225600.0,NULL,'RuntimeError: boom','{"dataset": "synthetic:240", "samples": 8, "seed": 0, "attack": "linf_pgd", "epsilons": ["0", "0.01", "0.02"], "steps": 20, "restarts": 1}',NULL,NULL,NULL,NULL,NULL,NULL);
CREATE TABLE audit_samples (
	run_id INTEGER NOT NULL, 
	sample_id VARCHAR(500) NOT NULL, 
	label INTEGER NOT NULL, 
	clean_class INTEGER NOT NULL, 
	fooled_at VARCHAR(32), 
	adversarial_class INTEGER, 
	PRIMARY KEY (run_id, sample_id), 
	FOREIGN KEY(run_id) REFERENCES audit_runs (id) ON DELETE CASCADE
);
INSERT INTO "audit_samples" VALUES(1,'i0',0,0,NULL,NULL);
INSERT INTO "audit_samples" VALUES(1,'i1',0,0,NULL,NULL);
INSERT INTO "audit_samples" VALUES(1,'i2',0,0,NULL,NULL);
INSERT INTO "audit_samples" VALUES(1,'i3',0,0,NULL,NULL);
INSERT INTO "audit_samples" VALUES(1,'i4',1,0,'0',NULL);
INSERT INTO "audit_samples" VALUES(1,'i5',1,0,'0',NULL);
INSERT INTO "audit_samples" VALUES(1,'i6',2,0,'0',NULL);
INSERT INTO "audit_samples" VALUES(1,'i7',2,0,'0',NULL);
INSERT INTO "audit_samples" VALUES(2,'i0',0,0,'0.01',1);
INSERT INTO "audit_samples" VALUES(2,'i1',0,0,NULL,NULL);
INSERT INTO "audit_samples" VALUES(2,'i2',0,0,NULL,NULL);
INSERT INTO "audit_samples" VALUES(2,'i3',0,0,NULL,NULL);
INSERT INTO "audit_samples" VALUES(2,'i4',1,1,NULL,NULL);
INSERT INTO "audit_samples" VALUES(2,'i5',1,1,NULL,NULL);
INSERT INTO "audit_samples" VALUES(2,'i6',2,2,NULL,NULL);
INSERT INTO "audit_samples" VALUES(2,'i7',2,2,NULL,NULL);
CREATE TABLE audit_sanity (
	run_id INTEGER NOT NULL, 
	"check" VARCHAR(100) NOT NULL, 
	passed BOOLEAN NOT NULL, 
	detail TEXT NOT NULL, 
	PRIMARY KEY (run_id, "check"), 
	FOREIGN KEY(run_id) REFERENCES audit_runs (id) ON DELETE CASCADE
);
INSERT INTO "audit_sanity" VALUES(1,'gradients_nonzero',1,'0 of 4 images have an all-zero or non-finite input gradient');
INSERT INTO "audit_sanity" VALUES(2,'gradients_nonzero',1,'detail');
INSERT INTO "audit_sanity" VALUES(2,'robust_accuracy_monotone',1,'ok');
CREATE TABLE audit_sets (
	fingerprint VARCHAR(64) NOT NULL, 
	dataset TEXT NOT NULL, 
	dataset_fingerprint VARCHAR(64) NOT NULL, 
	seed INTEGER NOT NULL, 
	image_size INTEGER NOT NULL, 
	sample_ids JSON NOT NULL, 
	labels JSON NOT NULL, 
	class_names JSON NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (fingerprint)
);
INSERT INTO "audit_sets" VALUES('eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee','synthetic:240','dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd',0,64,'["i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7"]','[0, 0, 0, 0, 1, 1, 2, 2]','["a", "b", "c"]',1767225600.0);
CREATE INDEX ix_audit_runs_model ON audit_runs (model);
CREATE INDEX ix_audit_runs_status ON audit_runs (status);
COMMIT;
