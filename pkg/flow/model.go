// Package flow is the deploy state machine of seed 002, with no I/O and no
// clock: Apply(flow, event) returns the next flow and the effects (hooks to
// announce, jobs to hand to agents) that the engine must carry out. Time,
// ids and the agents that are online arrive on the input, so the same input
// always gives the same output.
package flow

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// FlowState is the state of a flow.
type FlowState string

// Flow states.
const (
	FlowInProgress FlowState = "in_progress"
	FlowSucceeded  FlowState = "succeeded"
	FlowFailed     FlowState = "failed"
	FlowCancelled  FlowState = "cancelled"
)

// Terminal reports whether no event may change the flow any more.
func (s FlowState) Terminal() bool { return s != FlowInProgress }

// DeploymentState is the state of one environment's deployment.
type DeploymentState string

// Deployment states.
const (
	NotStarted DeploymentState = "not_started"
	Created    DeploymentState = "created"
	Started    DeploymentState = "started"
	Completed  DeploymentState = "completed"
	Succeeded  DeploymentState = "succeeded"
	Failed     DeploymentState = "failed"
	Cancelled  DeploymentState = "cancelled"
)

// Terminal reports whether the deployment can no longer change.
func (s DeploymentState) Terminal() bool {
	return s == Succeeded || s == Failed || s == Cancelled
}

// JobState is the state of one agent's job within a deployment.
type JobState string

// Job states.
const (
	JobPending   JobState = "pending"
	JobRunning   JobState = "started"
	JobSucceeded JobState = "succeeded"
	JobFailed    JobState = "failed"
)

// Flow is one artifact version going through one service's pipeline.
type Flow struct {
	ID          string            `json:"id"`
	Artifact    string            `json:"artifact"`
	Version     string            `json:"version"`
	Commit      string            `json:"commit"`
	Ref         string            `json:"ref"`
	Service     string            `json:"service"`
	Repository  string            `json:"repository"`
	State       FlowState         `json:"state"`
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
	Supersedes  string            `json:"supersedes,omitempty"`
	RollbackOf  string            `json:"rollback_of,omitempty"`
	RedeployOf  string            `json:"redeploy_of,omitempty"`
	Reason      string            `json:"reason,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	Deployments []Deployment      `json:"deployments"`
	// Spec is what to run, frozen when the flow was created so that a config
	// change never alters a flow in progress. Internal: views drop it.
	Spec *Spec `json:"spec,omitempty"`
}

// Spec is the frozen service configuration a flow runs with.
type Spec struct {
	GitURL          string    `json:"git_url"`
	Command         string    `json:"command"`
	Shell           bool      `json:"shell,omitempty"`
	Secrets         []string  `json:"secrets,omitempty"`
	FailureStrategy string    `json:"failure_strategy,omitempty"` // stop (default) | rollback
	Supersede       bool      `json:"supersede,omitempty"`
	Environments    []EnvSpec `json:"environments"`
}

// EnvSpec is the frozen configuration of one pipeline environment.
type EnvSpec struct {
	Name       string            `json:"name"`
	Targets    map[string]string `json:"targets"`
	Env        map[string]string `json:"env,omitempty"`
	Timeout    time.Duration     `json:"timeout"`
	Parallel   bool              `json:"parallel,omitempty"`
	Promotions []PromotionSpec   `json:"promotions,omitempty"`
}

// Promotion types.
const (
	PromotionScript   = "script"
	PromotionManual   = "manual"
	PromotionExternal = "external"
	PromotionWait     = "wait"
)

// DefaultPromotionTimeout applies to script and external promotions with
// no timeout of their own; manual ones wait forever unless one is set.
const DefaultPromotionTimeout = 30 * time.Minute

// PromotionSpec is the frozen configuration of one promotion.
type PromotionSpec struct {
	Name     string        `json:"name"`
	Type     string        `json:"type"`
	Command  string        `json:"command,omitempty"`
	Timeout  time.Duration `json:"timeout,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
}

// Deployment is the deploy of a flow's artifact to one environment.
type Deployment struct {
	ID          string          `json:"id"`
	FlowID      string          `json:"flow_id"`
	Environment string          `json:"environment"`
	State       DeploymentState `json:"state"`
	CreatedAt   *time.Time      `json:"created_at"`
	StartedAt   *time.Time      `json:"started_at"`
	CompletedAt *time.Time      `json:"completed_at"`
	FinishedAt  *time.Time      `json:"finished_at"`
	Reason      string          `json:"reason,omitempty"`
	Jobs        []Job           `json:"jobs"`
	Promotions  []Promotion     `json:"promotions"`
	// Waiting is set while the deployment waits for its environment: at
	// most one deployment per (service, environment) runs at a time.
	Waiting bool `json:"waiting,omitempty"`
}

// Job is one agent's part of a deployment.
type Job struct {
	AgentID  string   `json:"agent_id"`
	State    JobState `json:"state"`
	ExitCode *int     `json:"exit_code"`
	Reason   string   `json:"reason,omitempty"`
}

// PromotionState is the state of one promotion.
type PromotionState string

// Promotion states.
const (
	PromotionPending PromotionState = "pending"
	PromotionRunning PromotionState = "running"
	PromotionPassed  PromotionState = "passed"
	PromotionFailed  PromotionState = "failed"
)

// Terminal reports whether the promotion has its result.
func (s PromotionState) Terminal() bool { return s == PromotionPassed || s == PromotionFailed }

// Promotion is a gate run after a deployment completed.
type Promotion struct {
	Name       string         `json:"name"`
	Type       string         `json:"type"`
	State      PromotionState `json:"state"`
	StartedAt  *time.Time     `json:"started_at"`
	FinishedAt *time.Time     `json:"finished_at"`
	Result     string         `json:"result,omitempty"`
	Reason     string         `json:"reason,omitempty"`
	By         string         `json:"by,omitempty"`
	// Jobs are a script promotion's runs, one per agent of the deployment.
	Jobs []Job `json:"jobs,omitempty"`
}

// Agent is an online agent as the engine saw it when the event arrived.
type Agent struct {
	ID     string
	Labels map[string]string
}

// FlowIDLen is the length of every flow id.
const FlowIDLen = 25

// FlowID is the deterministic id of the flow of (artifact, version, service):
// a second create for the same pair lands on the same flow.
func FlowID(artifact, version, service string) string {
	h := sha256.Sum256([]byte(artifact + "\x00" + version + "\x00" + service))
	return "f" + hex.EncodeToString(h[:12])
}

// DeploymentID is the id of a flow's deployment to environment env.
func DeploymentID(flowID, env string) string { return flowID + "-" + env }

// FlowIDOf returns the flow id a deployment id belongs to.
func FlowIDOf(deploymentID string) (string, bool) {
	if len(deploymentID) <= FlowIDLen+1 || deploymentID[0] != 'f' || deploymentID[FlowIDLen] != '-' {
		return "", false
	}
	for _, c := range deploymentID[1:FlowIDLen] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return "", false
		}
	}
	return deploymentID[:FlowIDLen], true
}

// Deployment returns the deployment with id, or nil.
func (f *Flow) Deployment(id string) *Deployment {
	for i := range f.Deployments {
		if f.Deployments[i].ID == id {
			return &f.Deployments[i]
		}
	}
	return nil
}

// Clone returns a deep copy of f.
func (f *Flow) Clone() *Flow {
	if f == nil {
		return nil
	}
	c := *f
	c.Deployments = make([]Deployment, len(f.Deployments))
	for i, d := range f.Deployments {
		d.Promotions = append(make([]Promotion, 0, len(d.Promotions)), d.Promotions...)
		for j := range d.Promotions {
			d.Promotions[j].Jobs = cloneJobs(d.Promotions[j].Jobs)
		}
		d.Jobs = cloneJobs(d.Jobs)
		c.Deployments[i] = d
	}
	return &c
}

func cloneJobs(js []Job) []Job {
	if js == nil {
		return nil
	}
	out := append(make([]Job, 0, len(js)), js...)
	for i := range out {
		if out[i].ExitCode != nil {
			v := *out[i].ExitCode
			out[i].ExitCode = &v
		}
	}
	return out
}

// Promotion returns the named promotion of d, or nil.
func (d *Deployment) Promotion(name string) *Promotion {
	for i := range d.Promotions {
		if d.Promotions[i].Name == name {
			return &d.Promotions[i]
		}
	}
	return nil
}

// Active reports whether the deployment is running: created, started or
// completed (its promotions running).
func (s DeploymentState) Active() bool { return s == Created || s == Started || s == Completed }

// RollbackFlowID is the id of the flow that rolls back failed flow failedID.
func RollbackFlowID(failedID string) string { return derivedID("rollback", failedID) }

// RedeployFlowID is the id of the flow a redeploy request (eventID) creates.
func RedeployFlowID(eventID string) string { return derivedID("redeploy", eventID) }

func derivedID(kind, from string) string {
	h := sha256.Sum256([]byte(kind + "\x00" + from))
	return "f" + hex.EncodeToString(h[:12])
}

// View returns a copy fit to show users and subscribers: no internal spec.
func (f *Flow) View() *Flow {
	c := f.Clone()
	c.Spec = nil
	return c
}
