"""Push notifications: push rules and their evaluation, pushers, the pusher sender, e-mail.

Rules are evaluated once per event per local member when the event is persisted; the
notifying results (push actions) commit with the event and feed unread counts in sync,
``/notifications`` and the pusher sender, which delivers them to push gateways and by e-mail.
"""
