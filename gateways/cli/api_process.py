"""One extra API process of `leadlog up --processes N`, started by it: `python -m` this."""

from __future__ import annotations

import argparse

from gateways.cli.serve import serve_api_process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateways.cli.api_process",
        description="Serve the HTTP app beside the `leadlog up` process that started this one.",
    )
    parser.add_argument("--parent", type=int, required=True, help="the `leadlog up` process id")
    parser.add_argument("--ready-fd", type=int, required=True, help="written to once serving")
    args = parser.parse_args(argv)
    serve_api_process(args.parent, args.ready_fd)


if __name__ == "__main__":
    main()
