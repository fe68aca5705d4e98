package ghrepair

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// delivery is one attempt as GitHub's deliveries endpoints list it.
type delivery struct {
	ID          int64     `json:"id"`
	GUID        string    `json:"guid"`
	DeliveredAt time.Time `json:"delivered_at"`
	Redelivery  bool      `json:"redelivery"`
	Duration    float64   `json:"duration"`
	Status      string    `json:"status"`
	StatusCode  int       `json:"status_code"`
	Event       string    `json:"event"`
	Action      *string   `json:"action"`
}

// fakeGitHub implements GitHub's documented hook-delivery endpoints on
// 127.0.0.1: list (newest first, cursor pagination through the Link
// header) and redeliver, for repository and organization hooks.
type fakeGitHub struct {
	t        *testing.T
	url      string
	pageSize int
	mu       sync.Mutex
	hooks    map[string][]delivery // "repos/acme/web/123" or "orgs/acme/456"
	broken   map[string]bool       // list answers 502
	refuse   map[string]int        // "<hook>/<id>": 500s to answer before a 202
	pages    map[string]int        // list requests per hook
	attempts map[string]int        // accepted redeliveries per "<hook>/<id>"
	refused  int
}

func newFakeGitHub(t *testing.T) *fakeGitHub {
	g := &fakeGitHub{t: t, pageSize: 3, hooks: map[string][]delivery{}, broken: map[string]bool{},
		refuse: map[string]int{}, pages: map[string]int{}, attempts: map[string]int{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /repos/{owner}/{repo}/hooks/{hook}/deliveries", func(w http.ResponseWriter, r *http.Request) {
		g.list(w, r, "repos/"+r.PathValue("owner")+"/"+r.PathValue("repo")+"/"+r.PathValue("hook"))
	})
	mux.HandleFunc("GET /orgs/{org}/hooks/{hook}/deliveries", func(w http.ResponseWriter, r *http.Request) {
		g.list(w, r, "orgs/"+r.PathValue("org")+"/"+r.PathValue("hook"))
	})
	mux.HandleFunc("POST /repos/{owner}/{repo}/hooks/{hook}/deliveries/{id}/attempts", func(w http.ResponseWriter, r *http.Request) {
		g.redeliver(w, r, "repos/"+r.PathValue("owner")+"/"+r.PathValue("repo")+"/"+r.PathValue("hook"))
	})
	mux.HandleFunc("POST /orgs/{org}/hooks/{hook}/deliveries/{id}/attempts", func(w http.ResponseWriter, r *http.Request) {
		g.redeliver(w, r, "orgs/"+r.PathValue("org")+"/"+r.PathValue("hook"))
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer test-token" {
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"message":"Bad credentials"}`))
			return
		}
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	g.url = srv.URL
	return g
}

func (g *fakeGitHub) list(w http.ResponseWriter, r *http.Request, hook string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pages[hook]++
	if g.broken[hook] {
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte(`{"message":"Server Error"}`))
		return
	}
	all, ok := g.hooks[hook]
	if !ok {
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"message":"Not Found"}`))
		return
	}
	start := 0
	if c := r.URL.Query().Get("cursor"); c != "" {
		n, err := strconv.Atoi(c)
		require.NoError(g.t, err)
		start = n
	}
	end := min(start+g.pageSize, len(all))
	if end < len(all) {
		next := *r.URL
		next.Scheme, next.Host = "http", r.Host
		q := next.Query()
		q.Set("cursor", strconv.Itoa(end))
		next.RawQuery = q.Encode()
		w.Header().Set("Link", fmt.Sprintf(`<%s>; rel="next"`, next.String()))
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(all[start:end])
}

func (g *fakeGitHub) redeliver(w http.ResponseWriter, r *http.Request, hook string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	key := hook + "/" + r.PathValue("id")
	if g.refuse[key] > 0 {
		g.refuse[key]--
		g.refused++
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = w.Write([]byte(`{"message":"Server Error"}`))
		return
	}
	g.attempts[key]++
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_, _ = w.Write([]byte(`{}`))
}

func (g *fakeGitHub) snapshot() (pages, attempts map[string]int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	pages, attempts = map[string]int{}, map[string]int{}
	for k, v := range g.pages {
		pages[k] = v
	}
	for k, v := range g.attempts {
		attempts[k] = v
	}
	return pages, attempts
}

func ago(d time.Duration) time.Time { return time.Now().Add(-d).UTC().Truncate(time.Second) }

func newRepairer(t *testing.T, st *store.Store, conf *config.Config, o Options) (*Repairer, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)
	o.HTTPClient = client
	r, err := New(config.Static(conf), st, testenv.Logger(t), reg, o)
	require.NoError(t, err)
	return r, reg
}

func githubConf(t *testing.T, apiURL string, hooks ...config.RepoHook) *config.Config {
	t.Helper()
	c := &config.Config{GitHub: &config.GitHub{
		APIURL: apiURL, Token: "test-token", RepairInterval: config.Duration(time.Minute), Hooks: hooks,
	}}
	return c
}

func TestScan(t *testing.T) {
	t.Parallel()
	g := newFakeGitHub(t)
	rd := testenv.StartRedis(t)
	st := store.New(rd.Client, rd.Prefix)
	ctx := context.Background()

	// acme/web hook 123, newest first, 3 per page.
	g.hooks["repos/acme/web/123"] = []delivery{
		{ID: 100, GUID: "g-fresh", DeliveredAt: ago(5 * time.Second), StatusCode: 503, Event: "push"},         // in its grace period
		{ID: 101, GUID: "g-ok", DeliveredAt: ago(time.Minute), StatusCode: 202, Event: "push"},                // published
		{ID: 102, GUID: "g-503", DeliveredAt: ago(2 * time.Minute), StatusCode: 503, Event: "push"},           // never reached EVENTS
		{ID: 103, GUID: "g-lost", DeliveredAt: ago(3 * time.Minute), StatusCode: 202, Event: "push"},          // GitHub says OK, we have no record
		{ID: 104, GUID: "g-ignored", DeliveredAt: ago(4 * time.Minute), StatusCode: 500, Event: "issues"},     // reached us, ignored
		{ID: 105, GUID: "g-503", DeliveredAt: ago(5 * time.Minute), StatusCode: 503, Event: "push"},           // an older attempt of g-503
		{ID: 106, GUID: "g-2days", DeliveredAt: ago(48 * time.Hour), StatusCode: 0, Event: "push"},            // timed out two days ago
		{ID: 107, GUID: "g-4days", DeliveredAt: ago(96 * time.Hour), StatusCode: 500, Event: "push"},          // past GitHub's 3-day redelivery
		{ID: 108, GUID: "g-5days", DeliveredAt: ago(120 * time.Hour), StatusCode: 500, Event: "push"},         //
		{ID: 109, GUID: "g-6days", DeliveredAt: ago(144 * time.Hour), StatusCode: 500, Event: "push"},         // page 4: never read
		{ID: 110, GUID: "g-7days", DeliveredAt: ago(168 * time.Hour), StatusCode: 500, Event: "pull_request"}, //
	}
	// Organization hook acme/456: GitHub refuses the first redelivery.
	g.hooks["orgs/acme/456"] = []delivery{
		{ID: 201, GUID: "g-org", DeliveredAt: ago(time.Minute), StatusCode: 502, Event: "push"},
		{ID: 202, GUID: "g-org-ok", DeliveredAt: ago(2 * time.Minute), StatusCode: 200, Event: "ping"},
	}
	g.refuse["orgs/acme/456/201"] = 1
	g.broken["repos/acme/broken/789"] = true
	require.NoError(t, st.RecordDelivery(ctx, "g-ok"))
	require.NoError(t, st.RecordIgnored(ctx, "g-ignored"))
	require.NoError(t, st.RecordIgnored(ctx, "g-org-ok"))

	conf := githubConf(t, g.url,
		config.RepoHook{Repository: "acme/web", HookID: 123},
		config.RepoHook{Organization: "acme", HookID: 456},
		config.RepoHook{Repository: "acme/broken", HookID: 789},
	)
	r, _ := newRepairer(t, st, conf, Options{})

	rep := r.Scan(ctx)
	require.Equal(t, 3, rep.Hooks)
	require.Equal(t, 1, rep.Failed, "the broken hook")
	require.Equal(t, []string{"g-503", "g-lost", "g-2days"}, rep.Redelivered)
	pages, attempts := g.snapshot()
	require.Equal(t, map[string]int{"repos/acme/web/123/102": 1, "repos/acme/web/123/103": 1, "repos/acme/web/123/106": 1}, attempts)
	require.Equal(t, 3, pages["repos/acme/web/123"], "paging stops at the first delivery past the window")
	require.Equal(t, 1, g.refused)

	// The next scan asks for nothing twice; the refused one is asked again.
	rep = r.Scan(ctx)
	require.Equal(t, []string{"g-org"}, rep.Redelivered)
	_, attempts = g.snapshot()
	require.Equal(t, map[string]int{
		"repos/acme/web/123/102": 1, "repos/acme/web/123/103": 1, "repos/acme/web/123/106": 1, "orgs/acme/456/201": 1,
	}, attempts)

	// Once its grace period is over, the fresh one is repaired too; after
	// that, nothing more.
	r.opts.NowFunc = func() time.Time { return time.Now().Add(time.Minute) }
	rep = r.Scan(ctx)
	require.Equal(t, []string{"g-fresh"}, rep.Redelivered)
	rep = r.Scan(ctx)
	require.Empty(t, rep.Redelivered)
	_, attempts = g.snapshot()
	require.Len(t, attempts, 5)
	for k, n := range attempts {
		require.Equal(t, 1, n, "%s redelivered once", k)
	}

	require.Equal(t, 5.0, testutil.ToFloat64(r.m.redeliveries.WithLabelValues("requested")))
	require.Equal(t, 1.0, testutil.ToFloat64(r.m.redeliveries.WithLabelValues("failed")))
	require.Equal(t, 8.0, testutil.ToFloat64(r.m.scans.WithLabelValues("ok")))
	require.Equal(t, 4.0, testutil.ToFloat64(r.m.scans.WithLabelValues("error")))

	t.Run("a later scan reads back only to the previous one", func(t *testing.T) {
		r.opts.Overlap = 30 * time.Second // the last scan was at now+1m: everything listed is older
		before, _ := g.snapshot()
		r.Scan(ctx)
		after, _ := g.snapshot()
		require.Equal(t, 1, after["repos/acme/web/123"]-before["repos/acme/web/123"],
			"the first delivery already predates the last scan (minus the overlap)")
	})
}

func TestScanBadToken(t *testing.T) {
	t.Parallel()
	g := newFakeGitHub(t)
	rd := testenv.StartRedis(t)
	st := store.New(rd.Client, rd.Prefix)
	g.hooks["repos/acme/web/1"] = []delivery{{ID: 1, GUID: "g1", DeliveredAt: ago(time.Hour), StatusCode: 500}}
	conf := githubConf(t, g.url, config.RepoHook{Repository: "acme/web", HookID: 1})
	conf.GitHub.Token = "wrong"
	r, _ := newRepairer(t, st, conf, Options{})
	rep := r.Scan(context.Background())
	require.Equal(t, 1, rep.Failed)
	require.Empty(t, rep.Redelivered)
	at, err := st.RepairScanTime(context.Background(), "repo:acme/web:1")
	require.NoError(t, err)
	require.True(t, at.IsZero(), "a failed scan does not advance")
}

// TestLease runs two replicas: one scans, the other takes over when the
// first stops.
func TestLease(t *testing.T) {
	t.Parallel()
	g := newFakeGitHub(t)
	rd := testenv.StartRedis(t)
	st := store.New(rd.Client, rd.Prefix)
	g.hooks["repos/acme/web/1"] = []delivery{{ID: 1, GUID: "g1", DeliveredAt: ago(time.Hour), StatusCode: 500}}
	conf := githubConf(t, g.url, config.RepoHook{Repository: "acme/web", HookID: 1})
	o := Options{LeaseTTL: 300 * time.Millisecond}
	r1, _ := newRepairer(t, st, conf, o)
	r2, _ := newRepairer(t, st, conf, o)

	type replica struct {
		r      *Repairer
		cancel context.CancelFunc
		done   chan struct{}
	}
	start := func(r *Repairer) *replica {
		ctx, cancel := context.WithCancel(context.Background())
		rp := &replica{r: r, cancel: cancel, done: make(chan struct{})}
		go func() { defer close(rp.done); r.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-rp.done })
		return rp
	}
	reps := []*replica{start(r1), start(r2)}
	leaders := func() []int {
		var out []int
		for i, rp := range reps {
			if testutil.ToFloat64(rp.r.m.leader) == 1 {
				out = append(out, i)
			}
		}
		return out
	}
	lists := func() int { p, _ := g.snapshot(); return p["repos/acme/web/1"] }
	testenv.Eventually(t, 10*time.Second, "a first scan", func() bool { return lists() == 1 && len(leaders()) == 1 })
	leader := leaders()[0]

	// For several lease periods, one leader renewing, no second scan.
	for end := time.Now().Add(4 * o.LeaseTTL); time.Now().Before(end); {
		require.Equal(t, []int{leader}, leaders())
		require.Equal(t, 1, lists())
		time.Sleep(20 * time.Millisecond)
	}
	_, attempts := g.snapshot()
	require.Equal(t, map[string]int{"repos/acme/web/1/1": 1}, attempts)

	// The leader stops and releases: the other takes over and scans.
	reps[leader].cancel()
	<-reps[leader].done
	testenv.Eventually(t, 10*time.Second, "the other replica to take over", func() bool {
		return slices.Equal(leaders(), []int{1 - leader}) && lists() == 2
	})
	_, attempts = g.snapshot()
	require.Equal(t, map[string]int{"repos/acme/web/1/1": 1}, attempts, "still asked once")
}

func TestIdleWithoutGitHubConfig(t *testing.T) {
	t.Parallel()
	rd := testenv.StartRedis(t)
	st := store.New(rd.Client, rd.Prefix)
	r, _ := newRepairer(t, st, &config.Config{}, Options{LeaseTTL: 30 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	require.Equal(t, Report{}, r.Scan(ctx))
	cancel()
	<-done
	require.Zero(t, rd.Client.Exists(context.Background(), store.Keys{Prefix: rd.Prefix}.Lease(LeaseName)).Val())
}
