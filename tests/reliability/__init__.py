"""The fault-injection suite: scenarios shared by the CI tests and scripts/soak.py."""
