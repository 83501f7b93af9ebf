"""Helpers for testing applications (and coordactors itself).

* :class:`EventRecorder` -- a subscriber that records events and lets a test
  wait for them with a deadline, instead of sleeping.
* ``memory://<namespace>`` -- the embedded backend: a fresh namespace per test
  gives each test its own registry.
"""

from coordactors.testing.recorder import EventRecorder

__all__ = ["EventRecorder"]
