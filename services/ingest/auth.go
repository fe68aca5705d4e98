package ingest

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"strings"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/config"
)

// Scope is what an API token may do. Each scope includes the ones below
// it: admin ⊃ write ⊃ read.
type Scope string

// Scopes.
const (
	ScopeRead  Scope = "read"
	ScopeWrite Scope = "write"
	ScopeAdmin Scope = "admin"
)

func (s Scope) rank() int {
	switch s {
	case ScopeRead:
		return 1
	case ScopeWrite:
		return 2
	case ScopeAdmin:
		return 3
	}
	return 0
}

// EnvTokenName is the name OTARIINAE_API_TOKEN is known by in the audit.
const EnvTokenName = "env"

// Anonymous is who reads when no token is configured at all.
const Anonymous = "anonymous"

// noTokenMessage answers a write or admin call when no token exists:
// writes are never open, whatever the deployment forgot to configure.
const noTokenMessage = "no API token is configured; set OTARIINAE_API_TOKEN or tokens: in the config"

type byKey struct{}

// By returns the name of the API token that authenticated the request
// ("anonymous" for an open read), or "" outside an authenticated route.
func By(ctx context.Context) string {
	v, _ := ctx.Value(byKey{}).(string)
	return v
}

// credential is one token the API accepts.
type credential struct {
	name  string
	hash  [sha256.Size]byte
	scope Scope
}

// credentials lists the tokens in force: the config's, then the
// environment's. Built per request so a config reload applies at once.
func (in *Ingest) credentials() []credential {
	cfg := in.conf.Get()
	out := make([]credential, 0, len(cfg.Tokens)+1)
	for _, t := range cfg.Tokens {
		c, ok := tokenCredential(t)
		if ok {
			out = append(out, c)
		}
	}
	if in.cfg.APIToken != "" {
		out = append(out, credential{name: EnvTokenName, hash: sha256.Sum256([]byte(in.cfg.APIToken)), scope: ScopeAdmin})
	}
	return out
}

func tokenCredential(t config.Token) (credential, bool) {
	c := credential{name: t.Name}
	b, err := hex.DecodeString(strings.ToLower(t.SHA256))
	if err != nil || len(b) != sha256.Size {
		return c, false // config validation rejects this; never match it
	}
	copy(c.hash[:], b)
	for _, s := range t.Scopes {
		if Scope(s).rank() > c.scope.rank() {
			c.scope = Scope(s)
		}
	}
	return c, true
}

// authenticate finds the credential whose hash matches the presented
// token. Every credential is compared, in constant time, whatever matched:
// the time taken says nothing about which one (or whether one) did.
func authenticate(creds []credential, token string) (credential, bool) {
	sum := sha256.Sum256([]byte(token))
	match := -1
	for i := range creds {
		eq := subtle.ConstantTimeCompare(sum[:], creds[i].hash[:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return credential{}, false
	}
	return creds[match], true
}

// bearer returns the token of an "Authorization: Bearer <token>" header.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// require is the middleware of every authenticated route: it answers 401
// without a valid token and 403 when the token's scope is below scope,
// and otherwise puts the token's name in the request context (By).
//
// Policy: while no token is configured at all, read routes are open and
// write and admin routes answer 401. The GitHub route does not use it:
// its signature is its authentication.
func (in *Ingest) require(scope Scope) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			creds := in.credentials()
			if len(creds) == 0 {
				if scope != ScopeRead {
					unauthorized(w, "", noTokenMessage)
					return
				}
				next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), byKey{}, Anonymous)))
				return
			}
			tok, ok := bearer(r)
			if !ok {
				unauthorized(w, "", "this route needs an API token: Authorization: Bearer <token>")
				return
			}
			c, ok := authenticate(creds, tok)
			if !ok {
				unauthorized(w, "invalid_token", "the API token is not valid")
				return
			}
			if c.scope.rank() < scope.rank() {
				api.Error(w, api.CodeForbidden, "token "+c.name+" lacks scope "+string(scope))
				return
			}
			next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), byKey{}, c.name)))
		})
	}
}

// RequireRead wraps a handler that needs scope read (the seed GET routes).
func (in *Ingest) RequireRead(h http.HandlerFunc) http.Handler { return in.require(ScopeRead)(h) }

func unauthorized(w http.ResponseWriter, bearerErr, msg string) {
	v := `Bearer realm="otariinae"`
	if bearerErr != "" {
		v += `, error="` + bearerErr + `"`
	}
	w.Header().Set("WWW-Authenticate", v)
	api.Error(w, api.CodeUnauthorized, msg)
}
