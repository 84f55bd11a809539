"""Simplified sliding sync (MSC4186): lists of rooms by activity, windows of them, per
connection deltas, and the extensions (to-device, e2ee, account data, receipts, typing)."""
