package dispatcher_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shanenoi/otariinae/pkg/bus"
	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/hook"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
	"github.com/shanenoi/otariinae/services/dispatcher"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 15 * time.Second

// received is one request as the receiver saw it.
type received struct {
	header    http.Header
	body      []byte
	verifyErr error
}

// endpoint is one webhook's path on the receiver.
type endpoint struct {
	name    string
	secret  string
	status  int           // answer; 0 = 204
	hold    chan struct{} // non-nil: each request waits until it is closed
	mu      sync.Mutex
	reqs    []received
	cur     atomic.Int64
	maxSeen atomic.Int64
}

func (e *endpoint) requests() []received {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]received(nil), e.reqs...)
}

// receiver is a real HTTP server on 127.0.0.1 that verifies every request
// with the official Standard Webhooks library and records it.
type receiver struct {
	srv       *httptest.Server
	endpoints map[string]*endpoint
}

func newReceiver(t *testing.T, eps ...*endpoint) *receiver {
	t.Helper()
	r := &receiver{endpoints: map[string]*endpoint{}}
	for _, e := range eps {
		r.endpoints["/"+e.name] = e
	}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		e := r.endpoints[req.URL.Path]
		if e == nil {
			http.NotFound(w, req)
			return
		}
		n := e.cur.Add(1)
		defer e.cur.Add(-1)
		for {
			m := e.maxSeen.Load()
			if n <= m || e.maxSeen.CompareAndSwap(m, n) {
				break
			}
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		wh, err := standardwebhooks.NewWebhook(e.secret)
		if err == nil {
			err = wh.Verify(body, req.Header)
		}
		e.mu.Lock()
		e.reqs = append(e.reqs, received{header: req.Header.Clone(), body: body, verifyErr: err})
		e.mu.Unlock()
		if e.hold != nil {
			select {
			case <-e.hold:
			case <-req.Context().Done():
			}
		}
		if e.status != 0 {
			w.WriteHeader(e.status)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) url(name string) string { return r.srv.URL + "/" + name }

// logRecorder keeps every log line (message and attributes, as text) and
// forwards it to the test log.
type logRecorder struct {
	next  slog.Handler
	mu    *sync.Mutex
	lines *[]string
	attrs []slog.Attr
}

func newLogRecorder(t *testing.T) *logRecorder {
	return &logRecorder{next: testenv.Logger(t).Handler(), mu: &sync.Mutex{}, lines: new([]string)}
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(ctx context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	for _, a := range h.attrs {
		b.WriteString(" " + a.String())
	}
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	h.mu.Lock()
	*h.lines = append(*h.lines, b.String())
	h.mu.Unlock()
	return h.next.Handle(ctx, r)
}

func (h *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	c.next = h.next.WithAttrs(as)
	return &c
}

func (h *logRecorder) WithGroup(string) slog.Handler { return h } // unused by the dispatcher

func (h *logRecorder) all() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return strings.Join(*h.lines, "\n")
}

// fixture is one running dispatcher against its own NATS server.
type fixture struct {
	js   jetstream.JetStream
	reg  *prometheus.Registry
	logs *logRecorder
	stop func() error // cancels Run and returns its result
	done chan error
}

func webhook(name, url, secret string) config.Webhook {
	return config.Webhook{Name: name, URL: url, Secret: secret, Events: []string{"*"}, Format: "native"}
}

func setup(t *testing.T, cfg dispatcher.Config, conf *config.Config, secrets dispatcher.SecretFunc) *fixture {
	t.Helper()
	require.NoError(t, conf.Validate())
	n := testenv.StartNATS(t)
	f := &fixture{js: n.JetStream(t), reg: prometheus.NewRegistry(), logs: newLogRecorder(t), done: make(chan error, 1)}
	d, err := dispatcher.New(cfg, n.Conn(t), config.Static(conf), secrets, slog.New(f.logs), f.reg)
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { f.done <- d.Run(ctx) }()
	var once sync.Once
	var runErr error
	f.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-f.done:
			case <-time.After(wait):
				runErr = errors.New("Run did not return after cancel")
			}
		})
		return runErr
	}
	t.Cleanup(func() { require.NoError(t, f.stop()) })
	return f
}

func (f *fixture) publish(t *testing.T, subjectWebhook string, req wire.HookRequest) {
	t.Helper()
	b, err := json.Marshal(req)
	require.NoError(t, err)
	f.publishRaw(t, wire.HookSubject(subjectWebhook), b)
}

func (f *fixture) publishRaw(t *testing.T, subject string, b []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := f.js.Publish(ctx, subject, b)
	require.NoError(t, err)
}

func hookReq(id, webhook string, body string) wire.HookRequest {
	return wire.HookRequest{
		ID: id, Webhook: webhook, Type: "deployment.succeeded", FlowID: "flow-1",
		Timestamp: time.Now().UTC(), Body: []byte(body),
	}
}

// metric returns the value of the counter or gauge name with labels, or of
// the histogram's sample count; 0 if absent.
func (f *fixture) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := f.reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func (f *fixture) deliveries(t *testing.T, webhook, result string) float64 {
	return f.metric(t, "otariinae_dispatcher_deliveries_total", map[string]string{"webhook": webhook, "result": result})
}

func (f *fixture) consumerInfo(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := f.js.Consumer(ctx, wire.StreamHooks, bus.ConsumerDispatcher)
	require.NoError(t, err)
	info, err := c.Info(ctx)
	require.NoError(t, err)
	return info
}

// settled waits until the consumer holds nothing: every message acked or
// terminated, none waiting.
func (f *fixture) settled(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	var info *jetstream.ConsumerInfo
	testenv.Eventually(t, wait, "consumer to settle", func() bool {
		info = f.consumerInfo(t)
		return info.NumAckPending == 0 && info.NumPending == 0 && info.Delivered.Consumer > 0
	})
	return info
}

func allowLoopback() dispatcher.Config {
	return dispatcher.Config{HooksAllowNetworks: "127.0.0.0/8,::1/128"}
}

func TestDelivered(t *testing.T) {
	t.Parallel()
	ep := &endpoint{name: "chat", secret: config.NewSecret()}
	rc := newReceiver(t, ep)
	wh := webhook("chat", rc.url("chat"), ep.secret)
	wh.Headers = map[string]string{"X-Team": "ops", "Authorization": "Bearer t0k", "Webhook-Id": "forged"}
	f := setup(t, allowLoopback(), &config.Config{Webhooks: []config.Webhook{wh}}, nil)

	// Odd spacing and key order: the receiver must get these exact bytes.
	body := `{"type":"deployment.succeeded",   "timestamp":"2026-01-02T03:04:05Z","data":{"z":1,"a":[ 1,2 ]}}` + "\n"
	f.publish(t, "chat", hookReq("msg_delivered_1", "chat", body))

	testenv.Eventually(t, wait, "delivery", func() bool { return f.deliveries(t, "chat", "delivered") == 1 })
	reqs := ep.requests()
	require.Len(t, reqs, 1)
	got := reqs[0]
	require.NoError(t, got.verifyErr, "official Standard Webhooks verification")
	require.Equal(t, []byte(body), got.body)
	require.Equal(t, "msg_delivered_1", got.header.Get("webhook-id"))
	require.Equal(t, "application/json", got.header.Get("Content-Type"))
	require.Equal(t, hook.UserAgent, got.header.Get("User-Agent"))
	require.Equal(t, "ops", got.header.Get("X-Team"))
	require.Equal(t, "Bearer t0k", got.header.Get("Authorization"))

	info := f.settled(t)
	require.Equal(t, uint64(1), info.Delivered.Consumer)
	require.Zero(t, f.deliveries(t, "chat", "failed"))
	require.Equal(t, 1.0, f.metric(t, "otariinae_dispatcher_delivery_duration_seconds", map[string]string{"webhook": "chat"}))
	require.Zero(t, f.metric(t, "otariinae_dispatcher_in_flight", map[string]string{"webhook": "chat"}))
}

func TestReceiverErrorIsAckedNotRedelivered(t *testing.T) {
	t.Parallel()
	ep := &endpoint{name: "broken", secret: config.NewSecret(), status: http.StatusInternalServerError}
	rc := newReceiver(t, ep)
	f := setup(t, allowLoopback(), &config.Config{Webhooks: []config.Webhook{webhook("broken", rc.url("broken"), ep.secret)}}, nil)

	f.publish(t, "broken", hookReq("msg_500", "broken", `{"kind":"flow.failed"}`))

	testenv.Eventually(t, wait, "failed count", func() bool { return f.deliveries(t, "broken", "failed") == 1 })
	info := f.settled(t)
	require.Equal(t, uint64(1), info.Delivered.Consumer, "acked after one attempt, never redelivered")
	require.Len(t, ep.requests(), 1)
	require.NoError(t, ep.requests()[0].verifyErr)
	require.Zero(t, f.deliveries(t, "broken", "delivered"))
	logs := f.logs.all()
	require.Contains(t, logs, "reason=status")
	require.Contains(t, logs, "status=500")
	// Neither the secret (nor its key) nor the body is ever logged.
	require.NotContains(t, logs, ep.secret)
	require.NotContains(t, logs, strings.TrimPrefix(ep.secret, "whsec_"))
	require.NotContains(t, logs, "flow.failed")
}

func TestUnknownWebhookAndMalformedAreDropped(t *testing.T) {
	t.Parallel()
	ep := &endpoint{name: "known", secret: config.NewSecret()}
	rc := newReceiver(t, ep)
	f := setup(t, allowLoopback(), &config.Config{Webhooks: []config.Webhook{webhook("known", rc.url("known"), ep.secret)}}, nil)

	f.publish(t, "ghost", hookReq("msg_ghost", "ghost", `{}`))
	f.publishRaw(t, wire.HookSubject("known"), []byte(`not json`))

	testenv.Eventually(t, wait, "drops", func() bool {
		return f.deliveries(t, "_unknown", "dropped") == 1 && f.deliveries(t, "_invalid", "dropped") == 1
	})
	info := f.settled(t)
	require.Equal(t, uint64(2), info.Delivered.Consumer)
	require.Empty(t, ep.requests())
	require.Zero(t, f.deliveries(t, "known", "delivered"))
}

func TestSSRFGuardRefusesLoopbackByDefault(t *testing.T) {
	t.Parallel()
	ep := &endpoint{name: "local", secret: config.NewSecret()}
	rc := newReceiver(t, ep)
	f := setup(t, dispatcher.Config{}, &config.Config{Webhooks: []config.Webhook{webhook("local", rc.url("local"), ep.secret)}}, nil)

	f.publish(t, "local", hookReq("msg_ssrf", "local", `{}`))

	testenv.Eventually(t, wait, "failed count", func() bool { return f.deliveries(t, "local", "failed") == 1 })
	f.settled(t)
	require.Empty(t, ep.requests(), "the guard must refuse before connecting")
	require.Contains(t, f.logs.all(), "reason=prohibited")
}

func TestMaxInFlight(t *testing.T) {
	t.Parallel()
	one := &endpoint{name: "one", secret: config.NewSecret(), hold: make(chan struct{})}
	three := &endpoint{name: "three", secret: config.NewSecret(), hold: make(chan struct{})}
	free := &endpoint{name: "free", secret: config.NewSecret()}
	rc := newReceiver(t, one, three, free)
	whOne := webhook("one", rc.url("one"), one.secret)
	whOne.MaxInFlight = 1
	whThree := webhook("three", rc.url("three"), three.secret)
	whThree.MaxInFlight = 3
	conf := &config.Config{Webhooks: []config.Webhook{whOne, whThree, webhook("free", rc.url("free"), free.secret)}}
	f := setup(t, allowLoopback(), conf, nil)
	var once sync.Once
	release := func() {
		once.Do(func() {
			close(one.hold)
			close(three.hold)
		})
	}
	t.Cleanup(release) // before the receiver closes (cleanups run last-in first-out)

	for _, id := range []string{"a", "b", "c"} {
		f.publish(t, "one", hookReq("one_"+id, "one", `{"n":"`+id+`"}`))
	}
	for _, id := range []string{"a", "b", "c", "d"} {
		f.publish(t, "three", hookReq("three_"+id, "three", `{"n":"`+id+`"}`))
	}
	f.publish(t, "free", hookReq("free_a", "free", `{}`))

	// Other webhooks are not held up by the blocked ones.
	testenv.Eventually(t, wait, "free delivered while others are held", func() bool {
		return f.deliveries(t, "free", "delivered") == 1
	})
	// max_in_flight 3: exactly three requests are at the receiver at once.
	testenv.Eventually(t, wait, "three concurrent requests", func() bool { return three.cur.Load() == 3 })
	testenv.Eventually(t, wait, "one request", func() bool { return one.cur.Load() == 1 })
	require.Equal(t, 1.0, f.metric(t, "otariinae_dispatcher_in_flight", map[string]string{"webhook": "one"}))
	require.Equal(t, 3.0, f.metric(t, "otariinae_dispatcher_in_flight", map[string]string{"webhook": "three"}))

	release()
	testenv.Eventually(t, wait, "all delivered", func() bool {
		return f.deliveries(t, "one", "delivered") == 3 && f.deliveries(t, "three", "delivered") == 4
	})
	f.settled(t)
	require.Equal(t, int64(1), one.maxSeen.Load(), "max_in_flight=1")
	require.Equal(t, int64(3), three.maxSeen.Load(), "max_in_flight=3")
	for _, e := range []*endpoint{one, three, free} {
		for _, r := range e.requests() {
			require.NoError(t, r.verifyErr)
		}
	}
}

func TestSecretFromStore(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st := store.New(r.Client, r.Prefix)
	ctx := context.Background()
	secret, err := st.WebhookSecret(ctx, "generated")
	require.NoError(t, err)

	ep := &endpoint{name: "generated", secret: secret}
	rc := newReceiver(t, ep)
	f := setup(t, allowLoopback(), &config.Config{Webhooks: []config.Webhook{webhook("generated", rc.url("generated"), "")}}, st.WebhookSecret)

	f.publish(t, "generated", hookReq("msg_gen", "generated", `{"x":1}`))

	testenv.Eventually(t, wait, "delivery", func() bool { return f.deliveries(t, "generated", "delivered") == 1 })
	reqs := ep.requests()
	require.Len(t, reqs, 1)
	require.NoError(t, reqs[0].verifyErr)
	f.settled(t)
}

func TestSecretOutageIsRetriedLater(t *testing.T) {
	t.Parallel()
	secret := config.NewSecret()
	var calls atomic.Int64
	secrets := func(_ context.Context, webhook string) (string, error) {
		if calls.Add(1) == 1 {
			return "", errors.New("read secret of webhook " + webhook + ": redis: connection refused")
		}
		return secret, nil
	}
	ep := &endpoint{name: "flaky", secret: secret}
	rc := newReceiver(t, ep)
	f := setup(t, allowLoopback(), &config.Config{Webhooks: []config.Webhook{webhook("flaky", rc.url("flaky"), "")}}, secrets)

	f.publish(t, "flaky", hookReq("msg_flaky", "flaky", `{}`))

	testenv.Eventually(t, wait, "delivery after the secret came back", func() bool {
		return f.deliveries(t, "flaky", "delivered") == 1
	})
	require.GreaterOrEqual(t, calls.Load(), int64(2))
	require.Len(t, ep.requests(), 1)
	require.NoError(t, ep.requests()[0].verifyErr)
	require.Zero(t, f.deliveries(t, "flaky", "failed"))
	info := f.settled(t)
	require.Equal(t, uint64(2), info.Delivered.Consumer, "handed back once, then delivered")
}

func TestShutdownFinishesInFlight(t *testing.T) {
	t.Parallel()
	ep := &endpoint{name: "slow", secret: config.NewSecret(), hold: make(chan struct{})}
	rc := newReceiver(t, ep)
	f := setup(t, allowLoopback(), &config.Config{Webhooks: []config.Webhook{webhook("slow", rc.url("slow"), ep.secret)}}, nil)
	var closeOnce sync.Once
	release := func() { closeOnce.Do(func() { close(ep.hold) }) }
	t.Cleanup(release)

	f.publish(t, "slow", hookReq("msg_slow", "slow", `{}`))
	testenv.Eventually(t, wait, "request at the receiver", func() bool { return ep.cur.Load() == 1 })

	stopped := make(chan error, 1)
	go func() { stopped <- f.stop() }()
	select {
	case err := <-stopped:
		t.Fatalf("Run returned (%v) while a delivery was in flight", err)
	default:
	}
	release()
	select {
	case err := <-stopped:
		require.NoError(t, err)
	case <-time.After(wait):
		t.Fatal("Run did not return after the delivery finished")
	}
	require.Equal(t, 1.0, f.deliveries(t, "slow", "delivered"))
	info := f.settled(t)
	require.Equal(t, uint64(1), info.Delivered.Consumer)
}

func TestNewRejectsBadInput(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	nc := n.Conn(t)
	good := config.Static(&config.Config{Webhooks: []config.Webhook{webhook("a", "http://127.0.0.1:1/", "")}})

	_, err := dispatcher.New(dispatcher.Config{HooksAllowNetworks: "127.0.0.0/8,nope"}, nc, config.Static(&config.Config{}), nil, nil, nil)
	require.ErrorContains(t, err, "OTARIINAE_HOOKS_ALLOW_NETWORKS")
	require.ErrorContains(t, err, `"nope"`)

	_, err = dispatcher.New(dispatcher.Config{}, nc, good, nil, nil, nil)
	require.ErrorContains(t, err, "webhook a has no secret")

	reg := prometheus.NewRegistry()
	secrets := func(context.Context, string) (string, error) { return config.NewSecret(), nil }
	_, err = dispatcher.New(dispatcher.Config{}, nc, good, secrets, nil, reg)
	require.NoError(t, err)
	_, err = dispatcher.New(dispatcher.Config{}, nc, good, secrets, nil, reg)
	require.ErrorContains(t, err, "register dispatcher metrics")
	var are prometheus.AlreadyRegisteredError
	require.ErrorAs(t, err, &are)
}
