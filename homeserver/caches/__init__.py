"""Caches that agree across workers (issue 21): the invalidation stream."""
