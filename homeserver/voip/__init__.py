"""Voice and video calls: the TURN servers clients are given."""
