"""Named timing profiles, for the documentation, the soak and the benchmark.

``default`` is the shipped settings: lease_ttl 10, renew_interval 2, stop_timeout 5, the
shortest lease the timing invariants allow with a 2 s renewal and a 5 s stop
(2 * 2 + 5 + 1 <= 10), so a dead node is replaced after about 10 s (see the README's
"Choosing the default" for the soak that found no false failover on a busy machine).
``fast`` is the tightest profile that lets a real Airflow scheduler stop gracefully: a
real one needs 1 to 3 s after SIGTERM (it finishes its loop, stops its executor and its
DAG processor; measured on a busy 2-core machine: Airflow 3.3.2 1.0 to 1.2 s, 2.10.5 1.8
to 2.7 s), so stop_timeout is 4 s, and the timing invariants then ask for a lease of 7 s
(2 * 1 + 4 + 0.7 <= 7). ``lab`` is for stand-in schedulers that exit in milliseconds
(the soak's probe, the test suite's stand-in): with a real scheduler its 1 s stop_timeout
would SIGKILL the scheduler on most planned handoffs.
"""

from __future__ import annotations

PROFILES: dict[str, dict[str, str]] = {
    "default": {},
    "fast": {
        "lease_ttl": "7",
        "renew_interval": "1",
        "stop_timeout": "4",
        "start_timeout": "1.5",
        "cooldown": "60",
    },
    "lab": {
        "lease_ttl": "4",
        "renew_interval": "1",
        "stop_timeout": "1",
        "start_timeout": "1.5",
        "cooldown": "60",
    },
}
DEFAULT_TTL = 10.0


def lease_ttl(profile: str) -> float:
    return float(PROFILES[profile].get("lease_ttl", DEFAULT_TTL))
