"""Helpers that start real services for the tests (SoftHSM2, a local AWS-compatible server)."""
