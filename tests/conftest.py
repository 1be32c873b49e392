"""Test-session configuration shared by every test module."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# The machine is shared and noisy: no per-example deadline, and no failure when the first draw
# is slow (Hypothesis builds its Unicode tables on first use).
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("default"),
    max_examples=300,
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")
