package testenv

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// Hook is one delivery a HookReceiver accepted.
type Hook struct {
	ID     string
	Type   string
	Header http.Header
	Body   []byte
	Data   map[string]any
}

// HookReceiver is a real HTTP webhook subscriber on 127.0.0.1 that checks
// every request with the official Standard Webhooks verifier and keeps
// those that pass. Requests that fail verification are counted, not kept.
type HookReceiver struct {
	URL    string
	mu     sync.Mutex
	hooks  []Hook
	failed int
}

// NewHookReceiver starts a receiver verifying with secret (whsec_...).
func NewHookReceiver(t testing.TB, secret string) *HookReceiver {
	t.Helper()
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatalf("webhook secret: %v", err)
	}
	hr := &HookReceiver{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var env struct {
			Type string         `json:"type"`
			Data map[string]any `json:"data"`
		}
		if err := wh.Verify(body, r.Header); err != nil || json.Unmarshal(body, &env) != nil {
			hr.mu.Lock()
			hr.failed++
			hr.mu.Unlock()
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		hr.mu.Lock()
		hr.hooks = append(hr.hooks, Hook{ID: r.Header.Get("webhook-id"), Type: env.Type, Header: r.Header.Clone(), Body: body, Data: env.Data})
		hr.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	hr.URL = srv.URL
	return hr
}

// Hooks returns the verified deliveries so far.
func (hr *HookReceiver) Hooks() []Hook {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return append([]Hook(nil), hr.hooks...)
}

// Failed returns how many requests failed verification.
func (hr *HookReceiver) Failed() int {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return hr.failed
}

// Types returns the hook types received, in arrival order.
func (hr *HookReceiver) Types() []string {
	var out []string
	for _, h := range hr.Hooks() {
		out = append(out, h.Type)
	}
	return out
}
