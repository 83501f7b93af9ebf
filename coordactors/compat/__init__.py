"""Compatibility layers: other libraries' APIs served by coordactors.

:mod:`coordactors.compat.tooz` runs code written for OpenStack tooz on
coordactors after changing one import.
"""
