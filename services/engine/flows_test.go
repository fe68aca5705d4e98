package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

const promoYAML = `
services:
  - name: web
    repository: acme/web
    git_url: file:///srv/web.git
    branches: [main]
    deploy: ./deploy.sh
    supersede: %t
    failure_strategy: %s
    pipeline:
      - environment: staging
        targets: {env: staging}
        promotions:
          - {name: smoke, type: script, command: ./smoke.sh --quick}
          - {name: soak, type: wait, duration: 300ms}
          - {name: release, type: manual}
      - environment: production
        targets: {env: production}
webhooks:
  - name: chat
    url: http://127.0.0.1:9/hooks
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
`

func shaN(n int) string { return fmt.Sprintf("%040x", n+1) }

func flowOf(n int) string { return flow.FlowID("acme:web", shaN(n), "web") }

func (fx *fixture) trigger(t *testing.T, tr wire.Trigger) {
	t.Helper()
	b, err := json.Marshal(tr)
	require.NoError(t, err)
	_, err = fx.js.Publish(context.Background(), wire.SubjectTrigger, b, jetstream.WithMsgID("trigger."+tr.EventID))
	require.NoError(t, err)
}

func (fx *fixture) promoReport(t *testing.T, flowID, env, promo, agent string, code int) {
	t.Helper()
	dep := flow.DeploymentID(flowID, env)
	r := wire.JobReport{JobID: wire.PromotionJobID(dep, promo, agent), FlowID: flowID, DeploymentID: dep, Promotion: promo,
		AgentID: agent, State: wire.JobFinished, ExitCode: &code}
	b, _ := json.Marshal(r)
	_, err := fx.js.Publish(context.Background(), wire.SubjectJobReport, b, jetstream.WithMsgID(r.MsgID()))
	require.NoError(t, err)
}

func TestEnginePromotionsEndToEnd(t *testing.T) {
	t.Parallel()
	fx := setupWith(t, fmt.Sprintf(promoYAML, false, "stop"))
	runEngine(t, fx.newEngine(t))
	id := flowOf(0)
	fx.publishPush(t, "d-0", "d-0", shaN(0))
	fx.waitState(t, id, flow.FlowInProgress, flow.Created)
	fx.report(t, id, "staging", "s1", wire.JobFinished, 0)
	fx.report(t, id, "staging", "s2", wire.JobFinished, 0)
	fx.waitState(t, id, flow.FlowInProgress, flow.Completed)

	// The script promotion's jobs went to the deployment's agents.
	s, err := fx.js.Stream(context.Background(), wire.StreamJobs)
	require.NoError(t, err)
	// The state is written before the outbox is carried out: wait for it.
	var job wire.Job
	testenv.Eventually(t, 20*time.Second, "script promotion job published", func() bool {
		raw, err := s.GetLastMsgForSubject(context.Background(), wire.JobSubject("s2"))
		return err == nil && json.Unmarshal(raw.Data, &job) == nil && job.Kind == wire.JobPromotion
	})
	require.Equal(t, "smoke", job.Promotion)
	require.Equal(t, "./smoke.sh --quick", job.Command)
	require.Equal(t, shaN(0), job.Commit)

	fx.promoReport(t, id, "staging", "smoke", "s1", 0)
	fx.promoReport(t, id, "staging", "smoke", "s2", 0)
	// The soak passes by itself (a timer), then the manual gate waits.
	f := fx.waitState(t, id, flow.FlowInProgress, flow.Completed)
	testenv.Eventually(t, 20*time.Second, "manual promotion running", func() bool {
		f, err = fx.st.GetFlow(context.Background(), id)
		require.NoError(t, err)
		return f.Deployments[0].Promotions[2].State == flow.PromotionRunning
	})
	require.Equal(t, flow.PromotionPassed, f.Deployments[0].Promotions[0].State)
	require.Equal(t, flow.PromotionPassed, f.Deployments[0].Promotions[1].State)

	fx.trigger(t, wire.Trigger{EventID: "t-1", Kind: wire.TriggerApprove, DeploymentID: flow.DeploymentID(id, "staging"), Promotion: "release", By: "alice", Reason: "ship it"})
	f = fx.waitState(t, id, flow.FlowInProgress, flow.Succeeded, flow.Created)
	require.Equal(t, "alice", f.Deployments[0].Promotions[2].By)

	fx.trigger(t, wire.Trigger{EventID: "t-2", Kind: wire.TriggerCancel, FlowID: id, By: "bob", Reason: "stop"})
	f = fx.waitState(t, id, flow.FlowCancelled, flow.Succeeded, flow.Cancelled)
	require.Equal(t, "cancelled by bob: stop", f.Reason)
	// The production agent was told to stop its job.
	kv, err := fx.js.KeyValue(context.Background(), wire.BucketCancels)
	require.NoError(t, err)
	// The state is written before the outbox is carried out: wait for it.
	var entry jetstream.KeyValueEntry
	testenv.Eventually(t, 20*time.Second, "cancel marker", func() bool {
		entry, err = kv.Get(context.Background(), wire.JobID(flow.DeploymentID(id, "production"), "p1"))
		return err == nil
	})
	require.Contains(t, string(entry.Value()), "cancelled by bob")
	fx.waitIdle(t)
	slot, queue, err := fx.st.SlotHolder(context.Background(), "web", "production")
	require.NoError(t, err)
	require.Empty(t, slot, "the cancelled deployment released production")
	require.Empty(t, queue)
}

func TestEngineOneDeploymentPerEnvironment(t *testing.T) {
	t.Parallel()
	fx := setupWith(t, fmt.Sprintf(confYAML2, false))
	runEngine(t, fx.newEngine(t))
	a, b := flowOf(0), flowOf(1)
	fx.publishPush(t, "d-a", "d-a", shaN(0))
	fx.waitState(t, a, flow.FlowInProgress, flow.Created)
	fx.publishPush(t, "d-b", "d-b", shaN(1))
	fb := fx.waitState(t, b, flow.FlowInProgress, flow.NotStarted)
	fx.waitIdle(t)
	fb, err := fx.st.GetFlow(context.Background(), b)
	require.NoError(t, err)
	require.True(t, fb.Deployments[0].Waiting, "b waits for staging")
	holder, queue, err := fx.st.SlotHolder(context.Background(), "web", "staging")
	require.NoError(t, err)
	require.Equal(t, flow.DeploymentID(a, "staging"), holder)
	require.Equal(t, []string{flow.DeploymentID(b, "staging")}, queue)

	// a's staging ends: a moves to production, b gets staging.
	fx.report(t, a, "staging", "s1", wire.JobFinished, 0)
	fx.report(t, a, "staging", "s2", wire.JobFinished, 0)
	fx.waitState(t, a, flow.FlowInProgress, flow.Succeeded, flow.Created)
	fx.waitState(t, b, flow.FlowInProgress, flow.Created)
}

const confYAML2 = `
services:
  - name: web
    repository: acme/web
    git_url: file:///srv/web.git
    branches: [main]
    deploy: ./deploy.sh
    supersede: %t
    pipeline:
      - environment: staging
        targets: {env: staging}
      - environment: production
        targets: {env: production}
webhooks:
  - name: chat
    url: http://127.0.0.1:9/hooks
    secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
`

func TestEngineSupersede(t *testing.T) {
	t.Parallel()
	fx := setupWith(t, fmt.Sprintf(confYAML2, true))
	runEngine(t, fx.newEngine(t))
	// A burst of three pushes while the first is deploying to staging.
	fx.publishPush(t, "d-0", "d-0", shaN(0))
	fx.waitState(t, flowOf(0), flow.FlowInProgress, flow.Created)
	fx.publishPush(t, "d-1", "d-1", shaN(1))
	fx.publishPush(t, "d-2", "d-2", shaN(2))
	// The middle one never deploys anywhere; the first finishes staging only.
	fx.waitState(t, flowOf(1), flow.FlowCancelled, flow.Cancelled, flow.Cancelled)
	f0 := fx.waitState(t, flowOf(0), flow.FlowInProgress, flow.Created, flow.Cancelled)
	require.Contains(t, f0.Reason, "superseded by ")
	fx.report(t, flowOf(0), "staging", "s1", wire.JobFinished, 0)
	fx.report(t, flowOf(0), "staging", "s2", wire.JobFinished, 0)
	fx.waitState(t, flowOf(0), flow.FlowCancelled, flow.Succeeded, flow.Cancelled)
	// The newest gets staging once the first released it.
	f2 := fx.waitState(t, flowOf(2), flow.FlowInProgress, flow.Created, flow.NotStarted)
	// It names the flow it superseded: the newest older one it saw (the
	// middle one, or the first if it looked before the middle one joined).
	testenv.Eventually(t, 10*time.Second, "flow 2 names the flow it superseded", func() bool {
		f, err := fx.st.GetFlow(context.Background(), f2.ID)
		return err == nil && (f.Supersedes == flowOf(1) || f.Supersedes == flowOf(0))
	})
	// A later push, once the others ended, supersedes flow 2 alone.
	fx.report(t, flowOf(2), "staging", "s1", wire.JobStarted, 0)
	fx.publishPush(t, "d-3", "d-3", shaN(3))
	fx.waitState(t, flowOf(2), flow.FlowInProgress, flow.Started, flow.Cancelled)
	testenv.Eventually(t, 10*time.Second, "flow 3 names flow 2", func() bool {
		f, err := fx.st.GetFlow(context.Background(), flowOf(3))
		return err == nil && f.Supersedes == flowOf(2)
	})
	f1, err := fx.st.GetFlow(context.Background(), flowOf(1))
	require.NoError(t, err)
	require.NotEqual(t, flowOf(2), f1.Supersedes, "an older flow never names a newer one")
}

func TestEngineRollback(t *testing.T) {
	t.Parallel()
	fx := setupWith(t, strings.Replace(fmt.Sprintf(confYAML2, false), "    supersede: false\n", "    supersede: false\n    failure_strategy: rollback\n", 1))
	runEngine(t, fx.newEngine(t))
	good, bad := flowOf(0), flowOf(1)
	fx.publishPush(t, "d-0", "d-0", shaN(0))
	fx.waitState(t, good, flow.FlowInProgress, flow.Created)
	fx.report(t, good, "staging", "s1", wire.JobFinished, 0)
	fx.report(t, good, "staging", "s2", wire.JobFinished, 0)
	fx.waitState(t, good, flow.FlowInProgress, flow.Succeeded, flow.Created)
	fx.report(t, good, "production", "p1", wire.JobFinished, 0)
	fx.waitState(t, good, flow.FlowSucceeded)

	fx.publishPush(t, "d-1", "d-1", shaN(1))
	fx.waitState(t, bad, flow.FlowInProgress, flow.Created)
	fx.report(t, bad, "staging", "s1", wire.JobFinished, 0)
	fx.report(t, bad, "staging", "s2", wire.JobFinished, 0)
	fx.waitState(t, bad, flow.FlowInProgress, flow.Succeeded, flow.Created)
	fx.report(t, bad, "production", "p1", wire.JobFinished, 2)
	fx.waitState(t, bad, flow.FlowFailed, flow.Succeeded, flow.Failed)

	rb := flow.RollbackFlowID(bad)
	f := fx.waitState(t, rb, flow.FlowInProgress, flow.Created)
	require.Equal(t, bad, f.RollbackOf)
	require.Equal(t, shaN(0), f.Commit, "production goes back to the last version that succeeded there")
	require.Len(t, f.Deployments, 1)
	require.Equal(t, "production", f.Deployments[0].Environment)
	fx.report(t, rb, "production", "p1", wire.JobFinished, 0)
	f = fx.waitState(t, rb, flow.FlowSucceeded, flow.Succeeded)

	// Each environment's last success names its flow and when it
	// succeeded there (what keeps a late replay from going back in time).
	b := fx.waitState(t, bad, flow.FlowFailed, flow.Succeeded, flow.Failed)
	want := map[string]flow.LastSuccess{
		"staging":    {Artifact: "acme:web", Version: shaN(1), Commit: shaN(1), Ref: "refs/heads/main", FlowID: bad, SucceededAt: *b.Deployments[0].FinishedAt},
		"production": {Artifact: "acme:web", Version: shaN(0), Commit: shaN(0), Ref: "refs/heads/main", FlowID: rb, SucceededAt: *f.Deployments[0].FinishedAt},
	}
	require.Eventually(t, func() bool {
		last, err := fx.st.LastSucceeded(context.Background(), "web")
		return err == nil && reflect.DeepEqual(last, want)
	}, 10*time.Second, 20*time.Millisecond)
}

// TestEngineReplicasAgree runs three engine replicas on one consumer
// against a burst of events delivered in random order with duplicates, and
// checks the outcome equals a single engine's and no job or hook is
// published twice.
func TestEngineReplicasAgree(t *testing.T) {
	t.Parallel()
	const flows = 8
	outcome := func(t *testing.T, replicas int, seed uint64) (map[string]string, uint64, uint64) {
		fx := setupWith(t, fmt.Sprintf(confYAML2, false))
		for range replicas {
			runEngine(t, fx.newEngine(t))
		}
		for n := range flows {
			fx.publishPush(t, fmt.Sprintf("d-%d", n), fmt.Sprintf("d-%d", n), shaN(n))
		}
		// Act as the agents: whenever a deployment has jobs, report them
		// (started and finished, shuffled, each published twice under
		// different message ids: a redelivery beyond the window). Flows
		// 2 and 5 fail in staging.
		rng := rand.New(rand.NewPCG(seed, seed))
		reported := map[string]bool{}
		deadline := time.Now().Add(90 * time.Second)
		for {
			require.True(t, time.Now().Before(deadline), "flows did not finish in 90s")
			done := 0
			var batch []wire.JobReport
			for n := range flows {
				f, err := fx.st.GetFlow(context.Background(), flowOf(n))
				if err != nil {
					continue
				}
				if f.State.Terminal() {
					done++
					continue
				}
				for _, d := range f.Deployments {
					if d.State != flow.Created && d.State != flow.Started {
						continue
					}
					for _, j := range d.Jobs {
						id := wire.JobID(d.ID, j.AgentID)
						if reported[id] {
							continue
						}
						reported[id] = true
						code := 0
						if n%3 == 2 && d.Environment == "staging" {
							code = 1
						}
						base := wire.JobReport{JobID: id, FlowID: f.ID, DeploymentID: d.ID, AgentID: j.AgentID}
						started, finished := base, base
						started.State = wire.JobStarted
						finished.State, finished.ExitCode = wire.JobFinished, &code
						batch = append(batch, started, finished)
					}
				}
			}
			if done == flows {
				break
			}
			rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
			for _, jr := range batch {
				b, _ := json.Marshal(jr)
				for _, suffix := range []string{"", "-again"} {
					_, err := fx.js.Publish(context.Background(), wire.SubjectJobReport, b, jetstream.WithMsgID(jr.MsgID()+suffix))
					require.NoError(t, err)
				}
			}
			time.Sleep(20 * time.Millisecond) // poll interval, bounded by the deadline
		}
		fx.waitIdle(t)
		got := map[string]string{}
		for n := range flows {
			f, err := fx.st.GetFlow(context.Background(), flowOf(n))
			require.NoError(t, err)
			var parts []string
			for _, d := range f.Deployments {
				if d.State == flow.Failed {
					// Which of the failing jobs reported first (and so
					// which one the deployment records) depends on timing.
					parts = append(parts, d.Environment+"=failed")
					continue
				}
				js := make([]string, 0, len(d.Jobs))
				for _, j := range d.Jobs {
					js = append(js, j.AgentID+":"+string(j.State))
				}
				sort.Strings(js)
				parts = append(parts, d.Environment+"="+string(d.State)+"["+strings.Join(js, ",")+"]")
			}
			got[f.ID] = string(f.State) + " " + strings.Join(parts, " ")
		}
		return got, fx.streamMsgs(t, wire.StreamJobs), fx.streamMsgs(t, wire.StreamHooks)
	}
	serial, sJobs, sHooks := outcome(t, 1, 1)
	parallel, pJobs, pHooks := outcome(t, 3, 2)
	require.Equal(t, serial, parallel)
	// 8 flows × 2 staging jobs + 6 succeeded × 1 production job.
	require.EqualValues(t, flows*2+6, sJobs)
	require.Equal(t, sJobs, pJobs)
	// Hooks of a flow that succeeds: flow created, started, succeeded and
	// four per environment (created, started, completed, succeeded) = 11;
	// of one that fails in staging: flow created, started, failed and
	// staging created, started, failed = 6.
	require.EqualValues(t, 6*11+2*6, sHooks)
	require.Equal(t, sHooks, pHooks)
}

func (fx *fixture) publishGitHub(t *testing.T, typ, delivery string, body []byte) {
	t.Helper()
	msg := &nats.Msg{Subject: wire.GitHubSubject(typ), Data: body, Header: nats.Header{}}
	msg.Header.Set(wire.HeaderGitHubEvent, typ)
	msg.Header.Set(wire.HeaderDelivery, delivery)
	msg.Header.Set(wire.HeaderRepository, "acme/web")
	_, err := fx.js.PublishMsg(context.Background(), msg, jetstream.WithMsgID(delivery))
	require.NoError(t, err)
}

func TestEngineTagsPullRequestsAndArtifacts(t *testing.T) {
	t.Parallel()
	yaml := strings.Replace(fmt.Sprintf(confYAML2, false), "    branches: [main]\n", "    branches: [main]\n    tags: true\n    pull_requests: true\n", 1)
	fx := setupWith(t, yaml)
	runEngine(t, fx.newEngine(t))

	fx.publishGitHub(t, "push", "d-tag", testenv.PushPayload("acme/web", "refs/tags/v1.2.0", shaN(7)))
	tag := fx.waitState(t, flow.FlowID("acme:web", "v1.2.0", "web"), flow.FlowInProgress, flow.Created)
	require.Equal(t, "v1.2.0", tag.Version)
	require.Equal(t, shaN(7), tag.Commit)
	require.Equal(t, "refs/tags/v1.2.0", tag.Ref)
	require.Equal(t, "v1.2.0", tag.Metadata["tag"])

	pr := fmt.Sprintf(`{"action":"synchronize","number":42,"pull_request":{"number":42,"head":{"sha":%q,"ref":"feature/x"},"base":{"ref":"main"}},"repository":{"full_name":"acme/web"}}`, shaN(8))
	fx.publishGitHub(t, "pull_request", "d-pr", []byte(pr))
	f := fx.waitState(t, flow.FlowID("acme:web", shaN(8), "web"), flow.FlowInProgress, flow.NotStarted)
	require.Equal(t, "refs/pull/42/head", f.Ref)
	require.Equal(t, map[string]string{"pull_request": "42", "head_ref": "feature/x", "base_ref": "main"}, f.Metadata)

	// A closed pull request deploys nothing.
	closed := strings.Replace(pr, "synchronize", "closed", 1)
	closed = strings.Replace(closed, shaN(8), shaN(9), 1)
	fx.publishGitHub(t, "pull_request", "d-pr-closed", []byte(closed))

	// CI posts an artifact through the API.
	b, _ := json.Marshal(wire.ArtifactCreated{EventID: "ci-1", Artifact: "acme:web", Version: "build-77", Commit: shaN(10), Ref: "refs/heads/main", Metadata: map[string]string{"ci": "77"}})
	_, err := fx.js.Publish(context.Background(), wire.SubjectArtifact, b, jetstream.WithMsgID("ci-1"))
	require.NoError(t, err)
	a := fx.waitState(t, flow.FlowID("acme:web", "build-77", "web"), flow.FlowInProgress)
	require.Equal(t, shaN(10), a.Commit)
	require.Equal(t, "acme/web", a.Repository)
	require.Equal(t, "77", a.Metadata["ci"])

	fx.waitIdle(t)
	_, err = fx.st.GetFlow(context.Background(), flow.FlowID("acme:web", shaN(9), "web"))
	require.ErrorIs(t, err, store.ErrNotFound)
}

func TestEngineRedeployTrigger(t *testing.T) {
	t.Parallel()
	fx := setupWith(t, fmt.Sprintf(confYAML2, false))
	runEngine(t, fx.newEngine(t))
	id := flowOf(0)
	fx.publishPush(t, "d-0", "d-0", shaN(0))
	fx.waitState(t, id, flow.FlowInProgress, flow.Created)
	fx.report(t, id, "staging", "s1", wire.JobFinished, 1)
	fx.waitState(t, id, flow.FlowFailed)
	fx.trigger(t, wire.Trigger{EventID: "r-1", Kind: wire.TriggerRedeploy, FlowID: id, By: "alice"})
	re := fx.waitState(t, flow.RedeployFlowID("r-1"), flow.FlowInProgress, flow.Created)
	require.Equal(t, id, re.RedeployOf)
	require.Equal(t, shaN(0), re.Commit)
	require.Len(t, re.Deployments, 2)
}
