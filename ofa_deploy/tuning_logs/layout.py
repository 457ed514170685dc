"""Where ``tuning_logs/`` is and what the files in its device folders are called.

The one place these names are spelt: the tuner, the profiler, the latency models, compile and the
benches take them from here (tuning_logs/README.md says which command writes which file).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_TUNING_LOGS = Path(__file__).resolve().parents[2] / "tuning_logs"  # the repository's folder (editable install)

# The two files of a tvm.s_tir.meta_schedule JSONDatabase(work_dir=...), in hashing order.
WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
DATABASE_FILES = (WORKLOAD_FILE, RECORD_FILE)
PACKED = ".gz"  # suffix of the shipped (gzipped) form of both database files
FAILED_RUN_SECS = 1e9  # a record at or above this run time is a failed candidate (MetaSchedule writes [1e10])

STATE_FILE = "tune_state.json"  # ofa-deploy tune: settings, tasks done, measured cost per trial
LOCK_FILE = ".tune.lock"  # one tuning run per database (git-ignored)
MODEL_FILE = "latency_model.json"  # ofa-deploy profile: the measured latency model
PARTIAL_FILE = "latency_model.partial.json"  # a profile run's finished timings, for resuming
ESTIMATE_FILE = "estimated_model.json"  # profile --estimate-from: learned roofline efficiencies
IDENTITY_FILE = "identity.json"  # the device everything in the folder describes (identity.py)
COST_MODEL_FILE = "cost_model.tar"  # tune: MetaSchedule's XGBoost cost model, kept across chunks and runs
CHUNK_DIR = ".chunk"  # tune: one chunk's slice of the database, merged back when the chunk ends (git-ignored)



def tuning_logs_dir() -> Path:
    """Where per-target folders live (``OFA_DEPLOY_TUNING_LOGS`` overrides the repository's ``tuning_logs/``)."""
    return Path(os.environ.get("OFA_DEPLOY_TUNING_LOGS", REPO_TUNING_LOGS))
