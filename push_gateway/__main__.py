"""``python -m push_gateway -c gateway.yaml``: serve the push gateway on its own."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from push_gateway.app import Gateway, create_app
from push_gateway.config import GatewayConfigError, load_gateway_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="push_gateway", description=__doc__)
    parser.add_argument("-c", "--config", type=Path, default=Path("gateway.yaml"))
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        config = load_gateway_config(args.config)
    except GatewayConfigError as e:
        print(f"push_gateway: {e}", file=sys.stderr)
        return 2
    app = create_app(Gateway(config))
    uvicorn.run(
        app,
        host=config.listen.host,
        port=config.listen.port,
        log_level=args.log_level.lower(),
        lifespan="on",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
