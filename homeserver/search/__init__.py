"""Server-side search (POST /search): ``service`` (``SearchService``)."""
