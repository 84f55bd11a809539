"""Routes of the Server-Server API (``/_matrix/federation/*``) and of the key server
(``/_matrix/key/v2/*``): parse, authenticate, call, serialize. The services live in
``homeserver/federation/``."""
