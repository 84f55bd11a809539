"""The HTTP edge shared by every route package (client_api, media_repo): request bodies,
authentication of a request, JSON responses, error handlers, CORS. Services never import it."""
