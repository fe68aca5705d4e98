package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shanenoi/otariinae/pkg/bus"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// Timings of the job protocol.
const (
	// consumerAckWait is how long the server waits for an ack before it
	// redelivers a job; progressInterval keeps a running job well inside it.
	consumerAckWait  = 60 * time.Second
	progressInterval = 20 * time.Second
	// fetchWait is how long one pull request waits for a job.
	fetchWait = 30 * time.Second
	// logFlushTimeout bounds the wait for a job's log lines to be stored
	// before its finished report goes out.
	logFlushTimeout = 30 * time.Second
	// reportGrace is how long reports and acks are still retried after the
	// agent was told to stop: an unreported job is redelivered, so it is
	// worth a few seconds.
	reportGrace = 10 * time.Second
	// defaultJobTimeout applies when a job carries none.
	defaultJobTimeout = 30 * time.Minute
)

// Heartbeat states.
const (
	stateIdle     = "idle"
	stateBusy     = "busy"
	stateDraining = "draining"
)

// Agent pulls this host's jobs and runs them, one at a time.
type Agent struct {
	id        string
	hostname  string
	labels    map[string]string
	workdir   string
	heartbeat time.Duration
	grace     time.Duration
	version   string

	nc      *nats.Conn
	js      jetstream.JetStream
	cancels jetstream.KeyValue // set by Run once JetStream answers
	log     *slog.Logger
	m       *metrics

	running atomic.Int32
	// kick asks the heartbeat loop for an immediate heartbeat (the state
	// changed); it holds at most one pending request.
	kick    chan struct{}
	started atomic.Bool
	// asyncFailures counts log lines JetStream did not acknowledge.
	asyncFailures atomic.Int64
}

// New checks cfg and builds an agent on nc. It registers the agent's metrics
// on reg (nil: no metrics). It starts nothing: call Run.
func New(cfg Config, nc *nats.Conn, log *slog.Logger, reg prometheus.Registerer, version string) (*Agent, error) {
	if nc == nil {
		return nil, errors.New("agent: nil nats connection")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if v, ok := mustParse(cfg.Labels)[LabelAgent]; ok && v != r.id {
		log.Warn("label agent is always the agent id; ignoring the configured value", "agent_id", r.id, "label_value", v)
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	a := &Agent{
		id: r.id, hostname: r.hostname, labels: r.labels, workdir: r.workdir,
		heartbeat: r.heartbeat, grace: r.grace, version: version,
		nc: nc, log: log.With("agent_id", r.id), m: m,
		kick: make(chan struct{}, 1),
	}
	a.js, err = jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(1024),
		jetstream.WithPublishAsyncTimeout(logFlushTimeout),
		jetstream.WithPublishAsyncErrHandler(a.asyncPublishFailed),
	)
	if err != nil {
		return nil, fmt.Errorf("agent jetstream: %w", err)
	}
	return a, nil
}

// mustParse re-parses labels already validated by resolve.
func mustParse(s string) map[string]string {
	l, _ := ParseLabels(s)
	return l
}

// ID is the agent's id (the configured one, or the sanitized hostname).
func (a *Agent) ID() string { return a.id }

// Labels returns a copy of the agent's labels, implicit ones included.
func (a *Agent) Labels() map[string]string {
	out := make(map[string]string, len(a.labels))
	for k, v := range a.labels {
		out[k] = v
	}
	return out
}

func (a *Agent) asyncPublishFailed(_ jetstream.JetStream, msg *nats.Msg, err error) {
	// Log the first failure and then one in a thousand: an outage must not
	// turn every output line into a log record.
	if n := a.asyncFailures.Add(1); n == 1 || n%1000 == 0 {
		a.log.Warn("log line not stored", "subject", msg.Subject, "failures", n, "err", err)
	}
}

// Run announces the agent and runs its jobs until ctx is done, then shuts
// down: it stops fetching, heartbeats "draining", lets a running job finish
// within the shutdown grace, stops it otherwise, and reports it. It returns
// nil on a clean shutdown (including one before NATS was ever reachable).
func (a *Agent) Run(ctx context.Context) error {
	if !a.started.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}
	if err := os.MkdirAll(a.workdir, 0o755); err != nil {
		return fmt.Errorf("create agent workdir: %w", err)
	}
	a.forgetOldDone()

	// Presence does not wait for JetStream: heartbeats start first.
	hbStop, hbDone := make(chan struct{}), make(chan struct{})
	go a.heartbeats(ctx, hbStop, hbDone)
	defer func() {
		close(hbStop)
		<-hbDone
	}()

	if err := bus.EnsureStreamsRetry(ctx, a.js, a.log); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("agent streams: %w", err)
	}
	kv, err := a.js.KeyValue(ctx, wire.BucketCancels)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("open bucket %s: %w", wire.BucketCancels, err)
	}
	a.cancels = kv
	// An engine that starts asks the fleet to announce itself.
	announce, err := a.nc.Subscribe(wire.SubjectAnnounce, func(*nats.Msg) { a.kickHeartbeat() })
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", wire.SubjectAnnounce, err)
	}
	defer func() { _ = announce.Unsubscribe() }()
	cons, err := a.ensureConsumer(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	a.log.InfoContext(ctx, "agent ready", "hostname", a.hostname, "workdir", a.workdir,
		"consumer", bus.AgentConsumer(a.id), "version", a.version)

	for ctx.Err() == nil {
		if err := a.fetch(ctx, cons); err != nil {
			a.log.WarnContext(ctx, "fetch job", "err", err)
			if !sleepCtx(ctx, time.Second) {
				break
			}
			// The consumer may have been deleted; recreating it is idempotent.
			if c, err := a.ensureConsumer(ctx); err == nil {
				cons = c
			}
		}
	}
	a.log.Info("agent stopped")
	return nil
}

// ensureConsumer creates or updates the agent's durable consumer, retrying
// until it succeeds or ctx ends.
func (a *Agent) ensureConsumer(ctx context.Context) (jetstream.Consumer, error) {
	cfg := jetstream.ConsumerConfig{
		Durable:       bus.AgentConsumer(a.id),
		Description:   "jobs of agent " + a.id,
		FilterSubject: wire.JobSubject(a.id),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       consumerAckWait,
		// One job at a time: the server holds the next one back until this
		// one is acknowledged.
		MaxAckPending: 1,
		MaxDeliver:    -1,
	}
	delay := 250 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cons, err := a.js.CreateOrUpdateConsumer(cctx, wire.StreamJobs, cfg)
		cancel()
		if err == nil {
			return cons, nil
		}
		if ctx.Err() != nil {
			return nil, errors.Join(ctx.Err(), err)
		}
		a.log.WarnContext(ctx, "waiting for job consumer", "consumer", cfg.Durable, "err", err, "retry_in", delay)
		if !sleepCtx(ctx, delay) {
			return nil, ctx.Err()
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// fetch waits for one job and handles it. A job that arrives after ctx is
// done is handed back untouched.
func (a *Agent) fetch(ctx context.Context, cons jetstream.Consumer) error {
	fctx, cancel := context.WithTimeout(ctx, fetchWait)
	defer cancel()
	batch, err := cons.Fetch(1, jetstream.FetchContext(fctx))
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	for msg := range batch.Messages() {
		if ctx.Err() != nil {
			_ = msg.Nak()
			continue
		}
		a.handle(ctx, msg)
	}
	err = batch.Error()
	if err == nil || ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
		return nil
	}
	return err
}

// heartbeats publishes a heartbeat at once, then every interval and on
// every kick, over core NATS. Once ctx is done the state is "draining"
// (sent at once) until stop is closed, when a last one goes out.
func (a *Agent) heartbeats(ctx context.Context, stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	a.sendHeartbeat(false)
	if err := a.nc.FlushTimeout(5 * time.Second); err != nil {
		a.log.Warn("flush first heartbeat", "err", err)
	}
	ticker := time.NewTicker(a.heartbeat)
	defer ticker.Stop()
	ctxDone := ctx.Done()
	draining := false
	for {
		select {
		case <-stop:
			a.sendHeartbeat(true)
			if err := a.nc.FlushTimeout(2 * time.Second); err != nil {
				a.log.Warn("flush last heartbeat", "err", err)
			}
			return
		case <-ctxDone:
			ctxDone = nil // fires once
			draining = true
			a.sendHeartbeat(true)
			_ = a.nc.FlushTimeout(2 * time.Second)
		case <-ticker.C:
			a.sendHeartbeat(draining)
		case <-a.kick:
			a.sendHeartbeat(draining)
		}
	}
}

func (a *Agent) sendHeartbeat(draining bool) {
	jobs := int(a.running.Load())
	state := stateIdle
	switch {
	case draining:
		state = stateDraining
	case jobs > 0:
		state = stateBusy
	}
	hb := wire.Heartbeat{
		ID: a.id, Hostname: a.hostname, Labels: a.labels, Version: a.version,
		State: state, Jobs: jobs, At: time.Now().UTC(),
	}
	data, err := json.Marshal(hb)
	if err != nil {
		a.log.Error("encode heartbeat", "err", err)
		return
	}
	if err := a.nc.Publish(wire.HeartbeatSubject(a.id), data); err != nil {
		a.log.Warn("publish heartbeat", "state", state, "err", err)
	}
}

// kickHeartbeat asks for a heartbeat now, without waiting.
func (a *Agent) kickHeartbeat() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// sleepCtx waits d or until ctx is done, reporting whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// afterDone returns a context that is not cancelled with parent but d after
// it, with cause. It lets work outlive a shutdown signal by a grace period.
// The returned cancel releases it early.
func afterDone(parent context.Context, d time.Duration, cause error) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(parent))
	var (
		mu      sync.Mutex
		timer   *time.Timer
		stopped bool
	)
	stopAfter := context.AfterFunc(parent, func() {
		mu.Lock()
		defer mu.Unlock()
		if !stopped {
			timer = time.AfterFunc(d, func() { cancel(cause) })
		}
	})
	return ctx, func() {
		stopAfter()
		mu.Lock()
		stopped = true
		if timer != nil {
			timer.Stop()
		}
		mu.Unlock()
		cancel(context.Canceled)
	}
}
