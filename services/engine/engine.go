// Package engine is the thin shell around pkg/flow: it consumes EVENTS,
// loads a flow from Redis, applies the event, writes the new state with its
// outbox and an applied-event marker in one Lua step, publishes the outbox
// to JOBS and HOOKS with deterministic message ids, and only then acks.
//
// A crash anywhere replays to the same result: an event whose state write
// landed is recognised by its marker and only its outbox is republished;
// JetStream drops republished messages by their ids. Replicas share one
// durable consumer; a stale replica loses the revision check and retries.
package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/google/go-github/v92/github"
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
}

// Engine runs the flow state machine over the EVENTS stream.
type Engine struct {
	cfg  Config
	nc   *nats.Conn
	js   jetstream.JetStream
	st   *store.Store
	conf *config.Live
	log  *slog.Logger
	m    metrics
	now  func() time.Time
	// afterCommitFunc, when set (tests only), runs between the state write
	// and the outbox publish; an error there stands for a crash.
	afterCommitFunc func() error
}

type metrics struct {
	events    *prometheus.CounterVec
	conflicts prometheus.Counter
	apply     prometheus.Histogram
	published *prometheus.CounterVec
	heartbeat prometheus.Counter
}

// New returns an engine. It registers its metrics on reg.
func New(cfg Config, nc *nats.Conn, st *store.Store, conf *config.Live, log *slog.Logger, reg prometheus.Registerer) (*Engine, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	if cfg.AgentLostAfter <= 0 {
		cfg.AgentLostAfter = 30 * time.Second
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = 30 * time.Second
	}
	e := &Engine{cfg: cfg, nc: nc, js: js, st: st, conf: conf, log: log, now: time.Now}
	e.m = metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otariinae_engine_events_total", Help: "Events consumed, by kind and result (applied, duplicate, rejected, retried).",
		}, []string{"kind", "result"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otariinae_engine_apply_conflicts_total", Help: "State writes that lost the revision check and were retried.",
		}),
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "otariinae_engine_apply_duration_seconds", Help: "Time to load, apply, commit and publish one event.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otariinae_engine_outbox_published_total", Help: "Outbox messages published, by stream.",
		}, []string{"stream"}),
		heartbeat: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "otariinae_engine_heartbeats_total", Help: "Agent heartbeats recorded.",
		}),
	}
	for _, c := range []prometheus.Collector{e.m.events, e.m.conflicts, e.m.apply, e.m.published, e.m.heartbeat} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register engine metrics: %w", err)
		}
	}
	return e, nil
}

// Run consumes events until ctx ends. Work in hand when ctx ends is
// finished; prefetched messages are redelivered to another replica.
func (e *Engine) Run(ctx context.Context) error {
	if err := bus.EnsureStreamsRetry(ctx, e.js, e.log); err != nil {
		return nil // ctx ended before NATS came up
	}
	cons, err := e.js.CreateOrUpdateConsumer(ctx, wire.StreamEvents, jetstream.ConsumerConfig{
		Durable:       bus.ConsumerEngine,
		Description:   "flow engine replicas",
		FilterSubject: wire.SubjectEventsAll,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       e.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 256,
	})
	if err != nil {
		return fmt.Errorf("create engine consumer: %w", err)
	}
	sub, err := e.nc.QueueSubscribe(wire.SubjectHeartbeatAll, wire.QueueEngine, e.heartbeat)
	if err != nil {
		return fmt.Errorf("subscribe heartbeats: %w", err)
	}
	defer func() { _ = sub.Drain() }()

	it, err := cons.Messages(jetstream.PullMaxMessages(64))
	if err != nil {
		return fmt.Errorf("consume events: %w", err)
	}
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	e.log.Info("engine consuming", "stream", wire.StreamEvents, "consumer", bus.ConsumerEngine)
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				return nil
			}
			e.log.Warn("next event", "err", err)
			continue
		}
		// In-flight work finishes even when ctx ends: its own context is
		// not the run's, so a deploy step is never half-applied by shutdown.
		e.Handle(context.WithoutCancel(ctx), msg)
	}
}

// target is one flow an event applies to.
type target struct {
	flowID  string
	eventID string
	event   flow.Event
	create  bool
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
	at := meta.Timestamp.UTC()
	targets, err := e.decode(msg)
	if err != nil {
		e.m.events.WithLabelValues(kind, "rejected").Inc()
		e.log.Warn("event rejected", "subject", msg.Subject(), "stream_seq", meta.Sequence.Stream, "err", err)
		_ = msg.TermWithReason(err.Error())
		return
	}
	for _, t := range targets {
		if err := e.apply(ctx, t, at); err != nil {
			if errors.Is(err, errPermanent) {
				e.m.events.WithLabelValues(kind, "rejected").Inc()
				e.log.Warn("event not applicable", "flow_id", t.flowID, "event_id", t.eventID, "err", err)
				continue
			}
			e.m.events.WithLabelValues(kind, "retried").Inc()
			e.log.Warn("event failed, will retry", "flow_id", t.flowID, "event_id", t.eventID, "err", err)
			_ = msg.NakWithDelay(2 * time.Second)
			return
		}
	}
	if err := msg.Ack(); err != nil {
		e.log.Warn("ack event", "err", err)
	}
	e.m.events.WithLabelValues(kind, "applied").Inc()
}

func eventKind(subject string) string {
	switch {
	case strings.HasPrefix(subject, wire.SubjectGitHubPrefix):
		return "github"
	case subject == wire.SubjectJobReport:
		return "job"
	}
	return "other"
}

var errPermanent = errors.New("permanent")

// permanent marks an error that no retry can fix.
func permanent(err error) error { return fmt.Errorf("%w: %w", errPermanent, err) }

// decode turns a message into the flows it applies to.
func (e *Engine) decode(msg jetstream.Msg) ([]target, error) {
	switch {
	case strings.HasPrefix(msg.Subject(), wire.SubjectGitHubPrefix):
		return e.decodeGitHub(msg)
	case msg.Subject() == wire.SubjectJobReport:
		var r wire.JobReport
		if err := json.Unmarshal(msg.Data(), &r); err != nil {
			return nil, fmt.Errorf("decode job report: %w", err)
		}
		flowID, ok := flow.FlowIDOf(r.DeploymentID)
		if !ok || flowID != r.FlowID {
			return nil, fmt.Errorf("job report %s: deployment %q does not belong to flow %q", r.JobID, r.DeploymentID, r.FlowID)
		}
		t := target{flowID: flowID, eventID: r.MsgID()}
		switch r.State {
		case wire.JobStarted:
			t.event = flow.JobStarted{DeploymentID: r.DeploymentID, AgentID: r.AgentID}
		case wire.JobFinished:
			if r.ExitCode == nil {
				return nil, fmt.Errorf("job report %s: finished without exit code", r.JobID)
			}
			t.event = flow.JobFinished{DeploymentID: r.DeploymentID, AgentID: r.AgentID, ExitCode: *r.ExitCode, Reason: r.Reason}
		default:
			return nil, fmt.Errorf("job report %s: unknown state %q", r.JobID, r.State)
		}
		return []target{t}, nil
	}
	return nil, fmt.Errorf("no handler for subject %s", msg.Subject())
}

func (e *Engine) decodeGitHub(msg jetstream.Msg) ([]target, error) {
	typ := msg.Headers().Get(wire.HeaderGitHubEvent)
	delivery := msg.Headers().Get(wire.HeaderDelivery)
	if typ != "push" {
		return nil, fmt.Errorf("github event %q is not handled", typ)
	}
	payload, err := github.ParseWebHook(typ, msg.Data())
	if err != nil {
		return nil, fmt.Errorf("parse github %s delivery %s: %w", typ, delivery, err)
	}
	push, ok := payload.(*github.PushEvent)
	if !ok {
		return nil, fmt.Errorf("github delivery %s is %T, not a push", delivery, payload)
	}
	repo := push.GetRepo().GetFullName()
	if repo == "" {
		repo = msg.Headers().Get(wire.HeaderRepository)
	}
	branch, isBranch := strings.CutPrefix(push.GetRef(), "refs/heads/")
	commit := strings.ToLower(push.GetAfter())
	if !isBranch || push.GetDeleted() || !validSHA(commit) {
		return nil, nil // nothing to deploy; ingest normally filters these
	}
	artifact := config.ArtifactOf(repo)
	var out []target
	for _, svc := range e.conf.Get().ServicesForArtifact(artifact) {
		if !svc.TracksBranch(branch) {
			continue
		}
		out = append(out, target{
			flowID:  flow.FlowID(strings.ToLower(artifact), commit, svc.Name),
			eventID: "gh." + delivery,
			create:  true,
			event: flow.CreateFlow{
				FlowID: flow.FlowID(strings.ToLower(artifact), commit, svc.Name), Artifact: artifact,
				Version: commit, Commit: commit, Ref: push.GetRef(), Service: svc.Name,
				Repository: repo, Spec: SpecOf(svc),
			},
		})
	}
	return out, nil
}

func validSHA(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	for _, c := range s {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return s != strings.Repeat("0", len(s))
}

// SpecOf freezes a service's configuration for a new flow.
func SpecOf(svc *config.Service) flow.Spec {
	sp := flow.Spec{GitURL: svc.GitURL, Command: svc.Deploy, Shell: svc.Shell, Secrets: svc.Secrets}
	for _, env := range svc.Pipeline {
		sp.Environments = append(sp.Environments, flow.EnvSpec{
			Name: env.Environment, Targets: env.Targets, Env: env.Env, Timeout: env.Timeout.D(),
		})
	}
	return sp
}

// maxConflicts bounds the optimistic retry loop: a flow hotly contended by
// many replicas still converges, and a bug cannot spin forever.
const maxConflicts = 50

func (e *Engine) apply(ctx context.Context, t target, at time.Time) error {
	for attempt := 0; ; attempt++ {
		if attempt == maxConflicts {
			return fmt.Errorf("flow %s: %d write conflicts in a row", t.flowID, attempt)
		}
		ld, err := e.st.LoadFlow(ctx, t.flowID, t.eventID)
		if err != nil {
			return err
		}
		if ld.Applied {
			break
		}
		agents, err := e.onlineAgents(ctx)
		if err != nil {
			return err
		}
		next, effects, err := flow.Apply(ld.Flow, t.event, flow.Input{At: at, Agents: agents})
		if err != nil {
			return permanent(err)
		}
		if ld.Flow != nil && len(effects) == 0 && t.create {
			break // the flow exists: a second create changes nothing
		}
		outbox, err := e.render(next, effects, t.eventID, at)
		if err != nil {
			return permanent(err)
		}
		_, err = e.st.Commit(ctx, next, ld.Rev, t.eventID, outbox)
		if errors.Is(err, store.ErrConflict) {
			e.m.conflicts.Inc()
			continue
		}
		if err != nil && !errors.Is(err, store.ErrAlreadyApplied) {
			return err
		}
		if e.afterCommitFunc != nil {
			if err := e.afterCommitFunc(); err != nil {
				return err
			}
		}
		break
	}
	if t.create {
		f, err := e.st.GetFlow(ctx, t.flowID)
		if err != nil {
			return err
		}
		if err := e.st.IndexFlow(ctx, f); err != nil {
			return err
		}
	}
	return e.publishOutbox(ctx, t.flowID)
}

func (e *Engine) onlineAgents(ctx context.Context) ([]flow.Agent, error) {
	recs, err := e.st.Agents(ctx, e.now(), e.cfg.AgentLostAfter)
	if err != nil {
		return nil, err
	}
	out := make([]flow.Agent, 0, len(recs))
	for _, r := range recs {
		if r.State == "lost" || r.State == "draining" {
			continue
		}
		out = append(out, flow.Agent{ID: r.ID, Labels: r.Labels})
	}
	return out, nil
}

// outboxEntry is one message to publish, stored in the flow's outbox.
type outboxEntry struct {
	Stream  string `json:"stream"`
	Subject string `json:"subject"`
	MsgID   string `json:"msg_id"`
	Data    []byte `json:"data"`
}

// publishOutbox publishes everything in the flow's outbox, in order, then
// removes what was published. JetStream de-duplicates by message id, so a
// republish after a crash delivers nothing twice.
func (e *Engine) publishOutbox(ctx context.Context, flowID string) error {
	entries, err := e.st.Outbox(ctx, flowID)
	if err != nil || len(entries) == 0 {
		return err
	}
	for i, raw := range entries {
		var o outboxEntry
		if err := json.Unmarshal(raw, &o); err != nil {
			// Written by this package; unreadable means a bug. Keep going
			// with the rest rather than blocking the flow forever.
			e.log.Error("undecodable outbox entry dropped", "flow_id", flowID, "err", err)
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := e.js.Publish(pctx, o.Subject, o.Data, jetstream.WithMsgID(o.MsgID))
		cancel()
		if err != nil {
			if ackErr := e.st.AckOutbox(ctx, flowID, entries[:i]); ackErr != nil {
				e.log.Warn("trim outbox", "flow_id", flowID, "err", ackErr)
			}
			return fmt.Errorf("publish %s for flow %s: %w", o.Subject, flowID, err)
		}
		e.m.published.WithLabelValues(o.Stream).Inc()
	}
	return e.st.AckOutbox(ctx, flowID, entries)
}

// HookBody is the native JSON body of a hook.
type HookBody struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      HookData  `json:"data"`
}

// HookData is the data of a native hook body.
type HookData struct {
	Flow        *flow.Flow       `json:"flow"`
	Deployment  *flow.Deployment `json:"deployment,omitempty"`
	Artifact    string           `json:"artifact"`
	Service     string           `json:"service"`
	Environment string           `json:"environment,omitempty"`
}

// render turns effects into outbox entries: jobs for agents, and one hook
// request per webhook that subscribes to the hook's type and service. Ids
// derive from (flow, event, effect index) so a replay renders the same ids.
func (e *Engine) render(f *flow.Flow, effects []flow.Effect, eventID string, at time.Time) ([][]byte, error) {
	var out [][]byte
	add := func(o outboxEntry) error {
		b, err := json.Marshal(o)
		if err != nil {
			return fmt.Errorf("encode outbox entry: %w", err)
		}
		out = append(out, b)
		return nil
	}
	for i, ef := range effects {
		switch ef.Kind {
		case flow.EffectJob:
			job, err := jobFor(f, ef, at)
			if err != nil {
				return nil, err
			}
			b, err := json.Marshal(job)
			if err != nil {
				return nil, fmt.Errorf("encode job: %w", err)
			}
			if err := add(outboxEntry{Stream: wire.StreamJobs, Subject: wire.JobSubject(ef.AgentID), MsgID: "job." + job.ID, Data: b}); err != nil {
				return nil, err
			}
		case flow.EffectHook:
			snap := ef.Snapshot.View()
			data := HookData{Flow: snap, Artifact: snap.Artifact, Service: snap.Service}
			if d := snap.Deployment(ef.DeploymentID); d != nil {
				data.Deployment, data.Environment = d, d.Environment
			}
			body, err := json.Marshal(HookBody{Type: ef.Hook, Timestamp: at, Data: data})
			if err != nil {
				return nil, fmt.Errorf("encode hook body: %w", err)
			}
			for _, wh := range e.conf.Get().Webhooks {
				if !wh.Wants(ef.Hook, f.Service) {
					continue
				}
				id := hookID(f.ID, eventID, i, wh.Name)
				req, err := json.Marshal(wire.HookRequest{ID: id, Webhook: wh.Name, Type: ef.Hook, Timestamp: at, FlowID: f.ID, Body: body})
				if err != nil {
					return nil, fmt.Errorf("encode hook request: %w", err)
				}
				if err := add(outboxEntry{Stream: wire.StreamHooks, Subject: wire.HookSubject(wh.Name), MsgID: "hook." + id, Data: req}); err != nil {
					return nil, err
				}
			}
		}
	}
	return out, nil
}

func hookID(flowID, eventID string, index int, webhook string) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%d\x00%s", flowID, eventID, index, webhook))
	return "msg_" + hex.EncodeToString(h[:16])
}

func jobFor(f *flow.Flow, ef flow.Effect, at time.Time) (wire.Job, error) {
	var env *flow.EnvSpec
	for i := range f.Deployments {
		if f.Deployments[i].ID == ef.DeploymentID {
			env = &f.Spec.Environments[i]
		}
	}
	if env == nil || f.Spec == nil {
		return wire.Job{}, fmt.Errorf("job for unknown deployment %s", ef.DeploymentID)
	}
	org, repo, _ := strings.Cut(f.Repository, "/")
	return wire.Job{
		ID: wire.JobID(ef.DeploymentID, ef.AgentID), Kind: wire.JobDeploy,
		FlowID: f.ID, DeploymentID: ef.DeploymentID, AgentID: ef.AgentID,
		Service: f.Service, Environment: env.Name, Org: org, Repo: repo,
		GitURL: f.Spec.GitURL, Commit: f.Commit, Ref: f.Ref,
		Command: f.Spec.Command, Shell: f.Spec.Shell, Env: env.Env, Secrets: f.Spec.Secrets,
		Timeout: env.Timeout, CreatedAt: at,
	}, nil
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
	e.m.heartbeat.Inc()
}
