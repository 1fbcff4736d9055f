// An independent Go verifier for the e2e suite (tests/e2e/test_key_revocation.py); not shipped.
module agenttoken.dev/hack/jwtcheck

go 1.24.0

require github.com/go-jose/go-jose/v4 v4.1.5
