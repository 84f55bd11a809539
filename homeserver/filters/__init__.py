"""Filters (spec: "Filtering"): the stored ones clients name by ID (``service``) and
applying a filter to events (``matching``), for /sync and /messages."""
