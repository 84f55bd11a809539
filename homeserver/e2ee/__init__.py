"""End-to-end encryption support: device and cross-signing keys, one-time keys, device
list changes, server-side key backup and to-device messages (which carry key exchange)."""
