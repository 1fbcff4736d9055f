"""The `agenttoken` command line (also `kubectl agenttoken` and `python -m agenttoken`).

`run` starts the operator. The other commands talk to the cluster of the current KUBECONFIG
through the operator's own adapter (`agenttoken.kube`), one `asyncio.run` per command:

    agenttoken status [NAME] [-n NS | -A] [-l SELECTOR] [-o table|json|yaml]
    agenttoken rotate (NAME | --all | -l SELECTOR) [-n NS]
    agenttoken revoke NAME [--token-id JTI] [-n NS]
    agenttoken inspect NAME [-n NS] [-o ...]
    agenttoken verify (NAME | --token-file F) --audience AUD [--scope S ...] [--url URL]
    agenttoken jwks [--url URL]
    agenttoken keys list
    agenttoken keys revoke KID [--force] [--wait] [--timeout SECONDS]
    agenttoken audit [-n NS | -A] [-l SELECTOR] [-o ...] [--fail-on low|medium|high]

No command ever prints a token: `inspect` shows its header and claims, `verify` the result.

Layout: `parser` builds the argparse tree from one `register` per command module (`status`,
`rotate` with revoke, `tokens` with inspect/verify/jwks, `audit`, `run`); `session` holds the
lazily opened cluster connection; `output` the table/json/yaml rendering.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import logging
import os
import sys

from agenttoken.cli import keys
from agenttoken.cli.parser import build_parser
from agenttoken.cli.session import CliError, Session
from agenttoken.kube.errors import KubeError

__all__ = ["CliError", "main"]


async def _in_session(args: argparse.Namespace) -> int:
    session = Session()
    try:
        result: int = await args.func(args, session)
        return result
    except KubeError as exc:
        # "HTTP <status>: <apiserver message>", as the CLI always printed API errors.
        raise CliError(str(exc)) from None
    finally:
        await session.close()


def main(argv: list[str] | None = None) -> int:
    # kubernetes_asyncio warns "Config not found" on stderr before we try in-cluster config; a
    # missing cluster is reported once, by Session, with both reasons.
    logging.getLogger("kubernetes_asyncio.config.kube_config").setLevel(logging.ERROR)
    try:
        # Parsed inside the try: `--help | head -0` is a broken pipe too.
        args = build_parser().parse_args(keys.kid_as_positional(sys.argv[1:] if argv is None else argv))
        if inspect.iscoroutinefunction(args.func):
            return asyncio.run(_in_session(args))
        result: int = args.func(args)  # `run`: the operator starts its own event loop
        return result
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # `agenttoken status -A | head`: the reader left. Exit quietly, as kubectl does; point
        # stdout at /dev/null so the interpreter's final flush cannot raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a killed pipe writer
