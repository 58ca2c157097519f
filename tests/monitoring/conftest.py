"""Fixtures of the monitoring tier: helm (to render the chart's rules) comes from the packaging tests."""
from tests.packaging.conftest import helm_bin  # noqa: F401  (fixture)
