"""Rooms: building and sending events, creating rooms, memberships, state and history."""
