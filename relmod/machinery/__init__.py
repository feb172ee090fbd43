"""The module machinery: how relmod loads, marks stale and re-executes modules.

A lone process without any broker uses it as much as a connected one, so it lives beside
``client/`` and ``server/``, not inside either.
"""
