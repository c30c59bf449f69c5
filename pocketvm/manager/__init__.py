"""Sandboxes under a manager: many VMs with limits, and the REST API on top.

core.py keeps the VMs (one process each, spawn.py), limits.py puts each
under host limits, channel.py reaches inside a guest through its agent,
server.py and openapi.py are `pocket serve`.
"""
