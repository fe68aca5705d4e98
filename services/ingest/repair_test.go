package ingest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/testenv"
)

// TestRunRepairs checks that Run starts the delivery-gap repair loop when
// the config has a github: section, and stops it with ctx.
func TestRunRepairs(t *testing.T) {
	t.Parallel()
	var lists atomic.Int64
	gh := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Path == "/repos/acme/web/hooks/42/deliveries" {
			lists.Add(1)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`[]`))
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(gh.Close)
	fx := ghSetup(t, ghOptions{conf: ghConfYAML + `
github:
  api_url: ` + gh.URL + `
  token: test-token
  repair_interval: 1m
  hooks:
    - {repository: acme/web, hook_id: 42}
`})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fx.in.Run(ctx) }()
	testenv.Eventually(t, 10*time.Second, "a repair scan", func() bool { return lists.Load() == 1 })
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
	}
}
