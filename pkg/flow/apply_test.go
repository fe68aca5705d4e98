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
