// jwtcheck: an independent access-token verifier in Go (go-jose), for the e2e suite.
//
// It reads one token a line on stdin and answers one line each: "ok <kid>" or "reject <reason>".
// Like a resource server, it caches the issuer's JWKS for -cache and fetches it again when the
// cache is older, or (at most once per -min-refresh) when a token names a kid it does not know.
// So a token of a revoked key is rejected at the latest one cache lifetime after the key left the
// JWKS. Tokens are never printed.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

type verifier struct {
	url        string
	cache      time.Duration
	minRefresh time.Duration
	keys       jose.JSONWebKeySet
	fetched    time.Time
}

func (v *verifier) fetch() error {
	resp, err := http.Get(v.url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("jwks: HTTP %d", resp.StatusCode)
	}
	var set jose.JSONWebKeySet
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		return err
	}
	v.keys, v.fetched = set, time.Now()
	return nil
}

func (v *verifier) key(kid string) ([]jose.JSONWebKey, error) {
	if time.Since(v.fetched) > v.cache {
		if err := v.fetch(); err != nil {
			return nil, err
		}
	}
	found := v.keys.Key(kid)
	if len(found) == 0 && time.Since(v.fetched) > v.minRefresh {
		if err := v.fetch(); err != nil {
			return nil, err
		}
		found = v.keys.Key(kid)
	}
	return found, nil
}

func (v *verifier) check(raw, issuer, audience string) (string, error) {
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256, jose.RS256, jose.EdDSA})
	if err != nil {
		return "", fmt.Errorf("malformed")
	}
	header := tok.Headers[0]
	if typ, _ := header.ExtraHeaders[jose.HeaderType].(string); typ != "at+jwt" {
		return "", fmt.Errorf("typ %q is not at+jwt", typ)
	}
	keys, err := v.key(header.KeyID)
	if err != nil {
		return "", fmt.Errorf("jwks unavailable")
	}
	if len(keys) == 0 {
		return "", fmt.Errorf("unknown kid %s", header.KeyID)
	}
	var claims jwt.Claims
	if err := tok.Claims(keys[0].Key, &claims); err != nil {
		return "", fmt.Errorf("bad signature")
	}
	expected := jwt.Expected{Issuer: issuer, AnyAudience: jwt.Audience{audience}, Time: time.Now()}
	if err := claims.ValidateWithLeeway(expected, 30*time.Second); err != nil {
		return "", fmt.Errorf("claims: %v", err)
	}
	return header.KeyID, nil
}

func main() {
	url := flag.String("jwks-url", "", "the issuer's JWKS URL")
	issuer := flag.String("issuer", "", "expected iss")
	audience := flag.String("audience", "", "expected aud")
	cache := flag.Duration("cache", 10*time.Second, "how long the JWKS is cached")
	minRefresh := flag.Duration("min-refresh", time.Second, "at most one refetch on an unknown kid this often")
	flag.Parse()
	v := &verifier{url: *url, cache: *cache, minRefresh: *minRefresh}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 64*1024), 1024*1024)
	for in.Scan() {
		if kid, err := v.check(in.Text(), *issuer, *audience); err != nil {
			fmt.Println("reject", err)
		} else {
			fmt.Println("ok", kid)
		}
	}
}
