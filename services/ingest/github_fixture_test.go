package ingest

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

const ghSecret = "It's a Secret to Everybody"

// ghConfYAML has a plain service (web), and one (lib) with its own secret
// that also deploys tags and pull requests.
const ghConfYAML = `
services:
  - name: web
    repository: acme/web
    git_url: file:///srv/web.git
    branches: [main]
    deploy: ./deploy.sh
    pipeline:
      - environment: staging
        targets: {env: staging}
      - environment: production
        targets: {env: production}
  - name: lib
    repository: acme/lib
    git_url: file:///srv/lib.git
    secret: lib's own secret
    branches: [main]
    tags: true
    pull_requests: true
    deploy: ./deploy.sh
    pipeline:
      - environment: staging
        targets: {env: staging}
`

// ghFixture is a real ingest over real NATS and Redis, served over HTTP.
type ghFixture struct {
	nats *testenv.NATS
	js   jetstream.JetStream
	st   *store.Store
	in   *Ingest
	reg  *prometheus.Registry
	url  string
	http *http.Client
}

type ghOptions struct {
	conf  string       // YAML; ghConfYAML when empty
	store *store.Store // when set, instead of the test's Redis
}

func ghSetup(t *testing.T, o ghOptions) *ghFixture {
	t.Helper()
	if o.conf == "" {
		o.conf = ghConfYAML
	}
	n := testenv.StartNATS(t)
	fx := &ghFixture{nats: n, js: n.JetStream(t), reg: prometheus.NewRegistry(), http: &http.Client{Timeout: 30 * time.Second}}
	if o.store != nil {
		fx.st = o.store
	} else {
		r := testenv.StartRedis(t)
		fx.st = store.New(r.Client, r.Prefix)
	}
	conf, err := config.Parse(strings.NewReader(o.conf))
	require.NoError(t, err)
	fx.in, err = New(Config{GitHubWebhookSecret: ghSecret}, n.Conn(t), fx.st, config.Static(conf), testenv.Logger(t), fx.reg)
	require.NoError(t, err)
	r := chi.NewRouter()
	r.NotFound(api.NotFound)
	r.MethodNotAllowed(api.MethodNotAllowed)
	fx.in.Mount(r)
	srv := httptest.NewServer(r)
	t.Cleanup(srv.Close)
	t.Cleanup(fx.http.CloseIdleConnections)
	fx.url = srv.URL
	return fx
}

func (fx *ghFixture) do(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := fx.http.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

// events counts the messages in EVENTS.
func (fx *ghFixture) events(t *testing.T) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := fx.js.Stream(ctx, wire.StreamEvents)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	return info.State.Msgs
}

// lastEvent returns the newest message in EVENTS.
func (fx *ghFixture) lastEvent(t *testing.T) *jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := fx.js.Stream(ctx, wire.StreamEvents)
	require.NoError(t, err)
	m, err := s.GetLastMsgForSubject(ctx, wire.SubjectEventsAll)
	require.NoError(t, err)
	return m
}

func ghBody(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m), "body %s", b)
	return m
}
