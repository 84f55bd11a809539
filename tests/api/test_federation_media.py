"""Our media served to other servers: federation /media/download and /media/thumbnail."""

from __future__ import annotations

import io
from email.parser import BytesParser
from email.policy import HTTP

import httpx
import pytest
from PIL import Image

from homeserver.app import Homeserver
from tests.api.test_media import upload
from tests.federation_helpers import FakeRemote
from tests.helpers import register
from tests.unit.test_thumbnailer import make_image

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

FED = "/_matrix/federation/v1/media"


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    assert response.headers["content-type"].startswith("multipart/mixed; boundary=")
    raw = b"Content-Type: " + response.headers["content-type"].encode() + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(raw + response.content)
    out = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        out.append(({k.lower(): str(v) for k, v in part.items()}, payload))
    return out


async def signed_get(client: httpx.AsyncClient, remote: FakeRemote, uri: str) -> httpx.Response:
    return await client.get(
        uri, headers={"Authorization": remote.authorization("test", "GET", uri)}
    )


async def test_download_and_thumbnail(
    fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote
) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    data = b"some bytes \x00\xff" * 1000
    mxc = await upload(client, token, data, "application/octet-stream", "notes.bin")
    media_id = mxc.rsplit("/", 1)[1]
    r = await signed_get(client, remote, f"{FED}/download/{media_id}")
    assert r.status_code == 200, r.text
    assert int(r.headers["content-length"]) == len(r.content)
    (meta_headers, meta), (headers, content) = parts(r)
    assert meta_headers["content-type"] == "application/json" and meta == b"{}"
    assert headers["content-type"] == "application/octet-stream"
    assert headers["content-disposition"] == 'attachment; filename="notes.bin"'
    assert content == data

    png = make_image("PNG", 200, 100)
    mxc = await upload(client, token, png, "image/png")
    media_id = mxc.rsplit("/", 1)[1]
    uri = f"{FED}/thumbnail/{media_id}?width=32&height=32&method=crop"
    r = await signed_get(client, remote, uri)
    assert r.status_code == 200, r.text
    _, (headers, content) = parts(r)
    assert headers["content-type"] == "image/png"
    assert headers["content-disposition"].startswith("inline")
    assert Image.open(io.BytesIO(content)).size == (32, 32)


async def test_errors(fed: tuple[Homeserver, httpx.AsyncClient], remote: FakeRemote) -> None:
    _, client = fed
    _, token = await register(client, "alice")
    mxc = await upload(client, token, make_image("PNG", 64, 64), "image/png")
    media_id = mxc.rsplit("/", 1)[1]
    r = await client.get(f"{FED}/download/{media_id}")
    assert (r.status_code, r.json()["errcode"]) == (401, "M_UNAUTHORIZED")
    for uri, status, errcode in (
        (f"{FED}/download/nosuchmedia", 404, "M_NOT_FOUND"),
        (f"{FED}/download/bad%21id", 400, "M_INVALID_PARAM"),
        (f"{FED}/thumbnail/{media_id}", 400, "M_MISSING_PARAM"),
        (f"{FED}/thumbnail/{media_id}?width=x&height=3", 400, "M_INVALID_PARAM"),
        (f"{FED}/thumbnail/{media_id}?width=3&height=3&method=zoom", 400, "M_INVALID_PARAM"),
        (f"{FED}/thumbnail/nosuchmedia?width=3&height=3", 404, "M_NOT_FOUND"),
    ):
        r = await signed_get(client, remote, uri)
        assert (r.status_code, r.json()["errcode"]) == (status, errcode), uri
