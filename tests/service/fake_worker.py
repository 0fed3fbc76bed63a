"""``python tests/service/fake_worker.py DATABASE_URL TRIAL_S``: a worker process with the fake search
(for tests that kill or restart processes)."""

from __future__ import annotations

import signal
import sys

from fakes import make_fake_run_search, tiny_workload

from service.db import Database
from service.settings import Settings
from service.worker import Worker

if __name__ == "__main__":
    url, trial_s = sys.argv[1], float(sys.argv[2])
    settings = Settings(database_url=url, heartbeat_interval_s=0.2, stale_after_s=2.0, poll_interval_s=0.1)
    worker = Worker(Database(url), settings, run_search=make_fake_run_search(trial_s), make_workload=tiny_workload)
    signal.signal(signal.SIGTERM, lambda *_: worker.stop())
    worker.run_forever()
