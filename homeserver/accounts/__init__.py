"""Accounts and what belongs to one user: registration and login, access tokens, devices,
user-interactive auth, e-mail addresses (3PIDs), profiles, the user directory, account
data and ignore lists."""
