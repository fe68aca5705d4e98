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
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/go-github/v92/github"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/bus"
	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// MaxBody is GitHub's cap on a webhook payload: 25 MiB.
const MaxBody = 25 << 20

// Config is ingest's environment (prefix OTARIINAE_).
type Config struct {
	GitHubWebhookSecret string `envconfig:"GITHUB_WEBHOOK_SECRET" desc:"secret of GitHub webhooks (a service's secret: overrides it); empty accepts unsigned deliveries"`
	APIToken            string `envconfig:"API_TOKEN" desc:"one more API token, with scope admin"`
}

// Ingest serves the HTTP API.
type Ingest struct {
	cfg  Config
	js   jetstream.JetStream
	st   *store.Store
	conf *config.Live
	log  *slog.Logger
	m    metrics
}

type metrics struct {
	deliveries *prometheus.CounterVec
	publish    prometheus.Histogram
}

// New returns the ingest service.
func New(cfg Config, nc *nats.Conn, st *store.Store, conf *config.Live, log *slog.Logger, reg prometheus.Registerer) (*Ingest, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	in := &Ingest{cfg: cfg, js: js, st: st, conf: conf, log: log}
	in.m = metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otariinae_ingest_deliveries_total",
			Help: "GitHub deliveries by event and result (accepted, duplicate, ignored, rejected, unavailable).",
		}, []string{"event", "result"}),
		publish: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "otariinae_ingest_publish_duration_seconds", Help: "Time from publish to PubAck.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
		}),
	}
	for _, c := range []prometheus.Collector{in.m.deliveries, in.m.publish} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register ingest metrics: %w", err)
		}
	}
	return in, nil
}

// Mount adds the seed routes to r.
func (in *Ingest) Mount(r chi.Router) {
	r.Post("/{org}/{repo}/", in.github)
	r.Post("/{org}/{repo}", in.github)
	r.Get("/{org}/{repo}/deployments/", in.listDeployments)
	r.Get("/{org}/{repo}/deployments", in.listDeployments)
	r.Get("/{org}/{repo}/deployments/{commit}", in.commitDeployments)
	r.Get("/{org}/{repo}/deployments/{commit}/log", in.commitLog)
	in.mountAPI(r)
}

func (in *Ingest) github(w http.ResponseWriter, r *http.Request) {
	repo := chi.URLParam(r, "org") + "/" + chi.URLParam(r, "repo")
	typ := r.Header.Get("X-GitHub-Event")
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
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
	// ValidatePayloadFromBody checks X-Hub-Signature-256 in constant time,
	// and decodes form-encoded (payload=) deliveries.
	sig := r.Header.Get(github.SHA256SignatureHeader)
	if secret == "" {
		sig = "" // no secret configured: nothing to verify against
	}
	payload, err := github.ValidatePayloadFromBody(mt, bytes.NewReader(body), sig, []byte(secret))
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
	case typ == "ping":
		in.m.deliveries.WithLabelValues(typ, "accepted").Inc()
		api.JSON(w, http.StatusOK, map[string]any{"ok": true, "event": "ping"})
		return
	case typ != "push":
		in.ignore(w, typ, "event "+typ+" is not handled")
		return
	case delivery == "" || len(delivery) > 128:
		in.reject(w, typ, api.CodeBadRequest, "the X-GitHub-Delivery header is missing or too long")
		return
	}
	ev, err := github.ParseWebHook(typ, payload)
	if err != nil {
		in.reject(w, typ, api.CodeBadRequest, "malformed push payload: not valid JSON")
		return
	}
	push := ev.(*github.PushEvent)
	if why := in.ignoredPush(push, services); why != "" {
		in.ignore(w, typ, why)
		return
	}
	msg := &nats.Msg{Subject: wire.GitHubSubject(typ), Data: payload, Header: nats.Header{}}
	msg.Header.Set(wire.HeaderGitHubEvent, typ)
	msg.Header.Set(wire.HeaderDelivery, delivery)
	msg.Header.Set(wire.HeaderRepository, repo)
	msg.Header.Set(wire.HeaderReceivedAt, time.Now().UTC().Format(time.RFC3339Nano))
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
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
	if ack.Duplicate {
		in.m.deliveries.WithLabelValues(typ, "duplicate").Inc()
		api.JSON(w, http.StatusOK, map[string]any{"delivery": delivery, "event": typ, "duplicate": true})
		return
	}
	in.m.deliveries.WithLabelValues(typ, "accepted").Inc()
	in.log.Info("delivery accepted", "delivery", delivery, "event", typ, "repository", repo, "ref", push.GetRef(), "commit", push.GetAfter())
	api.JSON(w, http.StatusAccepted, map[string]any{"delivery": delivery, "event": typ})
}

// ignoredPush says why a push deploys nothing, or "" when it deploys.
func (in *Ingest) ignoredPush(push *github.PushEvent, services []*config.Service) string {
	ref := push.GetRef()
	branch, ok := strings.CutPrefix(ref, "refs/heads/")
	switch {
	case !ok:
		return "ref " + ref + " is not a branch"
	case push.GetDeleted():
		return "branch " + branch + " was deleted"
	}
	for _, s := range services {
		if s.TracksBranch(branch) {
			return ""
		}
	}
	return "branch " + branch + " is not tracked by any service"
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
// the first delivery after a cold start can be published. Until then
// publishes fail with 503.
func (in *Ingest) Run(ctx context.Context) error {
	if err := bus.EnsureStreamsRetry(ctx, in.js, in.log); err != nil && ctx.Err() == nil {
		return err
	}
	<-ctx.Done()
	return nil
}
