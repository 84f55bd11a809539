"""Transactions from other servers: PUT /send/{txnId} (PDUs and EDUs)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from federation.edge import authenticated_origin
from homeserver.federation.transactions import MAX_TRANSACTION_BYTES, TransactionService
from homeserver.web.edge import json_response, services_of


@dataclass(frozen=True, slots=True)
class TransactionServices:
    """What the transaction route calls (built by the composition root)."""

    transactions: TransactionService


async def put_send(request: Request) -> Response:
    """PUT /_matrix/federation/v1/send/{txnId}"""
    hs = services_of(request, TransactionServices)
    # A transaction may be larger than a client's request: 50 PDUs of up to 64 KiB each. An
    # integer out of the canonical range refuses only its PDU, and only in room versions 6
    # and later (before them Synapse takes it too), or only its EDU.
    origin, body = await authenticated_origin(request, MAX_TRANSACTION_BYTES, int_range=False)
    answer = await hs.transactions.on_send(origin, request.path_params["txn_id"], body)
    return json_response(answer)


routes = [Route("/v1/send/{txn_id}", put_send, methods=["PUT"])]
