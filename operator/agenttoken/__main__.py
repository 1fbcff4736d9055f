"""`python -m agenttoken` is the `agenttoken` CLI."""

from agenttoken.cli import main

raise SystemExit(main())
