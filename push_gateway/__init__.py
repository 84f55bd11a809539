"""The push gateway (spec: Push Gateway API): ``POST /_matrix/push/v1/notify``.

A separate ASGI app, run on its own (``python -m push_gateway -c gateway.yaml``) or served by
the homeserver beside its own routes (``push.gateway_config``). Each device of a
notification is routed by its ``app_id`` to a configured backend: WebPush (VAPID, aes128gcm),
APNs (HTTP/2, ES256 token auth) or FCM HTTP v1 (OAuth2 service account). Pushkeys a provider
reports dead are answered as ``rejected``.
"""
