// Package engine is the thin shell around pkg/flow: it consumes EVENTS,
// loads a flow from Redis, applies the event, writes the new state with its
// outbox and an applied-event marker in one Lua step, carries out the
// outbox (publishes to JOBS, HOOKS and EVENTS with deterministic message
// ids, schedules timers, hands environments over), and only then acks.
//
// A crash anywhere replays to the same result: an event whose state write
// landed is recognised by its marker and only its outbox is carried out
// again; JetStream drops republished messages by their ids and every other
// outbox operation is idempotent. Replicas share one durable consumer; a
// stale replica loses the revision check and retries.
package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shanenoi/otariinae/pkg/bus"
	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// Config is the engine's environment (prefix OTARIINAE_).
type Config struct {
	AgentLostAfter time.Duration `split_words:"true" default:"30s" desc:"an agent silent this long gets no new jobs"`
	AckWait        time.Duration `envconfig:"ENGINE_ACK_WAIT" default:"30s" desc:"redeliver an event not acked in this time"`
	Workers        int           `envconfig:"ENGINE_WORKERS" default:"512" desc:"events applied concurrently by this replica (their Redis calls share pipelines)"`
	TimerInterval  time.Duration `envconfig:"ENGINE_TIMER_INTERVAL" default:"1s" desc:"how often due timers (soaks, promotion timeouts) are fired"`
}

// Engine runs the flow state machine over the EVENTS stream.
type Engine struct {
	cfg     Config
	nc      *nats.Conn
	js      jetstream.JetStream
	cancels jetstream.KeyValue
	st      *store.Store
	conf    *config.Live
	log     *slog.Logger
	m       metrics
	now     func() time.Time
	// agents caches the online agents for agentsTTL; a heartbeat that this
	// replica records clears it.
	agentsMu sync.Mutex
	agentsAt time.Time
	agents   []flow.Agent

	cache *flowCache
	locks *flowLocks

	// consumingFunc, when set (benchmarks only), runs once the engine is
	// set up (streams, bucket, consumer, workers), just before it pulls
	// its first events.
	consumingFunc func()
	// ackedFunc, when set (benchmarks only), runs after each event acked.
	ackedFunc func()

	// drainGiveUp is the constant drainGiveUp; tests change it.
	drainGiveUp time.Duration

	// afterCommitFunc, when set (tests only), runs between the state write
	// and the outbox; an error there stands for a crash.
	afterCommitFunc func() error
}

type metrics struct {
	events *prometheus.CounterVec
	// eventsBy and publishedBy hold the counters of every known label
	// value, made at start: the series exist at zero, and the hot path
	// does not hash labels.
	eventsBy    map[[2]string]prometheus.Counter
	publishedBy map[string]prometheus.Counter
	conflicts   prometheus.Counter
	apply       prometheus.Histogram
	published   *prometheus.CounterVec
	heartbeat   prometheus.Counter
	timers      prometheus.Counter
}

// New returns an engine. It registers its metrics on reg.
func New(cfg Config, nc *nats.Conn, st *store.Store, conf *config.Live, log *slog.Logger, reg prometheus.Registerer) (*Engine, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if cfg.AgentLostAfter <= 0 {
		cfg.AgentLostAfter = store.DefaultAgentLostAfter
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 512
	}
	if cfg.TimerInterval <= 0 {
		cfg.TimerInterval = time.Second
	}
	e := &Engine{cfg: cfg, nc: nc, js: js, st: st, conf: conf, log: log, now: time.Now, cache: newFlowCache(10000), locks: newFlowLocks(), drainGiveUp: drainGiveUp}
	e.m = metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otariinae_engine_events_total", Help: "Events consumed, by kind and result (applied, duplicate, rejected, retried).",
		}, []string{"kind", "result"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otariinae_engine_apply_conflicts_total", Help: "State writes that lost the revision check and were retried.",
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "otariinae_engine_apply_duration_seconds", Help: "Time to load, apply, commit and carry out the outbox of one event.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otariinae_engine_outbox_total", Help: "Outbox operations carried out, by operation.",
		}, []string{"op"}),
		heartbeat: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otariinae_engine_heartbeats_total", Help: "Agent heartbeats recorded.",
		}),
		timers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otariinae_engine_timers_fired_total", Help: "Timers (soaks, promotion timeouts) fired.",
		}),
	}
	e.m.eventsBy = make(map[[2]string]prometheus.Counter)
	for _, kind := range []string{"github", "job", "artifact", "trigger", "internal", "other"} {
		for _, result := range []string{"applied", "duplicate", "rejected", "retried"} {
			e.m.eventsBy[[2]string{kind, result}] = e.m.events.WithLabelValues(kind, result)
		}
	}
	e.m.publishedBy = make(map[string]prometheus.Counter)
	for _, op := range []string{opPublish, opTimer, opSlot, opRelease, opSucceeded, opCancel, opSupersede} {
		e.m.publishedBy[op] = e.m.published.WithLabelValues(op)
	}
	for _, c := range []prometheus.Collector{e.m.events, e.m.conflicts, e.m.apply, e.m.published, e.m.heartbeat, e.m.timers} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register engine metrics: %w", err)
		}
	}
	return e, nil
}

// event counts one event by kind and result.
func (m *metrics) event(kind, result string) {
	if c, ok := m.eventsBy[[2]string{kind, result}]; ok {
		c.Inc()
		return
	}
	m.events.WithLabelValues(kind, result).Inc()
}

// done counts one outbox operation carried out.
func (m *metrics) done(op string) {
	if c, ok := m.publishedBy[op]; ok {
		c.Inc()
		return
	}
	m.published.WithLabelValues(op).Inc()
}

// ConsumerConfig is the durable consumer every engine replica shares.
func (e *Engine) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       bus.ConsumerEngine,
		Description:   "flow engine replicas",
		FilterSubject: wire.SubjectEventsAll,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       e.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 4096,
	}
}

// Run consumes events until ctx ends. Work in hand when ctx ends is
// finished; events pulled but not started are given back (Nak), for
// another replica or the next start.
func (e *Engine) Run(ctx context.Context) error {
	if err := bus.EnsureStreamsRetry(ctx, e.js, e.log); err != nil {
		return nil // ctx ended before NATS came up
	}
	kv, err := e.js.KeyValue(ctx, wire.BucketCancels)
	if ctx.Err() != nil {
		return nil // stopped while starting
	}
	if err != nil {
		return fmt.Errorf("open bucket %s: %w", wire.BucketCancels, err)
	}
	e.cancels = kv
	cons, err := e.js.CreateOrUpdateConsumer(ctx, wire.StreamEvents, e.ConsumerConfig())
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create engine consumer: %w", err)
	}
	sub, err := e.nc.QueueSubscribe(wire.SubjectHeartbeatAll, wire.QueueEngine, e.heartbeat)
	if err != nil {
		return fmt.Errorf("subscribe heartbeats: %w", err)
	}
	defer func() { _ = sub.Drain() }()
	// Ask the fleet to announce itself now rather than at its next beat.
	if err := e.nc.Publish(wire.SubjectAnnounce, nil); err != nil {
		e.log.Warn("ask agents to announce", "err", err)
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		e.runTimers(ctx)
	}()
	e.log.Info("engine consuming", "stream", wire.StreamEvents, "consumer", bus.ConsumerEngine, "workers", e.cfg.Workers)
	// Workers apply events concurrently; the revision check serialises
	// writers of one flow, so order between flows does not matter and
	// order within a flow is kept by the model (reports may overtake).
	msgs := make(chan jetstream.Msg)
	for range e.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for msg := range msgs {
				// In-flight work finishes even when ctx ends: a step is
				// never half-done by shutdown.
				e.Handle(context.WithoutCancel(ctx), msg)
			}
		}()
	}
	defer wg.Wait()
	defer close(msgs)
	if e.consumingFunc != nil {
		e.consumingFunc()
	}
	for ctx.Err() == nil {
		if err := e.consume(ctx, cons, msgs); err != nil {
			// The consumer was deleted, or the connection closed for
			// good: make it again rather than stop applying events.
			e.log.Warn("event consumer lost; recreating it", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			if c, err := e.js.CreateOrUpdateConsumer(ctx, wire.StreamEvents, e.ConsumerConfig()); err == nil {
				cons = c
			}
		}
	}
	return nil
}

// consume feeds the workers from cons until ctx ends (nil) or the
// iterator closes underneath (an error). When ctx ends, the events pulled
// but not yet handed to a worker are given back (nak), so that another
// replica applies them now rather than after AckWait.
func (e *Engine) consume(ctx context.Context, cons jetstream.Consumer, msgs chan<- jetstream.Msg) error {
	// Short pulls with heartbeats: a lost consumer or connection shows
	// within seconds, not at the 30 s default expiry. At most 2×workers
	// events buffered, so that replicas share MaxAckPending. (A byte cap,
	// PullMaxMessagesWithBytesLimit, made nats.go v1.55.0 overflow its own
	// buffer under load and drop events: see docs/architecture.md.)
	it, err := cons.Messages(jetstream.PullMaxMessages(2*e.cfg.Workers),
		jetstream.PullExpiry(10*time.Second), jetstream.PullHeartbeat(3*time.Second))
	if err != nil {
		return fmt.Errorf("consume events: %w", err)
	}
	// At stop: Drain, not Stop, so that the buffered events stay readable
	// and can be given back; but give up after a while (a server that
	// stopped answering), and at once when NATS is unreachable anyway.
	giveUp, cancelGiveUp := context.WithCancel(context.Background())
	defer cancelGiveUp()
	var giveUpTimer atomic.Pointer[time.Timer]
	defer func() {
		if t := giveUpTimer.Load(); t != nil {
			t.Stop()
		}
	}()
	stop := context.AfterFunc(ctx, func() {
		if !e.nc.IsConnected() {
			it.Stop()
			cancelGiveUp()
			return
		}
		it.Drain()
		giveUpTimer.Store(time.AfterFunc(e.drainGiveUp, cancelGiveUp))
	})
	defer stop()
	defer it.Stop()
	// Events to give back are Nak'd only once the drain is over: while
	// this replica's pull request is still open, the server would hand a
	// Nak'd event straight back to it, over and over, each time counting
	// one more delivery (and an event that overtook its flow's create is
	// given only a few).
	var handBack []jetstream.Msg
	defer func() {
		for _, m := range handBack {
			if err := m.Nak(); err != nil {
				e.log.Warn("give back an event at stop", "subject", m.Subject(), "err", err)
			}
		}
	}()
	for {
		msg, err := it.Next(jetstream.NextContext(giveUp))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, jetstream.ErrConsumerDeleted) {
				return err
			}
			e.log.Warn("next event", "err", err)
			// Missed heartbeats are usually a reconnect; they are also how a
			// deleted consumer can show itself. Ask.
			ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, ierr := cons.Info(ictx)
			cancel()
			if errors.Is(ierr, jetstream.ErrConsumerNotFound) {
				return ierr
			}
			continue
		}
		if ctx.Err() == nil {
			select {
			case msgs <- msg:
				continue
			case <-ctx.Done():
			}
		}
		handBack = append(handBack, msg)
	}
}

// drainGiveUp bounds how long a stopping engine waits to give back the
// events it pulled: past it, they come back after AckWait instead.
const drainGiveUp = 2 * time.Second

// target is one flow an event applies to.
type target struct {
	flowID  string
	eventID string
	event   flow.Event
}

// Handle applies one EVENTS message and acks, naks or terminates it.
func (e *Engine) Handle(ctx context.Context, msg jetstream.Msg) {
	start := time.Now()
	defer func() { e.m.apply.Observe(time.Since(start).Seconds()) }()
	kind := eventKind(msg.Subject())
	meta, err := msg.Metadata()
	if err != nil {
		e.log.Error("event without metadata", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	// The stream's timestamp: the same on every redelivery, so a replay
	// computes the same state and the same effects.
	at := meta.Timestamp.UTC()
	targets, err := e.decode(ctx, msg)
	if errors.Is(err, errRetry) {
		e.m.event(kind, "retried")
		e.log.Warn("event failed, will retry", "subject", msg.Subject(), "err", err)
		_ = msg.NakWithDelay(2 * time.Second)
		return
	}
	if err != nil {
		e.m.event(kind, "rejected")
		e.log.Warn("event rejected", "subject", msg.Subject(), "stream_seq", meta.Sequence.Stream, "err", err)
		_ = msg.TermWithReason(err.Error())
		return
	}
	for _, t := range targets {
		result, err := e.apply(ctx, t, at)
		if err != nil {
			if errors.Is(err, errPermanent) && errors.Is(err, flow.ErrNotFound) && meta.NumDelivered < notFoundRetries {
				// An event can overtake the one that creates what it names
				// (replicas apply concurrently): give it a few more tries.
				e.m.event(kind, "retried")
				_ = msg.NakWithDelay(time.Second)
				return
			}
			if errors.Is(err, errPermanent) {
				e.m.event(kind, "rejected")
				e.log.Warn("event not applicable", "flow_id", t.flowID, "event_id", t.eventID, "err", err)
				continue
			}
			e.m.event(kind, "retried")
			e.log.Warn("event failed, will retry", "flow_id", t.flowID, "event_id", t.eventID, "err", err)
			_ = msg.NakWithDelay(2 * time.Second)
			return
		}
		e.m.event(kind, result)
	}
	if err := msg.Ack(); err != nil {
		e.log.Warn("ack event", "err", err)
	}
	if e.ackedFunc != nil {
		e.ackedFunc()
	}
}

func eventKind(subject string) string {
	switch {
	case strings.HasPrefix(subject, wire.SubjectGitHubPrefix):
		return "github"
	case subject == wire.SubjectJobReport:
		return "job"
	case subject == wire.SubjectArtifact:
		return "artifact"
	case subject == wire.SubjectTrigger:
		return "trigger"
	case subject == wire.SubjectInternal:
		return "internal"
	}
	return "other"
}

// notFoundRetries is how often an event naming a missing flow, deployment
// or job is tried before it is dropped.
const notFoundRetries = 5

var (
	errPermanent = errors.New("permanent")
	errRetry     = errors.New("retry")
)

// permanent marks an error that no retry can fix.
func permanent(err error) error { return fmt.Errorf("%w: %w", errPermanent, err) }

// maxConflicts bounds the optimistic retry loop: a flow hotly contended by
// many replicas still converges, and a bug cannot spin forever.
const maxConflicts = 50

// apply applies one event to one flow and carries out the outbox. It
// returns "applied" or "duplicate".
func (e *Engine) apply(ctx context.Context, t target, at time.Time) (string, error) {
	// Writers of the flow in this replica take turns from load to commit;
	// the outbox is carried out after, so that a slow NATS never holds
	// the flow's other events (and their workers) behind it.
	unlock := e.locks.lock(t.flowID)
	w, err := e.write(ctx, t, at)
	unlock()
	if err != nil {
		return "", err
	}
	if w.result == "applied" && e.afterCommitFunc != nil {
		if err := e.afterCommitFunc(); err != nil {
			return "", err
		}
	}
	if w.replay {
		return w.result, e.replay(ctx, t.flowID, w.index)
	}
	return w.result, e.runOutbox(ctx, t.flowID, w.writes, w.index)
}

// written is what a state write leaves to carry out.
type written struct {
	result string // "applied" or "duplicate"
	// replay: carry out the whole stored outbox (a duplicate, or earlier
	// writers' entries still queued), not only writes.
	replay bool
	writes []outbox
	// index is the flow to index with the trim (nil: none, or, on a
	// replay, read it).
	index *flow.Flow
}

// write loads the flow, applies the event and commits the new state with
// its outbox, retrying on a lost revision check.
func (e *Engine) write(ctx context.Context, t target, at time.Time) (written, error) {
	_, isCreate := t.event.(flow.CreateFlow)
	for attempt := 0; ; attempt++ {
		if attempt == maxConflicts {
			return written{}, fmt.Errorf("flow %s: %d write conflicts in a row", t.flowID, attempt)
		}
		// unverified: ld is this replica's copy of the flow, or a guess,
		// not read from Redis now; the commit's revision check catches a
		// wrong one.
		ld, unverified := e.cache.get(t.flowID)
		guessedNew := false
		if !unverified && isCreate && attempt == 0 {
			// A create most often makes a new flow: write it as one
			// (revision 0) without reading first. The commit refuses if
			// the flow exists or the event was applied; then we read.
			ld, unverified, guessedNew = store.Loaded{}, true, true
		}
		if !unverified || attempt > 0 {
			var err error
			if ld, err = e.st.LoadFlow(ctx, t.flowID, t.eventID); err != nil {
				return written{}, err
			}
		}
		if ld.Applied || (isCreate && ld.Flow != nil) {
			// Written before (a redelivery, or a crash after the write):
			// only the outbox may be left to carry out. Index what is
			// stored, not this replica's copy, which may be stale.
			f := ld.Flow
			if unverified {
				f = nil
			}
			return written{result: "duplicate", replay: true, index: f}, nil
		}
		in, err := e.input(ctx, ld.Flow, t.event, at)
		if err != nil {
			return written{}, err
		}
		next, effects, err := flow.Apply(ld.Flow, t.event, in)
		if err != nil {
			if unverified && attempt == 0 {
				// Judge the event on the stored state, not on this
				// replica's copy, which another replica may have outrun.
				e.cache.drop(t.flowID)
				continue
			}
			return written{}, permanent(err)
		}
		ob, err := e.render(next, effects, t.eventID, at)
		if err != nil {
			return written{}, permanent(err)
		}
		c, err := e.st.Commit(ctx, next, ld.Rev, t.eventID, ob.raw)
		if errors.Is(err, store.ErrConflict) {
			if !guessedNew {
				// Another writer (a replica, or this one before the cache
				// was current) moved the flow on: read it and apply again.
				e.m.conflicts.Inc()
			}
			e.cache.drop(t.flowID)
			continue
		}
		if errors.Is(err, store.ErrAlreadyApplied) {
			e.cache.drop(t.flowID)
			return written{result: "duplicate", replay: true}, nil
		}
		if err != nil {
			e.cache.drop(t.flowID)
			return written{}, err
		}
		e.cache.put(next, c.Rev)
		// Indexes live in other cluster slots, so they are written after
		// the state landed, with the outbox's acknowledgement; both are
		// idempotent and redone on a replay. A new flow is listed and
		// joins its service's active set (a supersede flow joined it
		// already, just before looking); a flow that ended is marked ended
		// there, for good.
		w := written{result: "applied"}
		if isCreate || next.State.Terminal() {
			w.index = next
		}
		if len(ob.raw) > 0 {
			ob.rev = c.Rev
			w.writes = []outbox{ob}
		}
		// Earlier writers' entries still queued: carry out the whole
		// outbox, in order.
		w.replay = c.Pending > int64(len(w.writes))
		return w, nil
	}
}

// replay carries out whatever is left in a flow's outbox and re-indexes
// the flow (read now when f is nil).
func (e *Engine) replay(ctx context.Context, flowID string, f *flow.Flow) error {
	if f == nil {
		got, err := e.st.GetFlow(ctx, flowID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		f = got
	}
	stored, err := e.st.Outbox(ctx, flowID)
	if err != nil {
		return err
	}
	writes := make([]outbox, len(stored))
	for i, w := range stored {
		writes[i] = outbox{rev: w.Rev, raw: w.Entries}
	}
	return e.runOutbox(ctx, flowID, writes, f)
}

// input gathers what the model needs besides the event: the time, the
// online agents (when a deployment may be created) and, for services that
// roll back, where each environment last succeeded.
func (e *Engine) input(ctx context.Context, f *flow.Flow, ev flow.Event, at time.Time) (flow.Input, error) {
	in := flow.Input{At: at, Listened: e.listened(f, ev)}
	switch ev.(type) {
	case flow.SlotGranted, flow.CreateFlow:
		agents, err := e.onlineAgents(ctx)
		if err != nil {
			return in, err
		}
		in.Agents = agents
	}
	if f != nil && f.Spec != nil && f.Spec.FailureStrategy == "rollback" {
		last, err := e.st.LastSucceeded(ctx, f.Service)
		if err != nil {
			return in, err
		}
		in.LastSucceeded = last
	}
	return in, nil
}

// listened returns whether any webhook wants a hook type for the flow's
// service (a create names its service in the event).
func (e *Engine) listened(f *flow.Flow, ev flow.Event) func(string) bool {
	service := ""
	if f != nil {
		service = f.Service
	} else if c, ok := ev.(flow.CreateFlow); ok {
		service = c.Service
	}
	webhooks := e.conf.Get().Webhooks
	return func(hook string) bool {
		for i := range webhooks {
			if webhooks[i].Wants(hook, service) {
				return true
			}
		}
		return false
	}
}

// agentsTTL bounds how stale the engine's view of the fleet may be. A
// heartbeat to another replica is seen by this one within it.
const agentsTTL = time.Second

func (e *Engine) onlineAgents(ctx context.Context) ([]flow.Agent, error) {
	now := e.now()
	e.agentsMu.Lock()
	if now.Sub(e.agentsAt) < agentsTTL {
		agents := e.agents
		e.agentsMu.Unlock()
		return agents, nil
	}
	e.agentsMu.Unlock()
	recs, err := e.st.Agents(ctx, now, e.cfg.AgentLostAfter)
	if err != nil {
		return nil, err
	}

	out := make([]flow.Agent, 0, len(recs))
	for _, r := range recs {
		if !r.Eligible() {
			continue
		}
		out = append(out, flow.Agent{ID: r.ID, Labels: r.Labels})
	}
	e.agentsMu.Lock()
	e.agents, e.agentsAt = out, now
	e.agentsMu.Unlock()
	return out, nil
}

// heartbeat records an agent's announcement. Heartbeats are presence, not
// history: a lost one is replaced by the next.
func (e *Engine) heartbeat(m *nats.Msg) {
	var hb wire.Heartbeat
	if err := json.Unmarshal(m.Data, &hb); err != nil || !wire.ValidToken(hb.ID) {
		e.log.Warn("bad heartbeat", "subject", m.Subject, "err", err)
		return
	}
	if m.Subject != wire.HeartbeatSubject(hb.ID) {
		e.log.Warn("heartbeat id does not match its subject", "subject", m.Subject, "agent_id", hb.ID)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	rec := store.AgentRecord{
		ID: hb.ID, Hostname: hb.Hostname, Labels: hb.Labels, Version: hb.Version,
		State: hb.State, Jobs: hb.Jobs, LastSeenAt: e.now().UTC(),
	}
	if err := e.st.PutAgent(ctx, rec); err != nil {
		e.log.Warn("record heartbeat", "agent_id", hb.ID, "err", err)
		return
	}
	e.agentsMu.Lock()
	e.agentsAt = time.Time{}
	e.agentsMu.Unlock()
	e.m.heartbeat.Inc()
}
