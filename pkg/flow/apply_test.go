package flow

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var t0 = time.Date(2026, 11, 23, 6, 0, 0, 0, time.UTC)

func spec(envs ...string) Spec {
	sp := Spec{GitURL: "file:///srv/web.git", Command: "./deploy.sh"}
	for _, e := range envs {
		sp.Environments = append(sp.Environments, EnvSpec{Name: e, Targets: map[string]string{"env": e}, Timeout: time.Minute})
	}
	return sp
}

func create(envs ...string) CreateFlow {
	return CreateFlow{
		FlowID: FlowID("acme:web", "abc", "web"), Artifact: "acme:web", Version: "abc", Commit: "abc",
		Ref: "refs/heads/main", Service: "web", Repository: "acme/web", Spec: spec(envs...),
	}
}

var agents = []Agent{
	{ID: "s1", Labels: map[string]string{"env": "staging"}},
	{ID: "s2", Labels: map[string]string{"env": "staging", "zone": "b"}},
	{ID: "p1", Labels: map[string]string{"env": "production"}},
}

func in(sec int) Input { return Input{At: t0.Add(time.Duration(sec) * time.Second), Agents: agents} }

func js(dep, agent string) JobStarted { return JobStarted{DeploymentID: dep, AgentID: agent} }

func jf(dep, agent string, code int, reason string) JobFinished {
	return JobFinished{DeploymentID: dep, AgentID: agent, ExitCode: code, Reason: reason}
}

// run applies events in order, failing the test on an error. Like an
// engine whose environments are all free, it grants every slot requested.
func run(t *testing.T, f *Flow, evs ...Event) (*Flow, []Effect) {
	t.Helper()
	var all []Effect
	for i, ev := range evs {
		var effs []Effect
		var err error
		f, effs, err = Apply(f, ev, in(i+1))
		require.NoError(t, err, "event %d %#v", i, ev)
		all = append(all, effs...)
		for _, e := range effs {
			if e.Kind == EffectRequestSlot {
				var more []Effect
				f, more = run(t, f, SlotGranted{DeploymentID: e.DeploymentID})
				all = append(all, more...)
			}
		}
	}
	return f, all
}

func hooks(effs []Effect) []string {
	var out []string
	for _, e := range effs {
		if e.Kind == EffectHook {
			out = append(out, e.Hook)
		}
	}
	return out
}

func jobs(effs []Effect) []string {
	var out []string
	for _, e := range effs {
		if e.Kind == EffectJob {
			out = append(out, e.DeploymentID+"@"+e.AgentID)
		}
	}
	return out
}

func TestIDs(t *testing.T) {
	t.Parallel()
	id := FlowID("acme:web", "abc", "web")
	require.Len(t, id, FlowIDLen)
	require.Equal(t, id, FlowID("acme:web", "abc", "web"), "deterministic")
	require.NotEqual(t, id, FlowID("acme:web", "abc", "api"))
	got, ok := FlowIDOf(DeploymentID(id, "staging"))
	require.True(t, ok)
	require.Equal(t, id, got)
	for _, bad := range []string{"", id, "x" + id[1:] + "-staging", id[:10] + "-staging", "fZZZZZZZZZZZZZZZZZZZZZZZZ-x"} {
		_, ok := FlowIDOf(bad)
		require.False(t, ok, bad)
	}
}

func TestApply(t *testing.T) {
	t.Parallel()
	c := create("staging", "production")
	stg, prd := DeploymentID(c.FlowID, "staging"), DeploymentID(c.FlowID, "production")
	tests := []struct {
		name       string
		events     []Event
		flowState  FlowState
		deploys    []DeploymentState
		wantHooks  []string
		wantJobs   []string
		wantReason string
	}{
		{
			name:      "create starts the first environment on every matching agent",
			events:    []Event{c},
			flowState: FlowInProgress, deploys: []DeploymentState{Created, NotStarted},
			wantHooks: []string{"flow.created", "deployment.created"},
			wantJobs:  []string{stg + "@s1", stg + "@s2"},
		},
		{
			name:      "first job started starts the deployment and the flow",
			events:    []Event{c, js(stg, "s1")},
			flowState: FlowInProgress, deploys: []DeploymentState{Started, NotStarted},
			wantHooks: []string{"flow.created", "deployment.created", "flow.started", "deployment.started"},
			wantJobs:  []string{stg + "@s1", stg + "@s2"},
		},
		{
			name:      "one of two jobs finished keeps the deployment started",
			events:    []Event{c, js(stg, "s1"), js(stg, "s2"), jf(stg, "s1", 0, "")},
			flowState: FlowInProgress, deploys: []DeploymentState{Started, NotStarted},
			wantHooks: []string{"flow.created", "deployment.created", "flow.started", "deployment.started"},
			wantJobs:  []string{stg + "@s1", stg + "@s2"},
		},
		{
			name:      "all jobs succeeded: deployment succeeds, next one is created",
			events:    []Event{c, js(stg, "s1"), js(stg, "s2"), jf(stg, "s1", 0, ""), jf(stg, "s2", 0, "")},
			flowState: FlowInProgress, deploys: []DeploymentState{Succeeded, Created},
			wantHooks: []string{"flow.created", "deployment.created", "flow.started", "deployment.started", "deployment.completed", "deployment.succeeded", "deployment.created"},
			wantJobs:  []string{stg + "@s1", stg + "@s2", prd + "@p1"},
		},
		{
			name: "last deployment succeeded: flow succeeds",
			events: []Event{c, jf(stg, "s1", 0, ""), jf(stg, "s2", 0, ""),
				js(prd, "p1"), jf(prd, "p1", 0, "")},
			flowState: FlowSucceeded, deploys: []DeploymentState{Succeeded, Succeeded},
			wantHooks: []string{"flow.created", "deployment.created", "flow.started", "deployment.started", "deployment.completed", "deployment.succeeded", "deployment.created",
				"deployment.started", "deployment.completed", "deployment.succeeded", "flow.succeeded"},
			wantJobs: []string{stg + "@s1", stg + "@s2", prd + "@p1"},
		},
		{
			name:      "a failed job fails the deployment and the flow (stop)",
			events:    []Event{c, js(stg, "s1"), jf(stg, "s1", 2, "exit status 2")},
			flowState: FlowFailed, deploys: []DeploymentState{Failed, NotStarted},
			wantHooks:  []string{"flow.created", "deployment.created", "flow.started", "deployment.started", "deployment.failed", "flow.failed"},
			wantJobs:   []string{stg + "@s1", stg + "@s2"},
			wantReason: "job on agent s1 exited 2: exit status 2",
		},
		{
			name:      "a report after the deployment failed changes nothing",
			events:    []Event{c, jf(stg, "s1", 1, ""), jf(stg, "s2", 0, ""), js(stg, "s2")},
			flowState: FlowFailed, deploys: []DeploymentState{Failed, NotStarted},
			wantHooks:  []string{"flow.created", "deployment.created", "flow.started", "deployment.started", "deployment.failed", "flow.failed"},
			wantJobs:   []string{stg + "@s1", stg + "@s2"},
			wantReason: "job on agent s1 exited 1",
		},
		{
			name:      "repeated reports are idempotent",
			events:    []Event{c, js(stg, "s1"), js(stg, "s1"), c},
			flowState: FlowInProgress, deploys: []DeploymentState{Started, NotStarted},
			wantHooks: []string{"flow.created", "deployment.created", "flow.started", "deployment.started"},
			wantJobs:  []string{stg + "@s1", stg + "@s2"},
		},
		{
			name:      "finished overtaking started still passes through started",
			events:    []Event{c, jf(stg, "s1", 0, ""), jf(stg, "s2", 0, ""), js(stg, "s1")},
			flowState: FlowInProgress, deploys: []DeploymentState{Succeeded, Created},
			wantHooks: []string{"flow.created", "deployment.created", "flow.started", "deployment.started", "deployment.completed", "deployment.succeeded", "deployment.created"},
			wantJobs:  []string{stg + "@s1", stg + "@s2", prd + "@p1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, effs := run(t, nil, tt.events...)
			require.Equal(t, tt.flowState, f.State)
			var states []DeploymentState
			for _, d := range f.Deployments {
				states = append(states, d.State)
			}
			require.Equal(t, tt.deploys, states)
			require.Equal(t, tt.wantHooks, hooks(effs))
			require.Equal(t, tt.wantJobs, jobs(effs))
			if tt.wantReason != "" {
				require.Equal(t, tt.wantReason, f.Deployments[0].Reason)
			}
		})
	}
}

func TestApplyNoMatchingAgent(t *testing.T) {
	t.Parallel()
	c := create("canary", "production")
	f, effs := run(t, nil, c)
	require.Equal(t, FlowFailed, f.State)
	require.Equal(t, Failed, f.Deployments[0].State)
	require.Equal(t, "no online agent matches targets env=canary", f.Deployments[0].Reason)
	require.Equal(t, NotStarted, f.Deployments[1].State)
	require.Equal(t, []string{"flow.created", "deployment.created", "deployment.failed", "flow.failed"}, hooks(effs))
	require.Empty(t, jobs(effs))
}

func TestApplyTimestamps(t *testing.T) {
	t.Parallel()
	c := create("staging")
	stg := DeploymentID(c.FlowID, "staging")
	f, _ := run(t, nil, c, js(stg, "s1"), jf(stg, "s1", 0, ""), jf(stg, "s2", 0, ""))
	d := f.Deployments[0]
	require.Equal(t, t0.Add(1*time.Second), *d.CreatedAt)
	require.Equal(t, t0.Add(2*time.Second), *d.StartedAt)
	require.Equal(t, t0.Add(4*time.Second), *d.CompletedAt)
	require.Equal(t, t0.Add(4*time.Second), *d.FinishedAt)
	require.Equal(t, t0.Add(1*time.Second), f.CreatedAt)
	require.Equal(t, t0.Add(4*time.Second), f.UpdatedAt)
	require.Equal(t, FlowSucceeded, f.State)
}

func TestApplySnapshotsAreMoments(t *testing.T) {
	t.Parallel()
	c := create("staging", "production")
	stg := DeploymentID(c.FlowID, "staging")
	f, _ := run(t, nil, c, jf(stg, "s1", 0, ""))
	_, all, err := Apply(f, jf(stg, "s2", 0, ""), in(9))
	require.NoError(t, err)
	var effs []Effect
	for _, e := range all {
		if e.Kind == EffectHook {
			effs = append(effs, e)
		}
	}
	// deployment.completed shows staging completed, not yet succeeded.
	require.Equal(t, "deployment.completed", effs[0].Hook)
	require.Equal(t, Completed, effs[0].Snapshot.Deployment(stg).State)
	require.Equal(t, "deployment.succeeded", effs[1].Hook)
	require.Equal(t, Succeeded, effs[1].Snapshot.Deployment(stg).State)
}

func TestApplyErrorsLeaveStateUnchanged(t *testing.T) {
	t.Parallel()
	c := create("staging", "production")
	stg, prd := DeploymentID(c.FlowID, "staging"), DeploymentID(c.FlowID, "production")
	base, _ := run(t, nil, c)
	tests := []struct {
		name  string
		flow  *Flow
		event Event
		in    Input
		want  error
	}{
		{"job of a missing flow", nil, js(stg, "s1"), in(5), ErrNotFound},
		{"unknown deployment", base, js(c.FlowID+"-qa", "s1"), in(5), ErrNotFound},
		{"agent without a job", base, jf(stg, "p1", 0, ""), in(5), ErrNotFound},
		{"job on a not-started deployment", base, js(prd, "p1"), in(5), ErrInvalidTransition},
		{"create without service", nil, CreateFlow{FlowID: "f1", Artifact: "a:b", Version: "v"}, in(5), ErrInvalidEvent},
		{"create without environments", nil, CreateFlow{FlowID: "f1", Artifact: "a:b", Version: "v", Service: "web"}, in(5), ErrInvalidEvent},
		{"no time", base, js(stg, "s1"), Input{}, ErrInvalidEvent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			before := tt.flow.Clone()
			got, effs, err := Apply(tt.flow, tt.event, tt.in)
			require.Error(t, err)
			require.True(t, errors.Is(err, tt.want), "got %v, want %v", err, tt.want)
			require.Empty(t, effs)
			require.Equal(t, before, got)
			require.Equal(t, before, tt.flow, "input not modified")
		})
	}
	var te *TransitionError
	_, _, err := Apply(base, js(prd, "p1"), in(5))
	require.ErrorAs(t, err, &te)
	require.Equal(t, "not_started", te.From)
}

func TestApplyDoesNotModifyInput(t *testing.T) {
	t.Parallel()
	c := create("staging")
	stg := DeploymentID(c.FlowID, "staging")
	f, _ := run(t, nil, c)
	before := f.Clone()
	_, _, err := Apply(f, jf(stg, "s1", 0, ""), in(3))
	require.NoError(t, err)
	require.Equal(t, before, f)
}

func TestMatches(t *testing.T) {
	t.Parallel()
	require.True(t, Matches(map[string]string{"env": "staging", "zone": "a"}, map[string]string{"env": "staging"}))
	require.False(t, Matches(map[string]string{"env": "staging"}, map[string]string{"env": "staging", "zone": "a"}))
	require.False(t, Matches(nil, map[string]string{"env": "staging"}))
	require.True(t, Matches(nil, nil))
}

func withPromotions(c CreateFlow, env int, parallel bool, ps ...PromotionSpec) CreateFlow {
	sp := c.Spec
	envs := append([]EnvSpec(nil), sp.Environments...)
	envs[env].Promotions = ps
	envs[env].Parallel = parallel
	sp.Environments = envs
	c.Spec = sp
	return c
}

func effectsOf(effs []Effect, kind EffectKind) []Effect {
	var out []Effect
	for _, e := range effs {
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

func TestPromotions(t *testing.T) {
	t.Parallel()
	base := create("staging", "production")
	stg, prd := DeploymentID(base.FlowID, "staging"), DeploymentID(base.FlowID, "production")
	smoke := PromotionSpec{Name: "smoke", Type: PromotionScript, Command: "./smoke.sh"}
	release := PromotionSpec{Name: "release", Type: PromotionManual}
	qa := PromotionSpec{Name: "qa", Type: PromotionExternal, Timeout: time.Hour}
	soak := PromotionSpec{Name: "soak", Type: PromotionWait, Duration: 10 * time.Minute}
	deployed := []Event{jf(stg, "s1", 0, ""), jf(stg, "s2", 0, "")}
	pjf := func(promo, agent string, code int) JobFinished {
		return JobFinished{DeploymentID: stg, AgentID: agent, Promotion: promo, ExitCode: code}
	}
	approve := PromotionResult{DeploymentID: stg, Promotion: "release", Via: ViaApprove, Passed: true, By: "alice", Reason: "looks good"}
	reject := PromotionResult{DeploymentID: stg, Promotion: "release", Via: ViaReject, Passed: false, By: "bob", Reason: "no"}

	t.Run("sequential script then manual: both pass, next environment starts", func(t *testing.T) {
		t.Parallel()
		c := withPromotions(base, 0, false, smoke, release)
		f, effs := run(t, nil, append([]Event{c}, deployed...)...)
		d := f.Deployment(stg)
		require.Equal(t, Completed, d.State)
		require.Equal(t, PromotionRunning, d.Promotions[0].State)
		require.Equal(t, PromotionPending, d.Promotions[1].State, "one at a time")
		require.Equal(t, []string{stg + "@s1", stg + "@s2", stg + "@s1", stg + "@s2"}, jobs(effs), "the script runs on the deployment's agents")
		timers := effectsOf(effs, EffectTimer)
		require.Len(t, timers, 1)
		require.Equal(t, TimerKey(stg, "smoke", "timeout"), timers[0].Key)
		require.Equal(t, t0.Add(3*time.Second+DefaultPromotionTimeout), timers[0].At)

		f, effs = run(t, f, pjf("smoke", "s1", 0), pjf("smoke", "s2", 0))
		d = f.Deployment(stg)
		require.Equal(t, PromotionPassed, d.Promotions[0].State)
		require.Equal(t, PromotionRunning, d.Promotions[1].State)
		require.Equal(t, []string{"promotion.passed", "promotion.started"}, hooks(effs))
		require.Empty(t, effectsOf(effs, EffectTimer), "manual has no timeout unless set")

		f, effs = run(t, f, approve)
		d = f.Deployment(stg)
		require.Equal(t, Succeeded, d.State)
		require.Equal(t, "alice", d.Promotions[1].By)
		require.Equal(t, "passed", d.Promotions[1].Result)
		require.Equal(t, Created, f.Deployment(prd).State)
		require.Equal(t, []string{"promotion.passed", "deployment.succeeded", "deployment.created"}, hooks(effs))
		require.Len(t, effectsOf(effs, EffectSucceeded), 1)
	})

	t.Run("a failed script fails the deployment and the flow", func(t *testing.T) {
		t.Parallel()
		c := withPromotions(base, 0, false, smoke, release)
		f, effs := run(t, nil, append(append([]Event{c}, deployed...), pjf("smoke", "s1", 0), pjf("smoke", "s2", 4))...)
		d := f.Deployment(stg)
		require.Equal(t, Failed, d.State)
		require.Equal(t, PromotionFailed, d.Promotions[0].State)
		require.Equal(t, PromotionPending, d.Promotions[1].State)
		require.Equal(t, "promotion smoke failed: script job on agent s2 exited 4", d.Reason)
		require.Equal(t, FlowFailed, f.State)
		require.Equal(t, NotStarted, f.Deployment(prd).State)
		require.Contains(t, hooks(effs), "promotion.failed")
	})

	t.Run("manual rejection fails the flow", func(t *testing.T) {
		t.Parallel()
		c := withPromotions(base, 0, false, release)
		f, _ := run(t, nil, append(append([]Event{c}, deployed...), reject)...)
		require.Equal(t, FlowFailed, f.State)
		p := f.Deployment(stg).Promotions[0]
		require.Equal(t, PromotionFailed, p.State)
		require.Equal(t, "bob", p.By)
		require.Equal(t, "no", p.Reason)
	})

	t.Run("parallel promotions start together; external result and soak timer pass them", func(t *testing.T) {
		t.Parallel()
		c := withPromotions(base, 0, true, qa, soak)
		f, effs := run(t, nil, append([]Event{c}, deployed...)...)
		d := f.Deployment(stg)
		require.Equal(t, PromotionRunning, d.Promotions[0].State)
		require.Equal(t, PromotionRunning, d.Promotions[1].State)
		var keys []string
		for _, e := range effectsOf(effs, EffectTimer) {
			keys = append(keys, e.Key)
		}
		require.ElementsMatch(t, []string{TimerKey(stg, "qa", "timeout"), TimerKey(stg, "soak", "wait")}, keys)
		f, _ = run(t, f, TimerFired{Key: TimerKey(stg, "soak", "wait")})
		require.Equal(t, PromotionPassed, f.Deployment(stg).Promotions[1].State)
		require.Equal(t, Completed, f.Deployment(stg).State)
		f, _ = run(t, f, PromotionResult{DeploymentID: stg, Promotion: "qa", Via: ViaResult, Passed: true})
		require.Equal(t, Succeeded, f.Deployment(stg).State)
	})

	t.Run("timeout fails a promotion; a stale timer changes nothing", func(t *testing.T) {
		t.Parallel()
		c := withPromotions(base, 0, false, qa)
		f, _ := run(t, nil, append(append([]Event{c}, deployed...), TimerFired{Key: TimerKey(stg, "qa", "timeout")})...)
		require.Equal(t, FlowFailed, f.State)
		require.Equal(t, "promotion qa failed: timed out", f.Deployment(stg).Reason)
		again, effs, err := Apply(f, TimerFired{Key: TimerKey(stg, "qa", "timeout")}, in(20))
		require.NoError(t, err)
		require.Empty(t, effs)
		require.Equal(t, f.State, again.State)
	})

	t.Run("wrong promotion type or state is refused", func(t *testing.T) {
		t.Parallel()
		c := withPromotions(base, 0, false, qa, release)
		f, _ := run(t, nil, append([]Event{c}, deployed...)...)
		for _, ev := range []Event{
			approve, // release is still pending
			PromotionResult{DeploymentID: stg, Promotion: "qa", Via: ViaApprove, Passed: true}, // qa is external
		} {
			got, effs, err := Apply(f, ev, in(30))
			require.ErrorIs(t, err, ErrInvalidTransition)
			require.Empty(t, effs)
			require.Equal(t, f, got)
		}
		_, _, err := Apply(f, PromotionResult{DeploymentID: stg, Promotion: "nope", Via: ViaResult}, in(30))
		require.ErrorIs(t, err, ErrNotFound)
	})
}

func TestCancel(t *testing.T) {
	t.Parallel()
	c := create("staging", "production")
	stg, prd := DeploymentID(c.FlowID, "staging"), DeploymentID(c.FlowID, "production")
	f, _ := run(t, nil, c, js(stg, "s1"))
	f, effs := run(t, f, Cancel{By: "alice", Reason: "bad build"})
	require.Equal(t, FlowCancelled, f.State)
	require.Equal(t, Cancelled, f.Deployment(stg).State)
	require.Equal(t, Cancelled, f.Deployment(prd).State)
	require.Equal(t, "cancelled by alice: bad build", f.Reason)
	cancels := effectsOf(effs, EffectCancelJobs)
	require.Len(t, cancels, 1)
	require.Equal(t, []string{"s1", "s2"}, cancels[0].AgentIDs, "pending and running jobs stop")
	require.Equal(t, []string{"deployment.cancelled", "flow.cancelled"}, hooks(effs))
	require.Len(t, effectsOf(effs, EffectReleaseSlot), 1)

	_, _, err := Apply(f, Cancel{}, in(9))
	var te *TransitionError
	require.ErrorAs(t, err, &te)
	require.Equal(t, "cancelled", te.From)
	// Reports after the cancel change nothing.
	again, effs, err := Apply(f, jf(stg, "s1", 0, ""), in(10))
	require.NoError(t, err)
	require.Empty(t, effs)
	require.Equal(t, Cancelled, again.Deployment(stg).State)
}

func TestSupersede(t *testing.T) {
	t.Parallel()
	c := create("staging", "production")
	stg, prd := DeploymentID(c.FlowID, "staging"), DeploymentID(c.FlowID, "production")

	t.Run("running deployment finishes, the rest is cancelled", func(t *testing.T) {
		t.Parallel()
		f, _ := run(t, nil, c, js(stg, "s1"))
		f, effs := run(t, f, Supersede{By: "fnewer", Version: "def"})
		require.Equal(t, FlowInProgress, f.State)
		require.Equal(t, Started, f.Deployment(stg).State)
		require.Equal(t, Cancelled, f.Deployment(prd).State)
		require.Empty(t, hooks(effs))
		f, effs = run(t, f, jf(stg, "s1", 0, ""), jf(stg, "s2", 0, ""))
		require.Equal(t, Succeeded, f.Deployment(stg).State)
		require.Equal(t, FlowCancelled, f.State)
		require.Contains(t, f.Reason, "superseded by def")
		require.Equal(t, []string{"deployment.completed", "deployment.succeeded", "flow.cancelled"}, hooks(effs))
	})

	t.Run("a waiting flow gives its environment back", func(t *testing.T) {
		t.Parallel()
		f, effs, err := Apply(nil, c, in(1)) // slot requested, not granted
		require.NoError(t, err)
		require.Len(t, effectsOf(effs, EffectRequestSlot), 1)
		require.True(t, f.Deployment(stg).Waiting)
		f, effs, err = Apply(f, Supersede{By: "fnewer", Version: "def"}, in(2))
		require.NoError(t, err)
		require.Equal(t, FlowCancelled, f.State)
		rel := effectsOf(effs, EffectReleaseSlot)
		require.Len(t, rel, 1)
		require.Equal(t, stg, rel[0].DeploymentID)
		// A grant that crossed the cancel changes nothing: the release
		// above already gave the environment back.
		_, effs, err = Apply(f, SlotGranted{DeploymentID: stg}, in(3))
		require.NoError(t, err)
		require.Empty(t, effs)
	})

	t.Run("the newer flow records the flow it superseded, once", func(t *testing.T) {
		t.Parallel()
		f, _ := run(t, nil, c)
		got, effs, err := Apply(f, Supersedes{Older: "folder"}, in(5))
		require.NoError(t, err)
		require.Empty(t, effs, "no hook: the flow's state did not move")
		require.Equal(t, "folder", got.Supersedes)
		require.Equal(t, t0.Add(5*time.Second), got.UpdatedAt)
		require.Empty(t, f.Supersedes, "the flow applied to is not modified")
		again, _, err := Apply(got, Supersedes{Older: "fother"}, in(6))
		require.NoError(t, err)
		require.Equal(t, got, again, "recorded once")
		for _, older := range []string{"", c.FlowID} {
			same, _, err := Apply(f, Supersedes{Older: older}, in(6))
			require.NoError(t, err)
			require.Equal(t, f, same)
		}
		ended, _ := run(t, f, Cancel{Reason: "x"})
		same, effs, err := Apply(ended, Supersedes{Older: "folder"}, in(7))
		require.NoError(t, err)
		require.Empty(t, effs)
		require.Equal(t, ended, same, "a flow that ended never changes")
	})

	t.Run("supersede by itself or after the end changes nothing", func(t *testing.T) {
		t.Parallel()
		f, _ := run(t, nil, c)
		got, effs, err := Apply(f, Supersede{By: c.FlowID}, in(5))
		require.NoError(t, err)
		require.Empty(t, effs)
		require.Equal(t, FlowInProgress, got.State)
	})
}

func TestCreateAsksForSupersedeAndSlot(t *testing.T) {
	t.Parallel()
	c := create("staging")
	c.Spec.Supersede = true
	_, effs, err := Apply(nil, c, in(1))
	require.NoError(t, err)
	var kinds []EffectKind
	for _, e := range effs {
		kinds = append(kinds, e.Kind)
	}
	require.Equal(t, []EffectKind{EffectHook, EffectSupersede, EffectRequestSlot}, kinds)
}

func TestRollback(t *testing.T) {
	t.Parallel()
	c := create("staging", "production")
	c.Spec.FailureStrategy = "rollback"
	stg := DeploymentID(c.FlowID, "staging")
	last := map[string]LastSuccess{"staging": {Artifact: "acme:web", Version: "old", Commit: "old", Ref: "refs/heads/main", FlowID: "fold"}}
	f, _ := run(t, nil, c)
	f, effs, err := Apply(f, jf(stg, "s1", 1, ""), Input{At: t0.Add(time.Minute), LastSucceeded: last})
	require.NoError(t, err)
	require.Equal(t, FlowFailed, f.State)
	creates := effectsOf(effs, EffectCreateFlow)
	require.Len(t, creates, 1)
	rb := creates[0].Create
	require.Equal(t, RollbackFlowID(f.ID), rb.FlowID)
	require.Equal(t, f.ID, rb.RollbackOf)
	require.Equal(t, "old", rb.Version)
	require.Len(t, rb.Spec.Environments, 1)
	require.Equal(t, "staging", rb.Spec.Environments[0].Name)
	require.False(t, rb.Spec.Supersede)

	// The rollback flow itself is not rolled back again.
	rf, _ := run(t, nil, *rb)
	rf, effs, err = Apply(rf, jf(DeploymentID(rb.FlowID, "staging"), "s1", 1, ""), Input{At: t0.Add(2 * time.Minute), LastSucceeded: last})
	require.NoError(t, err)
	require.Equal(t, FlowFailed, rf.State)
	require.Empty(t, effectsOf(effs, EffectCreateFlow))

	// Nothing to roll back to: no rollback.
	f2, _ := run(t, nil, c)
	_, effs, err = Apply(f2, jf(stg, "s1", 1, ""), Input{At: t0.Add(time.Minute)})
	require.NoError(t, err)
	require.Empty(t, effectsOf(effs, EffectCreateFlow))
}

// BenchmarkApply measures the pure state machine: a flow's whole life
// (create, grant, two agents started and finished) per op.
func BenchmarkApply(b *testing.B) {
	c := create("staging")
	stg := DeploymentID(c.FlowID, "staging")
	evs := []Event{c, SlotGranted{DeploymentID: stg}, js(stg, "s1"), js(stg, "s2"), jf(stg, "s1", 0, ""), jf(stg, "s2", 0, "")}
	b.ReportAllocs()
	for b.Loop() {
		var f *Flow
		for i, ev := range evs {
			var err error
			f, _, err = Apply(f, ev, in(i))
			if err != nil {
				b.Fatal(err)
			}
		}
		if f.State != FlowSucceeded {
			b.Fatal(f.State)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(evs)), "ns/event")
}

// TestHookSnapshotsOnlyWhenListened: a hook nobody listens to is emitted
// all the same, without a copy of the flow; one somebody listens to
// carries the flow as it was.
func TestHookSnapshotsOnlyWhenListened(t *testing.T) {
	t.Parallel()
	c := create("staging")
	stg := DeploymentID(c.FlowID, "staging")
	evs := []Event{c, SlotGranted{DeploymentID: stg}, js(stg, "s1")}
	run := func(listened func(string) bool) (hooks []string, snapshots map[string]*Flow) {
		snapshots = map[string]*Flow{}
		var f *Flow
		for i, ev := range evs {
			input := in(i)
			input.Listened = listened
			var effects []Effect
			var err error
			f, effects, err = Apply(f, ev, input)
			require.NoError(t, err)
			for _, ef := range effects {
				if ef.Kind == EffectHook {
					hooks = append(hooks, ef.Hook)
					snapshots[ef.Hook] = ef.Snapshot
				}
			}
		}
		return hooks, snapshots
	}
	all, full := run(nil)
	require.Contains(t, all, "flow.created")
	require.Contains(t, all, "deployment.started")
	for h, snap := range full {
		require.NotNil(t, snap, h)
	}
	some, partial := run(func(hook string) bool { return hook == "deployment.started" })
	require.Equal(t, all, some)
	for h, snap := range partial {
		if h == "deployment.started" {
			require.Equal(t, full[h], snap)
		} else {
			require.Nil(t, snap, h)
		}
	}
}
