"""The fault-injection suite (issue 5): scenarios shared by the CI tests and scripts/soak.py."""
