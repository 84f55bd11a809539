"""The media repository."""

from __future__ import annotations

import sqlalchemy as sa

from homeserver.storage.schema.base import BigInt, metadata

# --- media repository (issue 5) --------------------------------------------------------------

# Local media: one row per mxc://<server_name>/<media_id>. Content is stored once per sha256
# (identical uploads share it); a row from POST /media/v1/create has no upload_ts until its
# content arrives, and lapses at expires_ts. Remote media (federation) gets its own table.
media = sa.Table(
    "media",
    metadata,
    sa.Column("media_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, nullable=False),  # the uploader
    sa.Column("created_ts", BigInt, nullable=False),
    sa.Column("expires_ts", BigInt, nullable=True),  # pending IDs only
    sa.Column("upload_ts", BigInt, nullable=True),  # None: created, content not yet uploaded
    sa.Column("content_type", sa.Text, nullable=True),
    sa.Column("upload_name", sa.Text, nullable=True),
    sa.Column("size", BigInt, nullable=True),
    sa.Column("sha256", sa.Text, nullable=True, index=True),  # hex; names the stored content
    # Images only, read from the header at upload: thumbnail sizes are computed from them.
    sa.Column("width", sa.Integer, nullable=True),
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("animated", sa.Boolean, nullable=False, default=False),
    # The last download or thumbnail (written at most about once an hour per media);
    # None: not fetched since it was uploaded. Media retention goes by it.
    sa.Column("last_access_ts", BigInt, nullable=True),
    # Media retention and deletion by age look for media by last access, else creation
    # (media_to_delete in homeserver/storage/admin_media.py: a range on each).
    sa.Index("ix_media_last_access_ts", "last_access_ts", "created_ts"),
    sa.Index("ix_media_created_ts", "created_ts"),
    # Quotas sum a user's sizes; pending uploads are counted per user.
    sa.Index(None, "user_id", "upload_ts"),
)

# Thumbnails belong to content (sha256), not to a media ID: identical uploads share them.
# width and height are the thumbnail's own, so two requests that give the same image share it.
media_thumbnails = sa.Table(
    "media_thumbnails",
    metadata,
    sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("width", sa.Integer, primary_key=True),
    sa.Column("height", sa.Integer, primary_key=True),
    sa.Column("method", sa.Text, primary_key=True),  # crop, scale
    sa.Column("animated", sa.Boolean, primary_key=True),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("size", BigInt, nullable=False),
    sa.Column("created_ts", BigInt, nullable=False),
)

# Media of other servers, fetched over federation for our clients (issue 18) and kept: one row
# per mxc://<server_name>/<media_id>. Content is stored by sha256 like local media (the same
# bytes share it); last_access_ts is when a client last asked, for a later clean-up.
remote_media = sa.Table(
    "remote_media",
    metadata,
    sa.Column("server_name", sa.Text, primary_key=True),
    sa.Column("media_id", sa.Text, primary_key=True),
    sa.Column("fetched_ts", BigInt, nullable=False),
    sa.Column("last_access_ts", BigInt, nullable=False, index=True),
    sa.Column("content_type", sa.Text, nullable=False),
    sa.Column("upload_name", sa.Text, nullable=True),
    sa.Column("size", BigInt, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False, index=True),
    sa.Column("width", sa.Integer, nullable=True),
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("animated", sa.Boolean, nullable=False, default=False),
)

# Singleton background jobs (media retention first): a job runs on the worker that holds
# its lease, renewed as it runs; a worker that dies frees it once until_ts passes.
job_leases = sa.Table(
    "job_leases",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("owner", sa.Text, nullable=False),
    sa.Column("until_ts", BigInt, nullable=False),
)
