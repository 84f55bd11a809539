"""Routes of the Client-Server API (``/_matrix/client/*``): parse, authenticate, call, serialize."""
