"""Integrations of cbsync with third-party libraries, one module per library."""
