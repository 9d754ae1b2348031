"""Drop-in replacements for other circuit breaker libraries, on cbsync's engine.

* :mod:`cbsync.compat.pybreaker` -- pybreaker 1.x's API:
  ``import cbsync.compat.pybreaker as pybreaker`` in place of ``import pybreaker``.

Nothing is imported here: ``import cbsync.compat`` costs nothing, and each
module imports what it needs when it is imported itself.
"""
