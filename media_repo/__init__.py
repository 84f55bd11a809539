"""The media repository: uploads, downloads, thumbnails, storage backends, CDN, URL previews.

``routes`` is the HTTP edge (``/_matrix/media/*`` and ``/_matrix/client/v1/media/*``);
``service.MediaService`` is the service the app builds; storage backends live in
``backends`` (filesystem) and ``s3``; image work is in ``thumbnailer``. See docs/media.md.
"""
