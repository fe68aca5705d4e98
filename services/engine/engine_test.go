package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const confYAML = `
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
webhooks:
  - name: chat
    url: http://127.0.0.1:9/hooks
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
    events: ["deployment.*"]
  - name: audit
    url: http://127.0.0.1:9/audit
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
    events: ["flow.succeeded"]
`

type fixture struct {
	nc   *nats.Conn
	js   jetstream.JetStream
	st   *store.Store
	keys store.Keys
	conf *config.Live
	log  func() *Engine
}

func setup(t *testing.T) *fixture { return setupWith(t, confYAML) }

func setupWith(t testing.TB, yaml string) *fixture {
	t.Helper()
	n := testenv.StartNATS(t)
	r := testenv.StartRedis(t)
	conf, err := config.Parse(strings.NewReader(yaml))
	require.NoError(t, err)
	fx := &fixture{nc: n.Conn(t), js: n.JetStream(t), st: store.New(r.Client, r.Prefix), keys: store.Keys{Prefix: r.Prefix}, conf: config.Static(conf)}
	ctx := context.Background()
	now := time.Now().UTC()
	for _, a := range []store.AgentRecord{
		{ID: "s1", Labels: map[string]string{"env": "staging"}, State: "idle", LastSeenAt: now},
		{ID: "s2", Labels: map[string]string{"env": "staging"}, State: "idle", LastSeenAt: now},
		{ID: "p1", Labels: map[string]string{"env": "production"}, State: "idle", LastSeenAt: now},
	} {
		require.NoError(t, fx.st.PutAgent(ctx, a))
	}
	return fx
}

// testWorkers keeps tests' engines small: tests run in parallel, engines
// with them, and the race detector allows 8128 goroutines in all.
const testWorkers = 16

// newEngine returns an engine that is not running.
func (fx *fixture) newEngine(t testing.TB) *Engine {
	t.Helper()
	return fx.newEngineWith(t, testWorkers)
}

// newEngineWith returns an engine with workers workers (0: the default)
// that is not running.
func (fx *fixture) newEngineWith(t testing.TB, workers int) *Engine {
	t.Helper()
	e, err := New(Config{AgentLostAfter: time.Hour, AckWait: time.Second, TimerInterval: 50 * time.Millisecond, Workers: workers}, fx.nc, fx.st, fx.conf, testenv.Logger(t), prometheus.NewRegistry())
	require.NoError(t, err)
	return e
}

// startEngine runs e until ctx ends; what Run returns arrives on the
// channel.
func startEngine(ctx context.Context, e *Engine) <-chan error {
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	return done
}

// requireStopped fails the test unless Run, started by startEngine,
// returns without an error within d.
func requireStopped(t *testing.T, done <-chan error, d time.Duration) {
	t.Helper()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(d):
		t.Fatalf("engine still stopping %s after it was told to", d)
	}
}

// runEngine runs e until the test ends.
func runEngine(t *testing.T, e *Engine) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := startEngine(ctx, e)
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
}

func (fx *fixture) publishPush(t testing.TB, delivery, msgID, sha string) {
	t.Helper()
	msg := &nats.Msg{Subject: wire.GitHubSubject("push"), Data: testenv.PushPayload("acme/web", "refs/heads/main", sha), Header: nats.Header{}}
	msg.Header.Set(wire.HeaderGitHubEvent, "push")
	msg.Header.Set(wire.HeaderDelivery, delivery)
	msg.Header.Set(wire.HeaderRepository, "acme/web")
	_, err := fx.js.PublishMsg(context.Background(), msg, jetstream.WithMsgID(msgID))
	require.NoError(t, err)
}

func (fx *fixture) report(t *testing.T, flowID, env, agent string, state wire.JobState, code int) {
	t.Helper()
	dep := flow.DeploymentID(flowID, env)
	r := wire.JobReport{JobID: wire.JobID(dep, agent), FlowID: flowID, DeploymentID: dep, AgentID: agent, State: state, At: time.Now()}
	if state == wire.JobFinished {
		r.ExitCode = &code
	}
	b, err := json.Marshal(r)
	require.NoError(t, err)
	_, err = fx.js.Publish(context.Background(), wire.SubjectJobReport, b, jetstream.WithMsgID(r.MsgID()))
	require.NoError(t, err)
}

func (fx *fixture) streamMsgs(t *testing.T, stream string) uint64 {
	t.Helper()
	s, err := fx.js.Stream(context.Background(), stream)
	require.NoError(t, err)
	info, err := s.Info(context.Background())
	require.NoError(t, err)
	return info.State.Msgs
}

func (fx *fixture) waitState(t *testing.T, flowID string, want flow.FlowState, deps ...flow.DeploymentState) *flow.Flow {
	t.Helper()
	var f *flow.Flow
	testenv.Eventually(t, 20*time.Second, fmt.Sprintf("flow %s %s %v", flowID, want, deps), func() bool {
		got, err := fx.st.GetFlow(context.Background(), flowID)
		if err != nil {
			return false
		}
		f = got
		if f.State != want {
			return false
		}
		for i, d := range deps {
			if f.Deployments[i].State != d {
				return false
			}
		}
		return true
	})
	return f
}

// waitIdle waits until the engine consumer has acked everything.
func (fx *fixture) waitIdle(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, 20*time.Second, "engine consumer idle", func() bool {
		c, err := fx.js.Consumer(context.Background(), wire.StreamEvents, "engine")
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

const sha = "6dcb09b5b57875f334f61aebed695e2e4193db5e"

var flowID = flow.FlowID("acme:web", sha, "web")

// fullRun drives one flow to success and returns the JOBS and HOOKS counts.
func fullRun(t *testing.T, fx *fixture) {
	t.Helper()
	fx.publishPush(t, "d-1", "d-1", sha)
	fx.waitState(t, flowID, flow.FlowInProgress, flow.Created)
	fx.report(t, flowID, "staging", "s1", wire.JobStarted, 0)
	fx.report(t, flowID, "staging", "s1", wire.JobFinished, 0)
	fx.report(t, flowID, "staging", "s2", wire.JobFinished, 0)
	fx.waitState(t, flowID, flow.FlowInProgress, flow.Succeeded, flow.Created)
	fx.report(t, flowID, "production", "p1", wire.JobStarted, 0)
	fx.report(t, flowID, "production", "p1", wire.JobFinished, 0)
	fx.waitState(t, flowID, flow.FlowSucceeded, flow.Succeeded, flow.Succeeded)
	fx.waitIdle(t)
}

// Three jobs (s1, s2, p1); hooks: chat gets 4 deployment.* per environment
// (created, started, completed, succeeded) = 8, audit gets flow.succeeded = 1.
const wantJobs, wantHooks = 3, 9

func TestEngineRunsAFlow(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	runEngine(t, fx.newEngine(t))
	fullRun(t, fx)
	require.EqualValues(t, wantJobs, fx.streamMsgs(t, wire.StreamJobs))
	require.EqualValues(t, wantHooks, fx.streamMsgs(t, wire.StreamHooks))

	// The jobs carry what the agent needs.
	s, err := fx.js.Stream(context.Background(), wire.StreamJobs)
	require.NoError(t, err)
	raw, err := s.GetLastMsgForSubject(context.Background(), wire.JobSubject("p1"))
	require.NoError(t, err)
	var job wire.Job
	require.NoError(t, json.Unmarshal(raw.Data, &job))
	require.Equal(t, wire.Job{
		ID: wire.JobID(flow.DeploymentID(flowID, "production"), "p1"), Kind: wire.JobDeploy, FlowID: flowID,
		DeploymentID: flow.DeploymentID(flowID, "production"), AgentID: "p1", Service: "web", Environment: "production",
		Org: "acme", Repo: "web", GitURL: "file:///srv/web.git", Commit: sha, Ref: "refs/heads/main",
		Command: "./deploy.sh", Timeout: 30 * time.Minute, CreatedAt: job.CreatedAt,
	}, job)

	f, err := fx.st.GetFlow(context.Background(), flowID)
	require.NoError(t, err)
	page, err := fx.st.RepoFlows(context.Background(), "ACME/Web", "", 10)
	require.NoError(t, err)
	require.Len(t, page.Flows, 1)
	require.Equal(t, f.ID, page.Flows[0].ID)
}

// TestEngineCreateOfAnEndedFlow sends a second delivery of a commit whose
// flow has ended (the same flow id, another event id) to an engine that no
// longer holds the flow: the create is written as new, refused, and
// recognised as a create of an existing flow. Nothing changes: no job, no
// hook, and the flow does not come back into its service's in-progress set
// (where supersede would see it).
func TestEngineCreateOfAnEndedFlow(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	runEngine(t, fx.newEngine(t))
	fullRun(t, fx)
	active := fx.keys.ServiceActive("web")
	ended := func() {
		t.Helper()
		score, err := fx.st.Client().ZScore(context.Background(), active, flowID).Result()
		require.NoError(t, err)
		require.Negative(t, score, "marked ended in the service's active set")
	}
	ended()

	runEngine(t, fx.newEngine(t)) // a replica with an empty cache
	for _, d := range []string{"d-2", "d-3"} {
		fx.publishPush(t, d, d, sha)
	}
	fx.waitIdle(t)
	require.EqualValues(t, wantJobs, fx.streamMsgs(t, wire.StreamJobs))
	require.EqualValues(t, wantHooks, fx.streamMsgs(t, wire.StreamHooks))
	fx.waitState(t, flowID, flow.FlowSucceeded, flow.Succeeded, flow.Succeeded)
	ended()
	n, err := fx.st.Client().ZCount(context.Background(), active, "0", "+inf").Result()
	require.NoError(t, err)
	require.Zero(t, n, "no flow in progress")
}

// TestEngineCarriesOutALegacyOutbox: entries an earlier version left in
// the single outbox list of a flow are carried out, before this version's,
// by the next event of the flow, and trimmed.
func TestEngineCarriesOutALegacyOutbox(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	runEngine(t, fx.newEngine(t))
	fx.publishPush(t, "d-1", "d-1", sha)
	fx.waitState(t, flowID, flow.FlowInProgress, flow.Created)
	fx.waitIdle(t)
	jobs := fx.streamMsgs(t, wire.StreamJobs)

	left, err := json.Marshal(outboxEntry{Op: opPublish, Subject: wire.JobSubject("s9"), MsgID: "job.legacy", Data: []byte(`{"id":"legacy"}`)})
	require.NoError(t, err)
	legacy := fx.keys.LegacyOutbox(flowID)
	require.NoError(t, fx.st.Client().RPush(context.Background(), legacy, left).Err())

	fx.report(t, flowID, "staging", "s1", wire.JobStarted, 0)
	fx.waitIdle(t)
	require.Equal(t, jobs+1, fx.streamMsgs(t, wire.StreamJobs))
	n, err := fx.st.Client().Exists(context.Background(), legacy).Result()
	require.NoError(t, err)
	require.Zero(t, n, "legacy outbox trimmed")
	out, err := fx.st.Outbox(context.Background(), flowID)
	require.NoError(t, err)
	require.Empty(t, out)
}

func TestEngineRedeliveredEventsChangeNothing(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	runEngine(t, fx.newEngine(t))
	fullRun(t, fx)
	before, err := fx.st.GetFlow(context.Background(), flowID)
	require.NoError(t, err)

	// The same GitHub delivery long after the JetStream duplicate window
	// (a new message id), and every job report again.
	fx.publishPush(t, "d-1", "d-1-again", sha)
	// A different delivery of the same commit: the same flow, nothing new.
	fx.publishPush(t, "d-2", "d-2", sha)
	for _, r := range []struct{ env, agent string }{{"staging", "s1"}, {"staging", "s2"}, {"production", "p1"}} {
		dep := flow.DeploymentID(flowID, r.env)
		rep := wire.JobReport{JobID: wire.JobID(dep, r.agent), FlowID: flowID, DeploymentID: dep, AgentID: r.agent, State: wire.JobFinished, ExitCode: new(int)}
		b, _ := json.Marshal(rep)
		_, err := fx.js.Publish(context.Background(), wire.SubjectJobReport, b, jetstream.WithMsgID(rep.MsgID()+"-again"))
		require.NoError(t, err)
	}
	fx.waitIdle(t)
	after, err := fx.st.GetFlow(context.Background(), flowID)
	require.NoError(t, err)
	require.Equal(t, before, after)
	require.EqualValues(t, wantJobs, fx.streamMsgs(t, wire.StreamJobs))
	require.EqualValues(t, wantHooks, fx.streamMsgs(t, wire.StreamHooks))
}

func TestEngineCrashBetweenCommitAndPublish(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	e := fx.newEngine(t)
	var crashes atomic.Int32
	// Every state write "crashes" once before its outbox is published: the
	// event is redelivered, recognised as applied, and only its outbox goes out.
	var mu sync.Mutex
	seen := map[int64]bool{}
	var n int64
	e.afterCommitFunc = func() error {
		mu.Lock()
		defer mu.Unlock()
		n++
		if !seen[n] {
			seen[n] = true
			crashes.Add(1)
			return errors.New("simulated crash after commit")
		}
		return nil
	}
	runEngine(t, e)
	fullRun(t, fx)
	require.Positive(t, crashes.Load())
	require.EqualValues(t, wantJobs, fx.streamMsgs(t, wire.StreamJobs))
	require.EqualValues(t, wantHooks, fx.streamMsgs(t, wire.StreamHooks))
	out, err := fx.st.Outbox(context.Background(), flowID)
	require.NoError(t, err)
	require.Empty(t, out, "outbox drained")
}

func TestEngineRestartResumes(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	e1 := fx.newEngine(t)
	done := startEngine(ctx, e1)
	fx.publishPush(t, "d-1", "d-1", sha)
	fx.waitState(t, flowID, flow.FlowInProgress, flow.Created)
	cancel()
	require.NoError(t, <-done)

	// Reports arrive while no engine runs; a new one picks them up.
	fx.report(t, flowID, "staging", "s1", wire.JobFinished, 0)
	fx.report(t, flowID, "staging", "s2", wire.JobFinished, 0)
	runEngine(t, fx.newEngine(t))
	fx.waitState(t, flowID, flow.FlowInProgress, flow.Succeeded, flow.Created)
	fx.report(t, flowID, "production", "p1", wire.JobFinished, 0)
	fx.waitState(t, flowID, flow.FlowSucceeded, flow.Succeeded, flow.Succeeded)
	fx.waitIdle(t)
	require.EqualValues(t, wantJobs, fx.streamMsgs(t, wire.StreamJobs))
	require.EqualValues(t, wantHooks, fx.streamMsgs(t, wire.StreamHooks))
}

func TestEngineRejectsBadEvents(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	runEngine(t, fx.newEngine(t))
	// A report for a flow that does not exist, one whose deployment does
	// not belong to its flow, and garbage: all terminated, nothing written.
	fx.report(t, flowID, "staging", "s1", wire.JobStarted, 0)
	_, err := fx.js.Publish(context.Background(), wire.SubjectJobReport, []byte(`{"job_id": 1`))
	require.NoError(t, err)
	b, _ := json.Marshal(wire.JobReport{JobID: "x", FlowID: "fother", DeploymentID: flow.DeploymentID(flowID, "staging"), State: wire.JobStarted})
	_, err = fx.js.Publish(context.Background(), wire.SubjectJobReport, b)
	require.NoError(t, err)
	fx.waitIdle(t)
	_, err = fx.st.GetFlow(context.Background(), flowID)
	require.ErrorIs(t, err, store.ErrNotFound)
	require.Zero(t, fx.streamMsgs(t, wire.StreamJobs))
	require.Zero(t, fx.streamMsgs(t, wire.StreamHooks))
}

func TestEngineRecordsHeartbeats(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	runEngine(t, fx.newEngine(t))
	hb, _ := json.Marshal(wire.Heartbeat{ID: "h1", Hostname: "host", Labels: map[string]string{"env": "qa"}, State: "idle"})
	// The engine subscribes once its consumer exists; keep announcing
	// until it has heard one (bounded by Eventually).
	testenv.Eventually(t, 20*time.Second, "heartbeat recorded", func() bool {
		require.NoError(t, fx.nc.Publish(wire.HeartbeatSubject("h1"), hb))
		agents, err := fx.st.Agents(context.Background(), time.Now(), time.Minute)
		require.NoError(t, err)
		for _, a := range agents {
			if a.ID == "h1" {
				return a.Labels["env"] == "qa" && a.Hostname == "host"
			}
		}
		return false
	})
	// A heartbeat whose id does not match its subject is ignored. One
	// subscriber handles heartbeats in order, so once the good one sent
	// after it is recorded, the bad one has been handled too.
	bad, _ := json.Marshal(wire.Heartbeat{ID: "h2"})
	require.NoError(t, fx.nc.Publish(wire.HeartbeatSubject("h3"), bad))
	good, _ := json.Marshal(wire.Heartbeat{ID: "h4"})
	require.NoError(t, fx.nc.Publish(wire.HeartbeatSubject("h4"), good))
	var ids []string
	testenv.Eventually(t, 20*time.Second, "heartbeat h4 recorded", func() bool {
		agents, err := fx.st.Agents(context.Background(), time.Now(), time.Minute)
		require.NoError(t, err)
		ids = ids[:0]
		for _, a := range agents {
			ids = append(ids, a.ID)
		}
		return slices.Contains(ids, "h4")
	})
	require.NotContains(t, ids, "h2")
	require.NotContains(t, ids, "h3")
}

// TestEngineKilledAfterCommitThenRestarted stops an engine right after its
// first state write, before any outbox is carried out, and starts a new
// one: the event comes back, is recognised as applied, and its outbox goes
// out once.
func TestEngineKilledAfterCommitThenRestarted(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	ctx, cancel := context.WithCancel(context.Background())
	e1 := fx.newEngine(t)
	var once sync.Once
	e1.afterCommitFunc = func() error {
		once.Do(cancel) // the process dies here
		return errors.New("killed")
	}
	done := startEngine(ctx, e1)
	fx.publishPush(t, "d-1", "d-1", sha)
	require.NoError(t, <-done)
	f, err := fx.st.GetFlow(context.Background(), flowID)
	require.NoError(t, err, "the state write landed")
	require.Equal(t, flow.NotStarted, f.Deployments[0].State, "waiting for its environment")
	out, err := fx.st.Outbox(context.Background(), flowID)
	require.NoError(t, err)
	require.NotEmpty(t, out, "the outbox was not carried out")
	require.Zero(t, fx.streamMsgs(t, wire.StreamJobs))

	runEngine(t, fx.newEngine(t))
	fullRun(t, fx)
	require.EqualValues(t, wantJobs, fx.streamMsgs(t, wire.StreamJobs))
	require.EqualValues(t, wantHooks, fx.streamMsgs(t, wire.StreamHooks))
}

// TestEngineRecreatesDeletedConsumer deletes the engine's durable consumer
// under it: the engine makes it again and keeps applying events.
func TestEngineRecreatesDeletedConsumer(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	runEngine(t, fx.newEngine(t))
	testenv.Eventually(t, 20*time.Second, "engine consumer", func() bool {
		_, err := fx.js.Consumer(context.Background(), wire.StreamEvents, "engine")
		return err == nil
	})
	require.NoError(t, fx.js.DeleteConsumer(context.Background(), wire.StreamEvents, "engine"))
	fx.publishPush(t, "d-1", "d-1", sha)
	fx.waitState(t, flowID, flow.FlowInProgress, flow.Created)
}

// TestEngineStopGivesBackPulledEvents: events an engine pulled but had not
// started when it stopped are handed back (Nak), not left pending until
// AckWait. AckWait is ten minutes here, so the next engine applies them
// within the test only if they were handed back. The events in hand are
// finished and acked; each event handed back is delivered once more, not
// bounced back and forth to the stopping engine.
func TestEngineStopGivesBackPulledEvents(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name           string
		events, pulled int
	}{
		// Both workers hold an event, the loop feeding them a third, and
		// the fourth of the first pull (2 × workers) waits in the
		// iterator's buffer.
		{"buffered", 6, 4},
		// Three events: the first pull (for four) is still open when the
		// engine stops. An event given back while it is open would come
		// straight back to the stopping engine.
		{"pull still open", 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			stopGivesBack(t, tc.events, tc.pulled)
		})
	}
}

func stopGivesBack(t *testing.T, events, pulled int) {
	const inHand = 2                                  // one per worker
	fx := setupWith(t, fmt.Sprintf(confYAML2, false)) // flows independent of each other
	newEngine := func() *Engine {
		e, err := New(Config{AgentLostAfter: time.Hour, AckWait: 10 * time.Minute, Workers: inHand}, fx.nc, fx.st, fx.conf, testenv.Logger(t), prometheus.NewRegistry())
		require.NoError(t, err)
		return e
	}
	e := newEngine()
	release := make(chan struct{})
	e.afterCommitFunc = func() error {
		<-release
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := startEngine(ctx, e)
	for i := range events {
		fx.publishPush(t, fmt.Sprintf("d-%d", i), fmt.Sprintf("d-%d", i), shaN(i))
	}
	var cons jetstream.Consumer
	testenv.Eventually(t, 10*time.Second, "events pulled ahead of the workers", func() bool {
		c, err := fx.js.Consumer(context.Background(), wire.StreamEvents, "engine")
		if err != nil {
			return false
		}
		info, err := c.Info(context.Background())
		cons = c
		return err == nil && info.NumAckPending == pulled
	})
	cancel()
	close(release)
	requireStopped(t, done, 30*time.Second)
	// The server takes acks in its own time: wait for the two in hand.
	var info *jetstream.ConsumerInfo
	testenv.Eventually(t, 10*time.Second, "the events in hand acked", func() bool {
		i, err := cons.Info(context.Background())
		info = i
		return err == nil && i.AckFloor.Stream == inHand
	})
	// (A pull may have brought more meanwhile: they are given back too.)
	givenBack := info.Delivered.Stream - inHand
	require.GreaterOrEqual(t, givenBack, uint64(pulled-inHand))
	require.Equal(t, info.Delivered.Stream, info.Delivered.Consumer, "no event delivered twice while stopping")

	runEngine(t, newEngine())
	for i := range events {
		fx.waitState(t, flowOf(i), flow.FlowInProgress)
	}
	fx.waitIdle(t)
	info, err := cons.Info(context.Background())
	require.NoError(t, err)
	require.Equal(t, info.Delivered.Stream+givenBack, info.Delivered.Consumer, "each event given back delivered once more")
}

// TestEngineHotFlowHasNoConflicts: many agents of one deployment report at
// once (a backlog the engine's workers take together); within one replica
// they take turns on the flow and none loses the revision check.
func TestEngineHotFlowHasNoConflicts(t *testing.T) {
	t.Parallel()
	fx := setup(t)
	const agents = 40
	now := time.Now().UTC()
	for i := range agents {
		require.NoError(t, fx.st.PutAgent(context.Background(), store.AgentRecord{
			ID: fmt.Sprintf("h%02d", i), Labels: map[string]string{"env": "staging"}, State: "idle", LastSeenAt: now,
		}))
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := fx.newEngine(t)
	done := startEngine(ctx, first)
	fx.publishPush(t, "d-1", "d-1", sha)
	f := fx.waitState(t, flowID, flow.FlowInProgress, flow.Created)
	require.Len(t, f.Deployments[0].Jobs, agents+2)
	fx.waitIdle(t)
	cancel()
	require.NoError(t, <-done)

	// Every job starts and finishes while no engine runs.
	for _, st := range []wire.JobState{wire.JobStarted, wire.JobFinished} {
		for _, j := range f.Deployments[0].Jobs {
			fx.report(t, flowID, "staging", j.AgentID, st, 0)
		}
	}
	e := fx.newEngine(t)
	runEngine(t, e)
	fx.waitState(t, flowID, flow.FlowInProgress, flow.Succeeded, flow.Created)
	fx.waitIdle(t)
	require.Zero(t, testutil.ToFloat64(e.m.conflicts), "writers of one flow in one replica take turns")
}

// TestEngineStopsWithNATSDown: an engine told to stop while NATS is gone
// does not wait to hand back events it cannot reach the server with.
func TestEngineStopsWithNATSDown(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	r := testenv.StartRedis(t)
	conf, err := config.Parse(strings.NewReader(confYAML))
	require.NoError(t, err)
	e, err := New(Config{Workers: testWorkers}, n.Conn(t), store.New(r.Client, r.Prefix), config.Static(conf), testenv.Logger(t), prometheus.NewRegistry())
	require.NoError(t, err)
	// Only the check for NATS being gone can make the stop quick: the
	// give-up on a drain is set far beyond this test's patience.
	e.drainGiveUp = time.Minute
	consuming := make(chan struct{})
	e.consumingFunc = func() { close(consuming) }
	ctx, cancel := context.WithCancel(context.Background())
	done := startEngine(ctx, e)
	select {
	case <-consuming:
	case <-time.After(30 * time.Second):
		t.Fatal("engine not consuming in 30s")
	}
	n.Shutdown()
	testenv.Eventually(t, 10*time.Second, "the client sees NATS gone", func() bool { return !e.nc.IsConnected() })
	cancel()
	// Draining would wait out the minute above; stopping at once takes
	// next to nothing.
	requireStopped(t, done, 20*time.Second)
}
