// Package dispatcher consumes hook requests from the HOOKS stream and POSTs
// each one to its webhook's URL, signed per the Standard Webhooks spec,
// through the SSRF-guarded client of pkg/hook.
//
// This version makes ONE attempt per request: delivered or failed, the
// message is acknowledged and the outcome is logged and counted. Retries on
// the Standard Webhooks schedule (through JetStream redelivery with
// NakWithDelay, honouring Retry-After), dead letters with their attempt log,
// endpoint disable and per-flow ordering are later issues; hook.Outcome
// already says whether an attempt is Retryable so the retry decision slots in
// where handle acks a failure.
//
// Concurrency: the consumer's MaxAckPending bounds the messages held at once
// across all webhooks; each webhook has its own semaphore of max_in_flight
// slots, so a slow endpoint does not slow deliveries to the others until it
// holds all MaxAckPending messages (full per-endpoint isolation is a later
// issue too).
package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shanenoi/otariinae/pkg/bus"
	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/hook"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// Config is the dispatcher's environment (envconfig, prefix OTARIINAE_).
type Config struct {
	// HooksAllowNetworks (OTARIINAE_HOOKS_ALLOW_NETWORKS) lists CIDR prefixes
	// outbound hooks may reach despite the SSRF guard, comma-separated, e.g.
	// "127.0.0.0/8,::1/128" for receivers on the same machine. Default: none.
	HooksAllowNetworks string `split_words:"true" desc:"CIDRs outbound hooks may reach despite the SSRF guard, e.g. 127.0.0.0/8,::1/128"`
}

// SecretFunc returns the signing secret of a webhook that has none in the
// config (the store generates and persists one, the same for every replica).
type SecretFunc func(ctx context.Context, webhook string) (string, error)

// Consumer settings.
const (
	// AckWait is how long a delivered message may stay unacknowledged before
	// JetStream redelivers it. Messages waiting for a slot or in a long
	// delivery are kept alive with InProgress every AckWait/3.
	AckWait = 60 * time.Second
	// MaxAckPending bounds the hook requests one dispatcher group holds.
	MaxAckPending = 256
	// secretRetryDelay is how soon a request comes back when its secret
	// could not be read (a Redis outage): try again later, lose nothing.
	secretRetryDelay = 5 * time.Second
	secretTimeout    = 5 * time.Second
	ackTimeout       = 5 * time.Second
	// maxResponseBody is how much of a receiver's answer is read (and
	// discarded) so that the connection can be reused.
	maxResponseBody = 64 << 10
)

// Metric label values that are not webhook names (nameRE forbids a leading _).
const (
	labelUnknown = "_unknown" // a request for a webhook not in the config
	labelInvalid = "_invalid" // a message that is not a HookRequest
)

// Results (label values of otariinae_dispatcher_deliveries_total).
const (
	resultDelivered = "delivered"
	resultFailed    = "failed"
	resultDropped   = "dropped"
)

// Dispatcher delivers hook requests. Create it with New and call Run once.
type Dispatcher struct {
	nc      *nats.Conn
	secrets SecretFunc
	log     *slog.Logger
	client  *http.Client
	conf    *config.Live
	m       metrics

	mu        sync.Mutex
	built     *config.Config       // the config endpoints were built from
	endpoints map[string]*endpoint // guarded by mu
}

// endpoint is one configured webhook and its concurrency limit.
type endpoint struct {
	name    string
	url     string
	secret  string // empty: ask SecretFunc
	headers map[string]string
	timeout time.Duration
	sem     chan struct{} // max_in_flight slots
}

type metrics struct {
	deliveries *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	inFlight   *prometheus.GaugeVec
}

func newMetrics() metrics {
	return metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otariinae_dispatcher_deliveries_total",
			Help: "Hook requests handled, by webhook and result (delivered, failed, dropped).",
		}, []string{"webhook", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "otariinae_dispatcher_delivery_duration_seconds",
			Help:    "Time of one delivery attempt, from sending the request to reading the answer.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 15, 30, 60},
		}, []string{"webhook"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "otariinae_dispatcher_in_flight",
			Help: "Delivery attempts in progress, by webhook.",
		}, []string{"webhook"}),
	}
}

// New builds a dispatcher for the webhooks in conf, publishing its metrics
// on reg (nil: not registered). secrets may be nil only if every webhook has
// a secret in conf.
func New(cfg Config, nc *nats.Conn, conf *config.Live, secrets SecretFunc, log *slog.Logger, reg prometheus.Registerer) (*Dispatcher, error) {
	if nc == nil {
		return nil, errors.New("dispatcher: no NATS connection")
	}
	if conf == nil {
		return nil, errors.New("dispatcher: no config")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	allow, err := hook.ParseAllow(cfg.HooksAllowNetworks)
	if err != nil {
		return nil, fmt.Errorf("OTARIINAE_HOOKS_ALLOW_NETWORKS: %w", err)
	}
	d := &Dispatcher{
		nc:      nc,
		secrets: secrets,
		log:     log,
		client:  hook.NewClient(allow),
		conf:    conf,
		m:       newMetrics(),
	}
	if err := d.rebuild(conf.Get()); err != nil {
		return nil, err
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{d.m.deliveries, d.m.duration, d.m.inFlight} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register dispatcher metrics: %w", err)
			}
		}
	}
	return d, nil
}

// ConsumerConfig is the durable consumer every dispatcher replica shares.
func ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       bus.ConsumerDispatcher,
		Description:   "dispatcher: delivers hook requests to webhooks",
		FilterSubject: wire.SubjectHooksAll,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       AckWait,
		MaxAckPending: MaxAckPending,
	}
}

// Run consumes hook requests until ctx ends. On shutdown it stops fetching,
// hands back (Nak) requests still waiting for a slot, lets deliveries in
// progress finish (each bounded by its webhook's timeout) and returns nil.
func (d *Dispatcher) Run(ctx context.Context) error {
	defer d.client.CloseIdleConnections()
	js, err := jetstream.New(d.nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	if err := bus.EnsureStreamsRetry(ctx, js, d.log); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	cons, err := d.ensureConsumer(ctx, js)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	// wg counts handler goroutines. Add happens only inside the consume
	// callback, and Wait only after the consumer is Closed, when no callback
	// can run any more.
	var wg sync.WaitGroup
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.handle(ctx, msg)
		}()
	},
		jetstream.PullMaxMessages(64),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			// Mostly transient (missed heartbeats during a reconnect): the
			// consumer keeps going by itself.
			d.log.WarnContext(ctx, "hook consumer", "err", err)
		}),
	)
	if err != nil {
		return fmt.Errorf("consume %s/%s: %w", wire.StreamHooks, bus.ConsumerDispatcher, err)
	}
	d.log.InfoContext(ctx, "dispatcher consuming", "stream", wire.StreamHooks, "consumer", bus.ConsumerDispatcher, "webhooks", len(d.conf.Get().Webhooks))

	<-ctx.Done()
	// Messages buffered but not yet handed to the callback are dropped by
	// Stop and come back after AckWait.
	cc.Stop()
	<-cc.Closed()
	wg.Wait()
	d.log.InfoContext(context.WithoutCancel(ctx), "dispatcher stopped")
	return nil
}

func (d *Dispatcher) ensureConsumer(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, error) {
	delay := 250 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cons, err := js.CreateOrUpdateConsumer(cctx, wire.StreamHooks, ConsumerConfig())
		cancel()
		if err == nil {
			return cons, nil
		}
		if ctx.Err() != nil {
			return nil, errors.Join(ctx.Err(), err)
		}
		d.log.WarnContext(ctx, "waiting for hook consumer", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// handle takes one message to its end: dropped (Term), handed back (Nak) or
// attempted and acknowledged. ctx is Run's: once it ends nothing new starts,
// but an attempt already under way runs to its own timeout.
func (d *Dispatcher) handle(ctx context.Context, msg jetstream.Msg) {
	// Keep the message ours while it waits for a slot or a slow receiver.
	stop := keepAlive(msg, AckWait/3)
	defer stop()

	var req wire.HookRequest
	if err := json.Unmarshal(msg.Data(), &req); err != nil {
		d.drop(ctx, msg, labelInvalid, "malformed hook request", slog.String("subject", msg.Subject()), slog.Any("err", err))
		return
	}
	ep, err := d.endpoint(req.Webhook)
	if err != nil {
		d.log.ErrorContext(ctx, "webhook config", "err", err)
	}
	if ep == nil {
		d.drop(ctx, msg, labelUnknown, "hook request for a webhook not in the config",
			slog.String("webhook", req.Webhook), slog.String("hook_id", req.ID))
		return
	}
	log := d.log.With("webhook", ep.name, "hook_id", req.ID, "type", req.Type, "flow_id", req.FlowID)
	if ctx.Err() != nil {
		d.handBack(ctx, log, msg)
		return
	}

	secret := ep.secret
	if secret == "" {
		sctx, cancel := context.WithTimeout(ctx, secretTimeout)
		s, err := d.secrets(sctx, ep.name)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				d.handBack(ctx, log, msg)
				return
			}
			log.WarnContext(ctx, "webhook secret unavailable; retrying later", "err", err, "retry_in", secretRetryDelay)
			if err := msg.NakWithDelay(secretRetryDelay); err != nil {
				log.WarnContext(ctx, "nak hook request", "err", err)
			}
			return
		}
		secret = s
	}

	select {
	case ep.sem <- struct{}{}:
	case <-ctx.Done():
		d.handBack(ctx, log, msg)
		return
	}
	if ctx.Err() != nil { // both ready: shutting down wins
		<-ep.sem
		d.handBack(ctx, log, msg)
		return
	}
	res, took, err := d.attempt(context.WithoutCancel(ctx), ep, req, secret)
	<-ep.sem

	attrs := []any{"duration", took, "status", res.Status}
	if res.Delivered {
		d.m.deliveries.WithLabelValues(ep.name, resultDelivered).Inc()
		log.DebugContext(ctx, "hook delivered", attrs...)
	} else {
		d.m.deliveries.WithLabelValues(ep.name, resultFailed).Inc()
		attrs = append(attrs, "reason", res.Reason, "retryable", res.Retryable)
		if err != nil {
			// Never the raw client error: it quotes the URL, which may hold a token.
			attrs = append(attrs, "err", hook.SafeError(err))
		}
		log.WarnContext(ctx, "hook delivery failed; not retried in this version", attrs...)
	}
	// One attempt: done either way.
	d.ack(ctx, log, msg)
}

// attempt makes one signed POST of req.Body, exactly as given, bounded by
// the webhook's timeout.
func (d *Dispatcher) attempt(ctx context.Context, ep *endpoint, req wire.HookRequest, secret string) (hook.Result, time.Duration, error) {
	g := d.m.inFlight.WithLabelValues(ep.name)
	g.Inc()
	defer g.Dec()
	ctx, cancel := context.WithTimeout(ctx, ep.timeout)
	defer cancel()
	start := time.Now()
	status, err := d.post(ctx, ep, req, secret, start)
	took := time.Since(start)
	d.m.duration.WithLabelValues(ep.name).Observe(took.Seconds())
	return hook.Outcome(status, err), took, err
}

func (d *Dispatcher) post(ctx context.Context, ep *endpoint, req wire.HookRequest, secret string, at time.Time) (int, error) {
	hr, err := hook.NewRequest(ctx, ep.url, req.ID, at, req.Body, secret, ep.headers)
	if err != nil {
		return 0, err
	}
	resp, err := d.client.Do(hr)
	if err != nil {
		if resp != nil {
			resp.Body.Close()
		}
		return 0, err
	}
	defer resp.Body.Close()
	// Drain a bounded amount so the connection can be reused; a receiver
	// that stalls its body is cut by the attempt's timeout.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBody))
	return resp.StatusCode, nil
}

func (d *Dispatcher) drop(ctx context.Context, msg jetstream.Msg, label, why string, attrs ...any) {
	d.m.deliveries.WithLabelValues(label, resultDropped).Inc()
	d.log.ErrorContext(ctx, why+"; dropped", attrs...)
	if err := msg.TermWithReason(why); err != nil {
		d.log.WarnContext(ctx, "term hook request", "err", err)
	}
}

// handBack returns a message to JetStream at shutdown so that another
// replica (or this one, restarted) delivers it without waiting for AckWait.
func (d *Dispatcher) handBack(ctx context.Context, log *slog.Logger, msg jetstream.Msg) {
	if err := msg.Nak(); err != nil {
		log.WarnContext(ctx, "nak hook request at shutdown", "err", err)
	}
}

func (d *Dispatcher) ack(ctx context.Context, log *slog.Logger, msg jetstream.Msg) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ackTimeout)
	defer cancel()
	// DoubleAck: a lost ack means a duplicate delivery (same webhook-id, so
	// receivers can tell), and we want to know when that can happen.
	if err := msg.DoubleAck(actx); err != nil {
		log.WarnContext(ctx, "ack hook request; it may be delivered again", "err", err)
	}
}

// keepAlive tells JetStream every interval that msg is still being worked
// on, until the returned stop is called (which waits for it to finish).
func keepAlive(msg jetstream.Msg, interval time.Duration) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// rebuild makes the endpoints of c, keeping the concurrency slots of
// webhooks whose limit did not change, so deliveries in progress still
// count against the limit after a reload.
func (d *Dispatcher) rebuild(c *config.Config) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	eps := make(map[string]*endpoint, len(c.Webhooks))
	for _, w := range c.Webhooks {
		if w.Secret == "" && d.secrets == nil {
			return fmt.Errorf("webhook %s has no secret and no secret store was given", w.Name)
		}
		n := w.MaxInFlight
		if n <= 0 {
			n = config.DefaultMaxInFlight
		}
		timeout := w.Timeout.D()
		if timeout <= 0 {
			timeout = config.DefaultWebhookTimeout
		}
		sem := make(chan struct{}, n)
		if old := d.endpoints[w.Name]; old != nil && cap(old.sem) == n {
			sem = old.sem
		}
		eps[w.Name] = &endpoint{
			name: w.Name, url: w.URL, secret: w.Secret, headers: w.Headers,
			timeout: timeout, sem: sem,
		}
		// Start every configured webhook's series at zero so rates and
		// absent() alerts work before the first delivery.
		for _, r := range []string{resultDelivered, resultFailed, resultDropped} {
			d.m.deliveries.WithLabelValues(w.Name, r)
		}
		d.m.inFlight.WithLabelValues(w.Name)
	}
	d.endpoints, d.built = eps, c
	return nil
}

// endpoint returns the endpoint of a webhook in the configuration in
// force, rebuilding the set after a reload.
func (d *Dispatcher) endpoint(name string) (*endpoint, error) {
	c := d.conf.Get()
	d.mu.Lock()
	stale := d.built != c
	d.mu.Unlock()
	var err error
	if stale {
		err = d.rebuild(c)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.endpoints[name], err
}
