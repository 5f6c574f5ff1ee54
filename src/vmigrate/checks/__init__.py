"""Pre-flight checks: pure functions from gathered facts to findings."""
