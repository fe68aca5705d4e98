// Package ingest is the only HTTP entry of the system: it verifies GitHub
// deliveries and publishes them to EVENTS (answering 202 only after the
// PubAck), and serves the read routes from Redis and the LOGS stream.
package ingest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/go-github/v92/github"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/bus"
	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/ghrepair"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// MaxBody is GitHub's cap on a webhook payload: 25 MiB.
const MaxBody = 25 << 20

const (
	// preallocMax bounds the buffer sized from Content-Length alone.
	preallocMax = 1 << 20
	// bodyTimeout bounds the time to receive a delivery's body.
	bodyTimeout = 30 * time.Second
)

// Config is ingest's environment (prefix OTARIINAE_).
type Config struct {
	GitHubWebhookSecret string        `envconfig:"GITHUB_WEBHOOK_SECRET" desc:"secret of GitHub webhooks (a service's secret: overrides it); empty accepts unsigned deliveries"`
	APIToken            string        `envconfig:"API_TOKEN" desc:"one more API token, with scope admin"`
	LogFollowMax        time.Duration `envconfig:"LOG_FOLLOW_MAX" default:"1h" desc:"longest a ?follow=1 log stream stays open (SSE clients resume with Last-Event-ID)"`
}

const (
	// publishTimeout bounds the wait for a PubAck; GitHub gives up at 10s.
	publishTimeout = 5 * time.Second
	// redisTimeout bounds each dedupe read or write on the hot path.
	redisTimeout = time.Second
)

// Ingest serves the HTTP API.
type Ingest struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	st     *store.Store
	conf   *config.Live
	log    *slog.Logger
	m      metrics
	repair *ghrepair.Repairer
	// followPoll is how often a log follow re-reads the flows' state.
	followPoll time.Duration
	// followPing is how often an idle SSE log stream sends ": ping".
	followPing time.Duration
}

type metrics struct {
	deliveries   *prometheus.CounterVec
	publish      prometheus.Histogram
	dedupeErrors prometheus.Counter
	follows      prometheus.Gauge
}

// New returns the ingest service.
func New(cfg Config, nc *nats.Conn, st *store.Store, conf *config.Live, log *slog.Logger, reg prometheus.Registerer) (*Ingest, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if cfg.LogFollowMax <= 0 {
		cfg.LogFollowMax = time.Hour
	}
	in := &Ingest{cfg: cfg, nc: nc, js: js, st: st, conf: conf, log: log, followPoll: 500 * time.Millisecond, followPing: pingEvery}
	in.m = metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otariinae_ingest_deliveries_total",
			Help: "GitHub deliveries by event and result (accepted, duplicate, ignored, rejected, unavailable).",
		}, []string{"event", "result"}),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "otariinae_ingest_publish_duration_seconds", Help: "Time from publish to PubAck.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
		}),
		dedupeErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otariinae_ingest_dedupe_errors_total",
			Help: "Deliveries whose Redis dedupe record could not be read or written (published anyway).",
		}),
		follows: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "otariinae_ingest_log_follows", Help: "Log streams (?follow=1) open now.",
		}),
	}
	for _, c := range []prometheus.Collector{in.m.deliveries, in.m.publish, in.m.dedupeErrors, in.m.follows} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register ingest metrics: %w", err)
		}
	}
	in.repair, err = ghrepair.New(conf, st, log.With("component", "ghrepair"), reg)
	if err != nil {
		return nil, err
	}
	return in, nil
}

// Mount adds the seed routes to r.
func (in *Ingest) Mount(r chi.Router) {
	r.Post("/{org}/{repo}/", in.github)
	r.Post("/{org}/{repo}", in.github)
	read := r.With(in.require(ScopeRead)) // see auth.go: open until a token is configured
	read.Get("/{org}/{repo}/deployments/", in.listDeployments)
	read.Get("/{org}/{repo}/deployments", in.listDeployments)
	read.Get("/{org}/{repo}/deployments/{commit}", in.commitDeployments)
	read.Get("/{org}/{repo}/deployments/{commit}/log", in.commitLog)
	in.mountAPI(r)
}

func (in *Ingest) github(w http.ResponseWriter, r *http.Request) {
	repo := chi.URLParam(r, "org") + "/" + chi.URLParam(r, "repo")
	typ := r.Header.Get("X-GitHub-Event")
	body, err := readBody(w, r)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			in.reject(w, typ, api.CodePayloadTooLarge, "the body exceeds GitHub's 25 MiB cap")
			return
		}
		in.reject(w, typ, api.CodeBadRequest, "could not read the body")
		return
	}
	services := in.conf.Get().ServicesForRepository(repo)
	secret := in.cfg.GitHubWebhookSecret
	for _, s := range services {
		if s.Secret != "" {
			secret = s.Secret
			break
		}
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mt != "application/json" && mt != "application/x-www-form-urlencoded") {
		in.reject(w, typ, api.CodeUnsupportedMedia, "Content-Type must be application/json or application/x-www-form-urlencoded")
		return
	}
	// X-Hub-Signature-256 is checked over the raw body in constant time.
	sig := r.Header.Get(github.SHA256SignatureHeader)
	if secret == "" {
		sig = "" // no secret configured: nothing to verify against
	}
	payload, err := validate(mt, body, sig, secret)
	if err != nil {
		if secret != "" {
			in.reject(w, typ, api.CodeInvalidSignature, "X-Hub-Signature-256 is missing or does not match the body")
			return
		}
		in.reject(w, typ, api.CodeBadRequest, "unreadable delivery: "+err.Error())
		return
	}
	if len(services) == 0 {
		in.reject(w, typ, api.CodeRepositoryUnknown, "no service deploys "+repo)
		return
	}
	delivery := r.Header.Get("X-GitHub-Delivery")
	switch {
	case typ == "":
		in.reject(w, typ, api.CodeBadRequest, "the X-GitHub-Event header is missing")
		return
	case !wire.ValidToken(typ):
		in.reject(w, typ, api.CodeBadRequest, "the X-GitHub-Event header is not an event name")
		return
	case len(delivery) > 128 || (delivery == "" && typ != "ping"):
		in.reject(w, typ, api.CodeBadRequest, "the X-GitHub-Delivery header is missing or too long")
		return
	case typ == "ping":
		in.m.deliveries.WithLabelValues(typ, "accepted").Inc()
		in.recordIgnored(r.Context(), delivery)
		api.JSON(w, http.StatusOK, map[string]any{"ok": true, "event": "ping"})
		return
	}
	rt, err := route(typ, repo, payload, services)
	if err != nil {
		in.reject(w, typ, api.CodeBadRequest, err.Error())
		return
	}
	if rt.ignored != "" {
		in.recordIgnored(r.Context(), delivery)
		in.ignore(w, typ, rt.ignored)
		return
	}
	in.publish(w, r, typ, repo, delivery, payload, rt)
}

// readBody reads at most MaxBody bytes, in one allocation when the sender
// declared the length (GitHub does).
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	// The body must arrive in bodyTimeout: a client trickling it cannot
	// hold a connection (and its buffer) for ever.
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(bodyTimeout))
	body := http.MaxBytesReader(w, r.Body, MaxBody)
	// Content-Length sizes the buffer only up to preallocMax: a declared
	// length is a claim, not bytes received, and this route answers
	// anyone before the signature is checked.
	if n := r.ContentLength; n > 0 && n <= preallocMax {
		buf := make([]byte, n)
		if _, err := io.ReadFull(body, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	return io.ReadAll(body)
}

// validate checks the signature (when a secret is configured) and returns
// the JSON payload: the body itself, or the payload= field of a
// form-encoded delivery. Both go through go-github's constant-time check;
// a JSON body is not copied on the way.
func validate(mediaType string, body []byte, sig, secret string) ([]byte, error) {
	if mediaType != "application/json" {
		return github.ValidatePayloadFromBody(mediaType, bytes.NewReader(body), sig, []byte(secret))
	}
	if secret != "" {
		if err := github.ValidateSignature(sig, body, []byte(secret)); err != nil {
			return nil, err
		}
	}
	return body, nil
}

// publish sends a delivery that deploys to EVENTS, at most once per
// delivery id: first the 7-day Redis record (redeliveries days later),
// then JetStream's duplicate window (concurrent and quick retries).
func (in *Ingest) publish(w http.ResponseWriter, r *http.Request, typ, repo, delivery string, payload []byte, rt routed) {
	duplicate := func() {
		in.m.deliveries.WithLabelValues(typ, "duplicate").Inc()
		api.JSON(w, http.StatusOK, map[string]any{"delivery": delivery, "event": typ, "duplicate": true})
	}
	rctx, rcancel := context.WithTimeout(r.Context(), redisTimeout)
	seen, err := in.st.DeliverySeen(rctx, delivery)
	rcancel()
	if err != nil {
		// GitHub never retries by itself: refusing would lose the delivery.
		// JetStream's window and the engine's deterministic flow ids still
		// keep a duplicate from deploying twice.
		in.m.dedupeErrors.Inc()
		in.log.Warn("delivery dedupe unavailable, publishing anyway", "delivery", delivery, "err", err)
	}
	if seen {
		duplicate()
		return
	}
	if in.nc != nil && in.nc.Status() != nats.CONNECTED {
		// A publish now would sit in the reconnect buffer until the
		// timeout; answer at once so the sender retries.
		in.m.deliveries.WithLabelValues(typ, "unavailable").Inc()
		api.Error(w, api.CodeUnavailable, "the event bus is unavailable; retry later")
		return
	}
	msg := &nats.Msg{Subject: wire.GitHubSubject(typ), Data: payload, Header: nats.Header{}}
	msg.Header.Set(wire.HeaderGitHubEvent, typ)
	msg.Header.Set(wire.HeaderDelivery, delivery)
	msg.Header.Set(wire.HeaderRepository, repo)
	msg.Header.Set(wire.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	ctx, cancel := context.WithTimeout(r.Context(), publishTimeout)
	defer cancel()
	start := time.Now()
	ack, err := in.js.PublishMsg(ctx, msg, jetstream.WithMsgID(delivery))
	in.m.publish.Observe(time.Since(start).Seconds())
	if err != nil {
		in.log.Warn("publish delivery", "delivery", delivery, "err", err)
		in.m.deliveries.WithLabelValues(typ, "unavailable").Inc()
		api.Error(w, api.CodeUnavailable, "the event bus is unavailable; retry later")
		return
	}
	// Recorded only after the PubAck: a failed publish leaves no record, so
	// GitHub's (or the repair loop's) redelivery is published.
	rctx, rcancel = context.WithTimeout(context.WithoutCancel(r.Context()), redisTimeout)
	if err := in.st.RecordDelivery(rctx, delivery); err != nil {
		in.m.dedupeErrors.Inc()
		in.log.Warn("record delivery", "delivery", delivery, "err", err)
	}
	rcancel()
	if ack.Duplicate {
		duplicate()
		return
	}
	in.m.deliveries.WithLabelValues(typ, "accepted").Inc()
	in.log.Info("delivery accepted", "delivery", delivery, "event", typ, "repository", repo, "ref", rt.ref, "commit", rt.commit, "stream_seq", ack.Sequence)
	api.JSON(w, http.StatusAccepted, map[string]any{"delivery": delivery, "event": typ})
}

// recordIgnored notes, best effort, that a delivery reached us and needed
// nothing published, so the repair loop does not ask GitHub for it again.
func (in *Ingest) recordIgnored(ctx context.Context, delivery string) {
	if delivery == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), redisTimeout)
	defer cancel()
	if err := in.st.RecordIgnored(ctx, delivery); err != nil {
		in.m.dedupeErrors.Inc()
		in.log.Warn("record ignored delivery", "delivery", delivery, "err", err)
	}
}

func (in *Ingest) reject(w http.ResponseWriter, typ string, code api.Code, msg string) {
	in.m.deliveries.WithLabelValues(eventLabel(typ), "rejected").Inc()
	api.Error(w, code, msg)
}

func (in *Ingest) ignore(w http.ResponseWriter, typ, why string) {
	in.m.deliveries.WithLabelValues(eventLabel(typ), "ignored").Inc()
	api.JSON(w, http.StatusAccepted, map[string]any{"ignored": why})
}

// eventLabel keeps the metric's label set bounded.
func eventLabel(typ string) string {
	switch typ {
	case "push", "ping", "pull_request", "create", "delete":
		return typ
	case "":
		return "none"
	}
	return "other"
}

// Run makes sure the streams exist, retrying until NATS answers, so that
// the first delivery after a cold start can be published (until then
// publishes fail with 503), and runs the GitHub delivery-gap repair loop,
// which idles while the config has no github: section.
func (in *Ingest) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // runs before wg.Wait
	wg.Go(func() { in.repair.Run(ctx) })
	if err := bus.EnsureStreamsRetry(ctx, in.js, in.log); err != nil && ctx.Err() == nil {
		return err
	}
	<-ctx.Done()
	return nil
}
