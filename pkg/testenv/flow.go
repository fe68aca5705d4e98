package testenv

import (
	"testing"
	"time"

	"github.com/shanenoi/otariinae/pkg/flow"
)

// WholeFlow is a flow as the engine stores it while it deploys: service
// svc with a staging and a production environment, staging granted and
// deployed by two agents (about 1.2 KB of JSON). Benchmarks of the state
// write use it.
func WholeFlow(t testing.TB, id string, at time.Time) *flow.Flow {
	t.Helper()
	c := flow.CreateFlow{
		FlowID: id, Artifact: "acme:svc", Version: "v1", Commit: "c1", Ref: "refs/heads/main",
		Service: "svc", Repository: "acme/svc", Spec: flow.Spec{
			GitURL: "file:///srv/svc.git", Command: "./deploy.sh", FailureStrategy: "stop", Supersede: true,
			Environments: []flow.EnvSpec{
				{Name: "staging", Targets: map[string]string{"env": "staging"}, Timeout: 30 * time.Minute},
				{Name: "production", Targets: map[string]string{"env": "production"}, Timeout: 30 * time.Minute},
			},
		},
	}
	in := flow.Input{At: at, Agents: []flow.Agent{
		{ID: "s1", Labels: map[string]string{"env": "staging"}},
		{ID: "s2", Labels: map[string]string{"env": "staging"}},
	}}
	f, _, err := flow.Apply(nil, c, in)
	if err == nil {
		f, _, err = flow.Apply(f, flow.SlotGranted{DeploymentID: flow.DeploymentID(id, "staging")}, in)
	}
	if err != nil {
		t.Fatalf("whole flow %s: %v", id, err)
	}
	return f
}
