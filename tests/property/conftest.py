"""Hypothesis settings for the property tests: deterministic, no deadline, and a budget that keeps each file
to seconds.

The profile is registered here and applied per test with `property_settings` (tests/property/strategies.py)
rather than loaded globally, so it never changes the settings of hypothesis tests elsewhere in the suite
(the API fuzzing runs schemathesis on hypothesis with settings of its own).
"""

from hypothesis import HealthCheck, settings

# derandomize: the examples are a function of each test, so CI sees the same ones every run (a shrunk failure
# is reproduced by running the test again, and print_blob prints the blob that replays it); database=None
# keeps no .hypothesis folder in the checkout.
settings.register_profile(
    "modescope-property",
    derandomize=True,
    deadline=None,
    print_blob=True,
    database=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Exploration outside CI: `MODESCOPE_PROPERTY_PROFILE=modescope-property-deep pytest tests/property` draws ten
# times as many examples from a random seed each run.
settings.register_profile(
    "modescope-property-deep",
    parent=settings.get_profile("modescope-property"),
    derandomize=False,
)
