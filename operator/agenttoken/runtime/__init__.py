"""Process wiring: kopf handlers, startup (`agenttoken run`) and the HTTP endpoints."""
