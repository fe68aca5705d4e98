package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/telemetry"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// The API's test tokens: the value a client sends, and its config entry.
const (
	tokRead  = "tok-read-0123456789"
	tokWrite = "tok-write-0123456789"
	tokAdmin = "tok-admin-0123456789"
	tokEnv   = "tok-env-0123456789"
)

func sha(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }

func sha256Sum(s string) [sha256.Size]byte { return sha256.Sum256([]byte(s)) }

func configToken(name, hash string, scopes ...string) config.Token {
	return config.Token{Name: name, SHA256: hash, Scopes: scopes}
}

// testConfig is the config file of the API tests; tokens are added by
// withTokens.
const testConfig = `services:
  - name: web
    repository: acme/web
    git_url: file:///srv/git/web.git
    branches: [main]
    artifacts: ["acme:web", "acme:shared"]
    deploy: ./deploy.sh
    secrets: [DB_PASSWORD]
    pipeline:
      - environment: staging
        targets: {env: staging}
        env: {LOG_LEVEL: debug-secret-value}
      - environment: production
        targets: {env: prod}
  - name: api
    repository: acme/api
    branches: [main]
    artifacts: ["acme:shared"]
    deploy: ./deploy.sh
    pipeline:
      - environment: staging
        targets: {env: staging}
webhooks:
  - name: chat
    url: https://hooks.example.com/x
`

const testTokens = `tokens:
  - {name: viewer, sha256: "` + "%READ%" + `", scopes: [read]}
  - {name: ci, sha256: "` + "%WRITE%" + `", scopes: [read, write]}
  - {name: root, sha256: "` + "%ADMIN%" + `", scopes: [admin]}
`

// apiEnv is one ingest with real NATS and redis-server behind an HTTP
// server whose every response is checked against openapi.json.
type apiEnv struct {
	t        *testing.T
	url      string
	js       jetstream.JetStream
	st       *store.Store
	rdb      *redis.Client
	keys     store.Keys
	in       *Ingest
	confPath string
	nats     *testenv.NATS
}

type envOpts struct {
	noTokens bool   // no token at all: reads open, writes 401
	envToken string // OTARIINAE_API_TOKEN
}

func setup(t *testing.T, o envOpts) *apiEnv {
	t.Helper()
	n := testenv.StartNATS(t)
	js := n.JetStream(t)
	rd := testenv.StartRedis(t)
	text := testConfig
	if !o.noTokens {
		text += strings.NewReplacer("%READ%", sha(tokRead), "%WRITE%", sha(tokWrite), "%ADMIN%", sha(tokAdmin)).Replace(testTokens)
	}
	path := filepath.Join(t.TempDir(), "otariinae.yaml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	conf, err := config.NewLive(path)
	require.NoError(t, err)
	st := store.New(rd.Client, rd.Prefix)
	in, err := New(Config{APIToken: o.envToken}, n.Conn(t), st, conf, testenv.Logger(t), prometheus.NewRegistry())
	require.NoError(t, err)
	r := chi.NewRouter()
	r.NotFound(api.NotFound)
	r.MethodNotAllowed(api.MethodNotAllowed)
	var health telemetry.Health
	health.Add("redis", st.Ping)
	health.Mount(r, prometheus.NewRegistry())
	in.Mount(r)
	srv := serve(t, r)
	return &apiEnv{t: t, url: srv.URL, js: js, st: st, rdb: rd.Client, keys: store.Keys{Prefix: rd.Prefix}, in: in, confPath: path, nats: n}
}

// oas is the parsed openapi.json and its router, shared by every test.
var oas = sync.OnceValues(func() (routers.Router, error) {
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPI)
	if err != nil {
		return nil, err
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, err
	}
	doc.Servers = nil // a servers: block makes every route miss
	return gorillamux.NewRouter(doc)
})

// hits counts the operations the suite exercised through serve.
var hits = struct {
	sync.Mutex
	ops map[string]int
}{ops: map[string]int{}}

// serve runs h behind an httptest server that validates every response
// against the OpenAPI document: a route missing from it, a status it does
// not list or a body off its schema fails the test. Log follow streams are
// passed through unbuffered and unchecked.
func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	router, err := oas()
	require.NoError(t, err, "openapi.json")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("follow") != "" {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		res := rec.Result()
		body := rec.Body.Bytes()
		checkResponse(t, router, r, res.StatusCode, res.Header, body)
		for k, v := range res.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(res.StatusCode)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func checkResponse(t *testing.T, router routers.Router, r *http.Request, status int, hdr http.Header, body []byte) {
	req := r.Clone(context.Background())
	req.URL.Scheme, req.URL.Host = "http", r.Host
	route, params, err := router.FindRoute(req)
	if err != nil {
		// Only a path the API does not serve may be missing from the doc.
		if status != http.StatusNotFound && status != http.StatusMethodNotAllowed {
			t.Errorf("openapi: %s %s (%d) has no operation: %v", r.Method, r.URL.Path, status, err)
		}
		return
	}
	hits.Lock()
	hits.ops[route.Operation.OperationID]++
	hits.Unlock()
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 hdr,
		Options:                &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	in.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Errorf("openapi: %s %s answered %d off the document: %v\nbody: %s", r.Method, r.URL.Path, status, err, body)
	}
}

// resp is an answer with its body decoded when it is JSON.
type resp struct {
	status int
	header http.Header
	body   []byte
	json   map[string]any
}

func (r resp) errCode() string {
	e, _ := r.json["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func (r resp) errField(k string) any {
	e, _ := r.json["error"].(map[string]any)
	return e[k]
}

// call sends method path with an optional bearer token, JSON body and
// headers (name, value pairs).
func (e *apiEnv) call(method, path, token string, body any, hdrs ...string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		require.NoError(e.t, err)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	require.NoError(e.t, err)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdrs); i += 2 {
		req.Header.Set(hdrs[i], hdrs[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(e.t, err)
	out := resp{status: res.StatusCode, header: res.Header, body: b}
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		_ = json.Unmarshal(b, &out.json)
	}
	return out
}

// events returns how many messages EVENTS holds on subject.
func (e *apiEnv) events(subject string) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, wire.StreamEvents)
	require.NoError(e.t, err)
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	require.NoError(e.t, err)
	total := 0
	for _, n := range info.State.Subjects {
		total += int(n)
	}
	return total
}

// lastEvent returns the newest message on subject.
func (e *apiEnv) lastEvent(subject string) *jetstream.RawStreamMsg {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, wire.StreamEvents)
	require.NoError(e.t, err)
	m, err := s.GetLastMsgForSubject(ctx, subject)
	require.NoError(e.t, err)
	return m
}

// putFlow writes f as the engine would: state through Commit, then the
// read indexes.
func (e *apiEnv) putFlow(f *flow.Flow) {
	e.t.Helper()
	putFlow(e.t, e.st, f)
}

func putFlow(t *testing.T, st *store.Store, f *flow.Flow) {
	t.Helper()
	ctx := context.Background()
	l, err := st.LoadFlow(ctx, f.ID, "")
	require.NoError(t, err)
	_, err = st.Commit(ctx, f, l.Rev, "test-"+newID(""), nil)
	require.NoError(t, err)
	require.NoError(t, st.IndexFlow(ctx, f))
}

var t0 = time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)

// newFlow builds a flow of service web (staging then production) for
// artifact acme:web at version, created at t0 + age.
func newFlow(version string, state flow.FlowState, age time.Duration) *flow.Flow {
	return newFlowOf("acme:web", "web", version, state, age)
}

func newFlowOf(artifact, service, version string, state flow.FlowState, age time.Duration) *flow.Flow {
	id := flow.FlowID(artifact, version, service)
	at := t0.Add(age)
	commit := strings.Repeat("a", 40)
	if len(version) == 40 {
		commit = version
	}
	f := &flow.Flow{
		ID: id, Artifact: artifact, Version: version, Commit: commit, Ref: "refs/heads/main",
		Service: service, Repository: "acme/" + service, State: state, CreatedAt: at, UpdatedAt: at,
		Spec: &flow.Spec{GitURL: "file:///secret", Command: "./deploy.sh"},
	}
	for _, env := range []string{"staging", "production"} {
		f.Deployments = append(f.Deployments, flow.Deployment{
			ID: flow.DeploymentID(id, env), FlowID: id, Environment: env, State: flow.NotStarted,
			Jobs: []flow.Job{}, Promotions: []flow.Promotion{},
		})
	}
	return f
}

// withPromotions puts staging in completed with a manual promotion qa
// and an external promotion check, in the given states.
func withPromotions(f *flow.Flow, manual, external flow.PromotionState) *flow.Flow {
	d := &f.Deployments[0]
	at := f.CreatedAt
	d.State, d.CreatedAt, d.StartedAt, d.CompletedAt = flow.Completed, &at, &at, &at
	code := 0
	d.Jobs = []flow.Job{{AgentID: "a1", State: flow.JobSucceeded, ExitCode: &code}}
	d.Promotions = []flow.Promotion{
		{Name: "qa", Type: flow.PromotionManual, State: manual},
		{Name: "check", Type: flow.PromotionExternal, State: external},
		{Name: "soak", Type: flow.PromotionWait, State: flow.PromotionPending},
	}
	return f
}

// pageAll follows next_cursor from query (at most 10 pages), collecting
// what each page gives with items.
func (e *apiEnv) pageAll(query, token string, items func(resp) []string) []string {
	e.t.Helper()
	var out []string
	cursor := ""
	for range 10 {
		q := query
		if cursor != "" {
			q += "&cursor=" + url.QueryEscape(cursor)
		}
		r := e.call("GET", q, token, nil)
		require.Equal(e.t, 200, r.status, string(r.body))
		out = append(out, items(r)...)
		if r.json["next_cursor"] == nil {
			return out
		}
		cursor = r.json["next_cursor"].(string)
	}
	e.t.Fatalf("%s: more than 10 pages", query)
	return nil
}
