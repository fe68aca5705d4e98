package flow

import (
	"encoding/json"
	"testing"
	"time"
)

// FuzzApply drives a flow with random event sequences and checks the
// invariants of the model after every step.
func FuzzApply(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7})
	f.Add([]byte{1, 1, 1, 9, 9, 9, 0, 0, 200, 100})
	f.Add([]byte{3, 3, 7, 7, 2, 2, 8, 8, 4})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 200 {
			ops = ops[:200]
		}
		c := create("staging", "production", "eu")
		c.Spec.Supersede = true
		c.Spec.FailureStrategy = "rollback"
		c = withPromotions(c, 0, false,
			PromotionSpec{Name: "smoke", Type: PromotionScript, Command: "./smoke.sh"},
			PromotionSpec{Name: "release", Type: PromotionManual})
		c = withPromotions(c, 1, true,
			PromotionSpec{Name: "qa", Type: PromotionExternal},
			PromotionSpec{Name: "soak", Type: PromotionWait, Duration: time.Minute})
		envs := []string{"staging", "production", "eu"}
		ags := []string{"s1", "s2", "p1", "nobody"}
		var fl *Flow
		for i, op := range ops {
			ev := eventOf(c, envs, ags, op)
			inp := Input{At: t0.Add(time.Duration(i) * time.Second), Agents: agents,
				LastSucceeded: map[string]LastSuccess{"staging": {Artifact: "acme:web", Version: "old", Commit: "old"}}}
			if op%17 == 16 {
				inp.Agents = nil // agents went away
			}
			next, effs, err := Apply(fl, ev, inp)
			if err != nil {
				if len(effs) != 0 || !equalJSON(next, fl) {
					t.Fatalf("step %d: error %v but state changed or effects emitted", i, err)
				}
				continue
			}
			checkInvariants(t, fl, next, effs)
			// Applying the same event again changes nothing more (the
			// engine also dedupes by event id; the model must not rely on it).
			again, effs2, err := Apply(next, ev, inp)
			if err == nil && (len(effs2) != 0 || !equalJSON(again, next)) {
				t.Fatalf("step %d: %T applied twice is not idempotent: %d effects", i, ev, len(effs2))
			}
			fl = next
		}
	})
}

func eventOf(c CreateFlow, envs, ags []string, op byte) Event {
	env := envs[int(op>>4)%len(envs)]
	agent := ags[int(op>>6)%len(ags)]
	dep := DeploymentID(c.FlowID, env)
	promos := []string{"", "smoke", "release", "qa", "soak"}
	promo := promos[int(op>>3)%len(promos)]
	switch op % 12 {
	case 0:
		return c
	case 1:
		return JobStarted{DeploymentID: dep, AgentID: agent, Promotion: promo}
	case 2, 3:
		return JobFinished{DeploymentID: dep, AgentID: agent, Promotion: promo, ExitCode: 0}
	case 4:
		return JobFinished{DeploymentID: dep, AgentID: agent, Promotion: promo, ExitCode: 1}
	case 5:
		return SlotGranted{DeploymentID: dep}
	case 6:
		return PromotionResult{DeploymentID: dep, Promotion: promo, Via: ViaApprove, Passed: true}
	case 7:
		return PromotionResult{DeploymentID: dep, Promotion: promo, Via: ViaResult, Passed: op&64 == 0}
	case 8:
		return TimerFired{Key: TimerKey(dep, promo, []string{"wait", "timeout"}[int(op>>7)])}
	case 9:
		if op > 200 {
			return Supersedes{Older: "folder"}
		}
		return Supersede{By: "fnewer", Version: "v2"}
	case 10:
		if op > 200 {
			return Cancel{Reason: "fuzz"}
		}
		return SlotGranted{DeploymentID: dep}
	default:
		return PromotionResult{DeploymentID: dep, Promotion: promo, Via: ViaReject}
	}
}

func checkInvariants(t *testing.T, prev, next *Flow, effs []Effect) {
	t.Helper()
	if next == nil {
		if len(effs) != 0 {
			t.Fatal("effects without a flow")
		}
		return
	}
	if prev != nil && prev.State.Terminal() && (next.State != prev.State || len(effs) != 0) {
		t.Fatalf("terminal flow %s changed to %s with %d effects", prev.State, next.State, len(effs))
	}
	running, seenNotStarted := 0, false
	for i, d := range next.Deployments {
		if prev != nil && prev.Deployments[i].State.Terminal() && !equalJSON(prev.Deployments[i], d) {
			t.Fatalf("terminal deployment %s changed", d.ID)
		}
		if prev != nil && !allowedOrSame(prev.Deployments[i].State, d.State) {
			t.Fatalf("deployment %s moved %s -> %s outside the table", d.ID, prev.Deployments[i].State, d.State)
		}
		if d.State == Created || d.State == Started || d.State == Completed {
			running++
		}
		if d.State == NotStarted {
			seenNotStarted = true
		} else if seenNotStarted {
			t.Fatalf("environment %s left not_started before an earlier one", d.Environment)
		}
	}
	if running > 1 {
		t.Fatalf("%d deployments running at once", running)
	}
	for _, d := range next.Deployments {
		for _, p := range d.Promotions {
			if p.State == PromotionRunning && !d.State.Active() {
				t.Fatalf("promotion %s running in a %s deployment", p.Name, d.State)
			}
			if p.State != PromotionPending && d.State == NotStarted {
				t.Fatalf("promotion %s %s before its deployment started", p.Name, p.State)
			}
		}
		if d.State == Succeeded {
			for _, p := range d.Promotions {
				if p.State != PromotionPassed {
					t.Fatalf("deployment %s succeeded with promotion %s %s", d.Environment, p.Name, p.State)
				}
			}
		}
	}
	if next.State == FlowSucceeded {
		for _, d := range next.Deployments {
			if d.State != Succeeded {
				t.Fatalf("flow succeeded with deployment %s %s", d.Environment, d.State)
			}
		}
	}
	for _, e := range effs {
		if e.Kind == EffectJob && next.Deployment(e.DeploymentID) == nil {
			t.Fatalf("job for unknown deployment %s", e.DeploymentID)
		}
		if e.Kind == EffectHook && e.Snapshot == nil {
			t.Fatal("hook without snapshot")
		}
	}
}

// allowedOrSame reports whether a deployment's move between two
// observations is a path through the table (several moves may happen in
// one Apply).
func allowedOrSame(from, to DeploymentState) bool {
	if from == to {
		return true
	}
	seen := map[DeploymentState]bool{from: true}
	queue := []DeploymentState{from}
	for len(queue) > 0 {
		s := queue[0]
		queue = queue[1:]
		for _, n := range deploymentMoves[s] {
			if n == to {
				return true
			}
			if !seen[n] {
				seen[n] = true
				queue = append(queue, n)
			}
		}
	}
	return false
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
