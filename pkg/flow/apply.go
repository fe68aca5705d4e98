package flow

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Sentinel errors. Apply wraps them; check with errors.Is.
var (
	// ErrInvalidTransition: the event is not allowed in the current state.
	ErrInvalidTransition = errors.New("invalid transition")
	// ErrNotFound: the event names a flow, deployment or job that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalidEvent: the event itself is malformed.
	ErrInvalidEvent = errors.New("invalid event")
)

// TransitionError says which move was refused.
type TransitionError struct {
	Event string
	From  string
}

func (e *TransitionError) Error() string {
	return fmt.Sprintf("%s: %s not allowed in state %s", ErrInvalidTransition, e.Event, e.From)
}

// Unwrap makes errors.Is(err, ErrInvalidTransition) true.
func (e *TransitionError) Unwrap() error { return ErrInvalidTransition }

// Event is one input to the state machine.
type Event interface{ eventName() string }

// CreateFlow asks for the flow of (artifact, version, service).
type CreateFlow struct {
	FlowID     string
	Artifact   string
	Version    string
	Commit     string
	Ref        string
	Service    string
	Repository string
	Spec       Spec
}

// JobStarted reports that an agent started its job of a deployment.
type JobStarted struct {
	DeploymentID string
	AgentID      string
}

// JobFinished reports that an agent's job of a deployment ended.
type JobFinished struct {
	DeploymentID string
	AgentID      string
	ExitCode     int
	Reason       string
}

func (CreateFlow) eventName() string  { return "create_flow" }
func (JobStarted) eventName() string  { return "job_started" }
func (JobFinished) eventName() string { return "job_finished" }

// Input is what arrives with every event: its time and the agents online
// then (used when a transition creates a deployment and picks its targets).
type Input struct {
	At     time.Time
	Agents []Agent
}

// EffectKind says what the engine must do for an effect.
type EffectKind string

// Effect kinds.
const (
	EffectHook EffectKind = "hook"
	EffectJob  EffectKind = "job"
)

// Effect is an intent the engine carries out after it has stored the state.
type Effect struct {
	Kind EffectKind
	// Hook: the hook type (deployment.created, ...) and the flow as it was
	// at that moment.
	Hook     string
	Snapshot *Flow
	// DeploymentID is set for deployment hooks and jobs; AgentID for jobs.
	DeploymentID string
	AgentID      string
}

// deploymentMoves is the transition table of a deployment: for each state,
// the states it may move to. docs/flow.md draws the same table and a test
// keeps the two equal.
var deploymentMoves = map[DeploymentState][]DeploymentState{
	NotStarted: {Created, Cancelled},
	Created:    {Started, Failed, Cancelled},
	Started:    {Completed, Failed, Cancelled},
	Completed:  {Succeeded, Failed, Cancelled},
}

// flowMoves is the transition table of a flow.
var flowMoves = map[FlowState][]FlowState{
	FlowInProgress: {FlowSucceeded, FlowFailed, FlowCancelled},
}

// DeploymentMoves returns a copy of the deployment transition table.
func DeploymentMoves() map[DeploymentState][]DeploymentState {
	out := map[DeploymentState][]DeploymentState{}
	for k, v := range deploymentMoves {
		out[k] = append([]DeploymentState(nil), v...)
	}
	return out
}

// FlowMoves returns a copy of the flow transition table.
func FlowMoves() map[FlowState][]FlowState {
	out := map[FlowState][]FlowState{}
	for k, v := range flowMoves {
		out[k] = append([]FlowState(nil), v...)
	}
	return out
}

func allowed[S comparable](table map[S][]S, from, to S) bool {
	for _, s := range table[from] {
		if s == to {
			return true
		}
	}
	return false
}

// machine applies one event to a working copy and collects effects.
type machine struct {
	f       *Flow
	in      Input
	effects []Effect
}

// Apply returns the flow after ev and the effects to carry out. f is nil
// when the flow does not exist yet. f itself is never modified. On error the
// flow is unchanged and there are no effects.
func Apply(f *Flow, ev Event, in Input) (*Flow, []Effect, error) {
	if in.At.IsZero() {
		return f, nil, fmt.Errorf("%w: input has no time", ErrInvalidEvent)
	}
	m := &machine{f: f.Clone(), in: Input{At: in.At.UTC(), Agents: in.Agents}}
	var err error
	switch e := ev.(type) {
	case CreateFlow:
		if f != nil {
			// A second create for the same (artifact, version, service) is
			// the same flow: nothing happens.
			return f, nil, nil
		}
		err = m.create(e)
	case JobStarted:
		err = m.jobStarted(e)
	case JobFinished:
		err = m.jobFinished(e)
	default:
		err = fmt.Errorf("%w: unknown event %T", ErrInvalidEvent, ev)
	}
	if err != nil {
		return f, nil, err
	}
	return m.f, m.effects, nil
}

func (m *machine) hook(typ string, d *Deployment) {
	e := Effect{Kind: EffectHook, Hook: typ, Snapshot: m.f.Clone()}
	if d != nil {
		e.DeploymentID = d.ID
	}
	m.effects = append(m.effects, e)
}

func (m *machine) now() *time.Time {
	t := m.in.At
	return &t
}

func (m *machine) setDeployment(d *Deployment, to DeploymentState) {
	if !allowed(deploymentMoves, d.State, to) {
		// Every caller checks the state first; reaching this is a bug in
		// this package, not bad input.
		panic(fmt.Sprintf("flow: deployment %s: %s -> %s is not in the table", d.ID, d.State, to))
	}
	d.State = to
	m.f.UpdatedAt = m.in.At
}

func (m *machine) setFlow(to FlowState) {
	if !allowed(flowMoves, m.f.State, to) {
		panic(fmt.Sprintf("flow: %s: %s -> %s is not in the table", m.f.ID, m.f.State, to))
	}
	m.f.State = to
	m.f.UpdatedAt = m.in.At
}

func (m *machine) create(e CreateFlow) error {
	switch {
	case e.FlowID == "" || e.Artifact == "" || e.Version == "" || e.Service == "":
		return fmt.Errorf("%w: create needs flow id, artifact, version and service", ErrInvalidEvent)
	case len(e.Spec.Environments) == 0:
		return fmt.Errorf("%w: service %s has no environments", ErrInvalidEvent, e.Service)
	}
	spec := e.Spec
	f := &Flow{
		ID: e.FlowID, Artifact: e.Artifact, Version: e.Version, Commit: e.Commit, Ref: e.Ref,
		Service: e.Service, Repository: e.Repository, State: FlowInProgress,
		CreatedAt: m.in.At, UpdatedAt: m.in.At, Spec: &spec,
	}
	for _, env := range spec.Environments {
		f.Deployments = append(f.Deployments, Deployment{
			ID: DeploymentID(e.FlowID, env.Name), FlowID: e.FlowID, Environment: env.Name,
			State: NotStarted, Jobs: []Job{}, Promotions: []Promotion{},
		})
	}
	m.f = f
	m.hook("flow.created", nil)
	m.next()
	return nil
}

// next creates the first not-started deployment, or ends the flow when
// none is left.
func (m *machine) next() {
	for i := range m.f.Deployments {
		d := &m.f.Deployments[i]
		if d.State != NotStarted {
			continue
		}
		m.createDeployment(d, m.f.Spec.Environments[i])
		return
	}
	m.setFlow(FlowSucceeded)
	m.hook("flow.succeeded", nil)
}

func (m *machine) createDeployment(d *Deployment, env EnvSpec) {
	m.setDeployment(d, Created)
	d.CreatedAt = m.now()
	for _, a := range matching(m.in.Agents, env.Targets) {
		d.Jobs = append(d.Jobs, Job{AgentID: a, State: JobPending})
	}
	m.hook("deployment.created", d)
	if len(d.Jobs) == 0 {
		m.fail(d, "no online agent matches targets "+formatLabels(env.Targets))
		return
	}
	for _, j := range d.Jobs {
		m.effects = append(m.effects, Effect{Kind: EffectJob, DeploymentID: d.ID, AgentID: j.AgentID})
	}
}

// fail applies the service's failure strategy (stop): the deployment and
// the flow fail; later deployments stay not_started.
func (m *machine) fail(d *Deployment, reason string) {
	m.setDeployment(d, Failed)
	d.FinishedAt = m.now()
	d.Reason = reason
	m.hook("deployment.failed", d)
	m.setFlow(FlowFailed)
	m.hook("flow.failed", nil)
}

func (m *machine) job(deploymentID, agentID, event string) (*Deployment, *Job, error) {
	if m.f == nil {
		return nil, nil, fmt.Errorf("%w: flow of deployment %s", ErrNotFound, deploymentID)
	}
	d := m.f.Deployment(deploymentID)
	if d == nil {
		return nil, nil, fmt.Errorf("%w: deployment %s", ErrNotFound, deploymentID)
	}
	for i := range d.Jobs {
		if d.Jobs[i].AgentID == agentID {
			return d, &d.Jobs[i], nil
		}
	}
	if d.State == NotStarted {
		return nil, nil, &TransitionError{Event: event, From: string(d.State)}
	}
	return nil, nil, fmt.Errorf("%w: job of agent %s in deployment %s", ErrNotFound, agentID, deploymentID)
}

func (m *machine) jobStarted(e JobStarted) error {
	d, j, err := m.job(e.DeploymentID, e.AgentID, "job_started")
	if err != nil {
		return err
	}
	if d.State.Terminal() || j.State != JobPending {
		// Late or repeated report: the outcome is already known.
		return nil
	}
	j.State = JobRunning
	m.f.UpdatedAt = m.in.At
	m.start(d)
	return nil
}

// start moves a created deployment to started; the first deployment
// starting also starts the flow.
func (m *machine) start(d *Deployment) {
	if d.State != Created {
		return
	}
	m.setDeployment(d, Started)
	d.StartedAt = m.now()
	if d.ID == m.f.Deployments[0].ID {
		m.hook("flow.started", nil)
	}
	m.hook("deployment.started", d)
}

func (m *machine) jobFinished(e JobFinished) error {
	d, j, err := m.job(e.DeploymentID, e.AgentID, "job_finished")
	if err != nil {
		return err
	}
	if d.State.Terminal() || j.State == JobSucceeded || j.State == JobFailed {
		return nil
	}
	code := e.ExitCode
	j.ExitCode = &code
	j.Reason = e.Reason
	if code == 0 {
		j.State = JobSucceeded
	} else {
		j.State = JobFailed
	}
	m.f.UpdatedAt = m.in.At
	// A finished report may overtake the started one.
	m.start(d)
	if j.State == JobFailed {
		reason := fmt.Sprintf("job on agent %s exited %d", j.AgentID, code)
		if e.Reason != "" {
			reason += ": " + e.Reason
		}
		m.fail(d, reason)
		return nil
	}
	for _, other := range d.Jobs {
		if other.State != JobSucceeded {
			return nil
		}
	}
	m.setDeployment(d, Completed)
	d.CompletedAt = m.now()
	m.hook("deployment.completed", d)
	// No promotions gate the deployment: it succeeded.
	m.setDeployment(d, Succeeded)
	d.FinishedAt = m.now()
	m.hook("deployment.succeeded", d)
	m.next()
	return nil
}

// matching returns the ids of agents whose labels contain every target
// pair, sorted so the choice does not depend on map order.
func matching(agents []Agent, targets map[string]string) []string {
	var ids []string
	seen := map[string]bool{}
	for _, a := range agents {
		if seen[a.ID] || !Matches(a.Labels, targets) {
			continue
		}
		seen[a.ID] = true
		ids = append(ids, a.ID)
	}
	sort.Strings(ids)
	return ids
}

// Matches reports whether labels contain every pair of targets.
func Matches(labels, targets map[string]string) bool {
	for k, v := range targets {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func formatLabels(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}
