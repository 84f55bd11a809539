"""Signed, short-lived CDN URLs that the edge (nginx ``secure_link``) checks by itself.

The signature is nginx's ``secure_link_md5 "$secure_link_expires$uri <secret>"``: the MD5 of
the expiry (Unix seconds), the path and the shared secret, in unpadded URL-safe base64, sent
as ``?md5=...&expires=...``. The secret comes last, so the construction does not allow length
extension; a URL names one media (or one thumbnail) and expires within minutes, so a leaked URL
gives no more than the one file, for no longer than that. The homeserver checks the same
signature when the edge asks it for a file, so the origin is no way around the edge either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote, urlencode

# Expiry is rounded up to the minute: every redirect for a file within a minute is the same
# URL, so browsers cache it too.
EXPIRY_ROUNDING_S = 60
CDN_PREFIX = "/_matrix/media/cdn"


class CdnSigner:
    def __init__(self, base_url: str, secret: str, lifetime_ms: int) -> None:
        self._base_url = base_url.rstrip("/")
        self._secret = secret
        self._lifetime_s = max(1, lifetime_ms // 1000)

    def signature(self, path: str, expires: int) -> str:
        raw = f"{expires}{path} {self._secret}".encode()
        digest = hashlib.md5(raw, usedforsecurity=False).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def url(self, path: str, now_ms: int) -> str:
        """The signed URL of ``path`` (an already-decoded ``/_matrix/media/cdn/...`` path)."""
        expires = now_ms // 1000 + self._lifetime_s
        expires += -expires % EXPIRY_ROUNDING_S
        query = urlencode({"md5": self.signature(path, expires), "expires": expires})
        return f"{self._base_url}{quote(path, safe='/:[]@')}?{query}"

    def verify(self, path: str, md5: str | None, expires: str | None, now_ms: int) -> bool:
        if md5 is None or expires is None or not expires.isdigit() or len(expires) > 12:
            return False
        if int(expires) * 1000 <= now_ms:
            return False
        return hmac.compare_digest(self.signature(path, int(expires)), md5)


def download_path(server_name: str, media_id: str) -> str:
    return f"{CDN_PREFIX}/download/{server_name}/{media_id}"


def thumbnail_path(
    server_name: str, media_id: str, width: int, height: int, method: str, animated: bool
) -> str:
    spec = f"{width}x{height}-{method}" + ("-animated" if animated else "")
    return f"{CDN_PREFIX}/thumbnail/{server_name}/{media_id}/{spec}"
