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
	// ErrNotFound: the event names a flow, deployment, promotion or job that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrInvalidEvent: the event itself is malformed.
	ErrInvalidEvent = errors.New("invalid event")
)

// TransitionError says which move was refused, and the state it was
// refused in.
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

// CreateFlow asks for a flow: of (artifact, version, service), or a
// rollback or redeploy flow linked to an earlier one.
type CreateFlow struct {
	FlowID     string
	Artifact   string
	Version    string
	Commit     string
	Ref        string
	Service    string
	Repository string
	Metadata   map[string]string
	RollbackOf string
	RedeployOf string
	Spec       Spec
}

// JobStarted reports that an agent started its job of a deployment, or of
// a deployment's script promotion when Promotion is set.
type JobStarted struct {
	DeploymentID string
	AgentID      string
	Promotion    string
}

// JobFinished reports that an agent's job ended.
type JobFinished struct {
	DeploymentID string
	AgentID      string
	Promotion    string
	ExitCode     int
	Reason       string
}

// Promotion result sources.
const (
	ViaResult  = "result"  // external promotion
	ViaApprove = "approve" // manual promotion
	ViaReject  = "reject"  // manual promotion
)

// PromotionResult ends a running manual or external promotion.
type PromotionResult struct {
	DeploymentID string
	Promotion    string
	Via          string // ViaResult, ViaApprove or ViaReject
	Passed       bool
	Reason       string
	By           string
}

// TimerFired reports that a timer the flow set is due.
type TimerFired struct{ Key string }

// SlotGranted says a deployment may now run in its environment.
type SlotGranted struct{ DeploymentID string }

// Cancel stops a flow: running work stops, nothing more starts.
type Cancel struct {
	Reason string
	By     string
}

// Supersede says a newer version of the same service arrived: the flow's
// not-yet-started deployments are cancelled.
type Supersede struct {
	By      string // the newer flow's id
	Version string
}

// Supersedes says this flow told an older flow of its service to give
// way: the newest such flow is recorded as the one it supersedes.
type Supersedes struct {
	Older string // the older flow's id
}

func (CreateFlow) eventName() string      { return "create_flow" }
func (JobStarted) eventName() string      { return "job_started" }
func (JobFinished) eventName() string     { return "job_finished" }
func (PromotionResult) eventName() string { return "promotion_result" }
func (TimerFired) eventName() string      { return "timer_fired" }
func (SlotGranted) eventName() string     { return "slot_granted" }
func (Cancel) eventName() string          { return "cancel" }
func (Supersede) eventName() string       { return "supersede" }
func (Supersedes) eventName() string      { return "supersedes" }

// LastSuccess is the last version that succeeded in an environment: where a
// rollback goes.
type LastSuccess struct {
	Artifact string `json:"artifact"`
	Version  string `json:"version"`
	Commit   string `json:"commit"`
	Ref      string `json:"ref"`
	FlowID   string `json:"flow_id"`
	// SucceededAt is when its deployment succeeded: of two successes
	// recorded for one environment, the later one is kept.
	SucceededAt time.Time `json:"succeeded_at,omitzero"`
}

// Input is what arrives with every event: its time, the agents online then
// (used when a deployment is created) and, for services that roll back, the
// last version that succeeded in each environment.
type Input struct {
	At            time.Time
	Agents        []Agent
	LastSucceeded map[string]LastSuccess
	// Listened, when set, says whether anyone listens to a hook type. A
	// hook nobody listens to is still emitted, without the Snapshot that
	// would only be thrown away (a copy of the whole flow per hook). Nil:
	// every hook gets its Snapshot.
	Listened func(hook string) bool
}

// EffectKind says what the engine must do for an effect.
type EffectKind string

// Effect kinds.
const (
	// EffectHook: announce Hook with the flow as it was (Snapshot; nil when
	// Input.Listened said nobody listens).
	EffectHook EffectKind = "hook"
	// EffectJob: hand a job to AgentID (a deploy, or the script of Promotion).
	EffectJob EffectKind = "job"
	// EffectCancelJobs: tell AgentIDs to stop their jobs of DeploymentID.
	EffectCancelJobs EffectKind = "cancel_jobs"
	// EffectTimer: fire TimerFired{Key} at At.
	EffectTimer EffectKind = "timer"
	// EffectRequestSlot: ask to run DeploymentID in Environment; answered by SlotGranted.
	EffectRequestSlot EffectKind = "request_slot"
	// EffectReleaseSlot: DeploymentID no longer runs or waits in Environment.
	EffectReleaseSlot EffectKind = "release_slot"
	// EffectSucceeded: remember that the flow's version succeeded in Environment.
	EffectSucceeded EffectKind = "succeeded"
	// EffectSupersede: older flows of the service give way to this one.
	EffectSupersede EffectKind = "supersede"
	// EffectCreateFlow: create the flow Create (a rollback).
	EffectCreateFlow EffectKind = "create_flow"
)

// Effect is an intent the engine carries out after it has stored the state.
type Effect struct {
	Kind         EffectKind
	Hook         string
	Snapshot     *Flow
	DeploymentID string
	Environment  string
	Promotion    string
	AgentID      string
	AgentIDs     []string
	Key          string
	At           time.Time
	Create       *CreateFlow
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

// promotionMoves is the transition table of a promotion.
var promotionMoves = map[PromotionState][]PromotionState{
	PromotionPending: {PromotionRunning},
	PromotionRunning: {PromotionPassed, PromotionFailed},
}

// DeploymentMoves returns a copy of the deployment transition table.
func DeploymentMoves() map[DeploymentState][]DeploymentState { return copyTable(deploymentMoves) }

// FlowMoves returns a copy of the flow transition table.
func FlowMoves() map[FlowState][]FlowState { return copyTable(flowMoves) }

// PromotionMoves returns a copy of the promotion transition table.
func PromotionMoves() map[PromotionState][]PromotionState { return copyTable(promotionMoves) }

func copyTable[S comparable](t map[S][]S) map[S][]S {
	out := make(map[S][]S, len(t))
	for k, v := range t {
		out[k] = append([]S(nil), v...)
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
// flow is returned unchanged and there are no effects.
func Apply(f *Flow, ev Event, in Input) (*Flow, []Effect, error) {
	if in.At.IsZero() {
		return f, nil, fmt.Errorf("%w: input has no time", ErrInvalidEvent)
	}
	if _, ok := ev.(CreateFlow); !ok && f == nil {
		return f, nil, fmt.Errorf("%w: flow", ErrNotFound)
	}
	m := &machine{f: f.Clone(), in: Input{At: in.At.UTC(), Agents: in.Agents, LastSucceeded: in.LastSucceeded, Listened: in.Listened}}
	var err error
	switch e := ev.(type) {
	case CreateFlow:
		if f != nil {
			// A second create for the same flow id is the same flow:
			// nothing happens.
			return f, nil, nil
		}
		err = m.create(e)
	case JobStarted:
		err = m.jobStarted(e)
	case JobFinished:
		err = m.jobFinished(e)
	case PromotionResult:
		err = m.promotionResult(e)
	case TimerFired:
		err = m.timerFired(e)
	case SlotGranted:
		err = m.slotGranted(e)
	case Cancel:
		err = m.cancel(e)
	case Supersede:
		err = m.supersede(e)
	case Supersedes:
		if m.f.State.Terminal() || m.f.Supersedes != "" || e.Older == "" || e.Older == m.f.ID {
			// Recorded once, while the flow runs; a flow that ended
			// never changes.
			return f, nil, nil
		}
		m.f.Supersedes, m.f.UpdatedAt = e.Older, m.in.At
	default:
		err = fmt.Errorf("%w: unknown event %T", ErrInvalidEvent, ev)
	}
	if err != nil {
		return f, nil, err
	}
	return m.f, m.effects, nil
}

func (m *machine) emit(e Effect) {
	if m.effects == nil {
		m.effects = make([]Effect, 0, 4) // most events have a few
	}
	m.effects = append(m.effects, e)
}

func (m *machine) hook(typ string, d *Deployment, promotion string) {
	e := Effect{Kind: EffectHook, Hook: typ, Promotion: promotion}
	if m.in.Listened == nil || m.in.Listened(typ) {
		e.Snapshot = m.f.Clone()
	}
	if d != nil {
		e.DeploymentID, e.Environment = d.ID, d.Environment
	}
	m.emit(e)
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

func (m *machine) setPromotion(p *Promotion, to PromotionState) {
	if !allowed(promotionMoves, p.State, to) {
		panic(fmt.Sprintf("flow: promotion %s: %s -> %s is not in the table", p.Name, p.State, to))
	}
	p.State = to
	m.f.UpdatedAt = m.in.At
}

func (m *machine) envSpec(d *Deployment) EnvSpec {
	for i := range m.f.Deployments {
		if m.f.Deployments[i].ID == d.ID {
			return m.f.Spec.Environments[i]
		}
	}
	panic("flow: deployment without spec: " + d.ID)
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
		Service: e.Service, Repository: e.Repository, State: FlowInProgress, Metadata: e.Metadata,
		RollbackOf: e.RollbackOf, RedeployOf: e.RedeployOf,
		CreatedAt: m.in.At, UpdatedAt: m.in.At, Spec: &spec,
	}
	for _, env := range spec.Environments {
		d := Deployment{
			ID: DeploymentID(e.FlowID, env.Name), FlowID: e.FlowID, Environment: env.Name,
			State: NotStarted, Jobs: []Job{}, Promotions: []Promotion{},
		}
		for _, p := range env.Promotions {
			d.Promotions = append(d.Promotions, Promotion{Name: p.Name, Type: p.Type, State: PromotionPending})
		}
		f.Deployments = append(f.Deployments, d)
	}
	m.f = f
	m.hook("flow.created", nil, "")
	if spec.Supersede {
		m.emit(Effect{Kind: EffectSupersede})
	}
	m.next()
	return nil
}

// next asks for the environment of the first not-started deployment, or
// ends the flow when none is left.
func (m *machine) next() {
	for i := range m.f.Deployments {
		d := &m.f.Deployments[i]
		if d.State != NotStarted {
			continue
		}
		d.Waiting = true
		m.emit(Effect{Kind: EffectRequestSlot, DeploymentID: d.ID, Environment: d.Environment})
		return
	}
	m.end()
}

// end closes a flow with no deployment left to start: succeeded when all
// succeeded, cancelled when some were cancelled.
func (m *machine) end() {
	for _, d := range m.f.Deployments {
		if d.State == Cancelled {
			m.setFlow(FlowCancelled)
			m.hook("flow.cancelled", nil, "")
			return
		}
	}
	m.setFlow(FlowSucceeded)
	m.hook("flow.succeeded", nil, "")
}

func (m *machine) slotGranted(e SlotGranted) error {
	d := m.f.Deployment(e.DeploymentID)
	if d == nil {
		return fmt.Errorf("%w: deployment %s", ErrNotFound, e.DeploymentID)
	}
	if !d.Waiting || d.State != NotStarted || m.f.State.Terminal() {
		// A repeated grant, or one that crossed a cancel: whoever stopped
		// the deployment already gave its environment back.
		return nil
	}
	d.Waiting = false
	m.createDeployment(d)
	return nil
}

func (m *machine) createDeployment(d *Deployment) {
	env := m.envSpec(d)
	m.setDeployment(d, Created)
	d.CreatedAt = m.now()
	for _, a := range matching(m.in.Agents, env.Targets) {
		d.Jobs = append(d.Jobs, Job{AgentID: a, State: JobPending})
	}
	m.hook("deployment.created", d, "")
	if len(d.Jobs) == 0 {
		m.fail(d, "no online agent matches targets "+formatLabels(env.Targets))
		return
	}
	for _, j := range d.Jobs {
		m.emit(Effect{Kind: EffectJob, DeploymentID: d.ID, Environment: d.Environment, AgentID: j.AgentID})
	}
}

// finish ends a deployment (succeeded, failed or cancelled): its
// environment is released and its remaining work stopped.
func (m *machine) finish(d *Deployment, to DeploymentState, reason string) {
	var running []string
	for _, j := range d.Jobs {
		if j.State == JobPending || j.State == JobRunning {
			running = append(running, j.AgentID)
		}
	}
	for i := range d.Promotions {
		p := &d.Promotions[i]
		if p.State != PromotionRunning {
			continue
		}
		// The deployment ended under a running promotion: it stops
		// without a result of its own.
		m.setPromotion(p, PromotionFailed)
		p.FinishedAt, p.Reason = m.now(), "stopped: the deployment "+string(to)
		for _, j := range p.Jobs {
			if j.State == JobPending || j.State == JobRunning {
				running = append(running, j.AgentID)
			}
		}
	}
	if len(running) > 0 && to != Succeeded {
		sort.Strings(running)
		m.emit(Effect{Kind: EffectCancelJobs, DeploymentID: d.ID, Environment: d.Environment, AgentIDs: dedupe(running)})
	}
	m.setDeployment(d, to)
	d.FinishedAt = m.now()
	d.Reason = reason
	m.emit(Effect{Kind: EffectReleaseSlot, DeploymentID: d.ID, Environment: d.Environment})
}

// fail fails a deployment and applies the service's failure strategy:
// the flow fails; later deployments stay not_started; with rollback, the
// environment's last succeeded version is deployed again as a new flow.
func (m *machine) fail(d *Deployment, reason string) {
	m.finish(d, Failed, reason)
	m.hook("deployment.failed", d, "")
	m.f.Reason = "deployment to " + d.Environment + " failed: " + reason
	m.setFlow(FlowFailed)
	m.hook("flow.failed", nil, "")
	if m.f.Spec.FailureStrategy != "rollback" || m.f.RollbackOf != "" {
		return // a rollback that fails is not rolled back again
	}
	last, ok := m.in.LastSucceeded[d.Environment]
	if !ok || last.Version == m.f.Version {
		return
	}
	env := m.envSpec(d)
	spec := *m.f.Spec
	spec.Supersede = false
	spec.Environments = []EnvSpec{env}
	m.emit(Effect{Kind: EffectCreateFlow, Create: &CreateFlow{
		FlowID: RollbackFlowID(m.f.ID), Artifact: last.Artifact, Version: last.Version, Commit: last.Commit,
		Ref: last.Ref, Service: m.f.Service, Repository: m.f.Repository, RollbackOf: m.f.ID, Spec: spec,
	}})
}

func (m *machine) deployment(id, event string) (*Deployment, error) {
	d := m.f.Deployment(id)
	if d == nil {
		return nil, fmt.Errorf("%w: deployment %s", ErrNotFound, id)
	}
	if d.State == NotStarted {
		return nil, &TransitionError{Event: event, From: string(d.State)}
	}
	return d, nil
}

// job finds the job of agentID in d, or in d's script promotion.
func (m *machine) job(d *Deployment, promotion, agentID string) (*Promotion, *Job, error) {
	jobs := d.Jobs
	var p *Promotion
	if promotion != "" {
		p = d.Promotion(promotion)
		if p == nil {
			return nil, nil, fmt.Errorf("%w: promotion %s of deployment %s", ErrNotFound, promotion, d.ID)
		}
		jobs = p.Jobs
	}
	for i := range jobs {
		if jobs[i].AgentID == agentID {
			return p, &jobs[i], nil
		}
	}
	if p != nil && p.State == PromotionPending {
		return nil, nil, &TransitionError{Event: "job report", From: "promotion " + string(p.State)}
	}
	return nil, nil, fmt.Errorf("%w: job of agent %s in deployment %s", ErrNotFound, agentID, d.ID)
}

func (m *machine) jobStarted(e JobStarted) error {
	d, err := m.deployment(e.DeploymentID, "job_started")
	if err != nil {
		return err
	}
	_, j, err := m.job(d, e.Promotion, e.AgentID)
	if err != nil {
		return err
	}
	if d.State.Terminal() || j.State != JobPending {
		return nil // late or repeated report: the outcome is already known
	}
	j.State = JobRunning
	m.f.UpdatedAt = m.in.At
	if e.Promotion == "" {
		m.start(d)
	}
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
		m.hook("flow.started", nil, "")
	}
	m.hook("deployment.started", d, "")
}

func (m *machine) jobFinished(e JobFinished) error {
	d, err := m.deployment(e.DeploymentID, "job_finished")
	if err != nil {
		return err
	}
	p, j, err := m.job(d, e.Promotion, e.AgentID)
	if err != nil {
		return err
	}
	if d.State.Terminal() || j.State == JobSucceeded || j.State == JobFailed {
		return nil
	}
	code := e.ExitCode
	j.ExitCode, j.Reason = &code, e.Reason
	j.State = JobSucceeded
	if code != 0 {
		j.State = JobFailed
	}
	m.f.UpdatedAt = m.in.At
	why := fmt.Sprintf("job on agent %s exited %d", j.AgentID, code)
	if e.Reason != "" {
		why += ": " + e.Reason
	}
	if p != nil {
		if p.State != PromotionRunning {
			return nil
		}
		if j.State == JobFailed {
			m.promotionDone(d, p, false, "script "+why, "")
			return nil
		}
		if allSucceeded(p.Jobs) {
			m.promotionDone(d, p, true, "", "")
		}
		return nil
	}
	// A finished report may overtake the started one.
	m.start(d)
	if j.State == JobFailed {
		m.fail(d, why)
		return nil
	}
	if d.State != Started || !allSucceeded(d.Jobs) {
		return nil
	}
	m.setDeployment(d, Completed)
	d.CompletedAt = m.now()
	m.hook("deployment.completed", d, "")
	m.promote(d)
	return nil
}

func allSucceeded(js []Job) bool {
	for _, j := range js {
		if j.State != JobSucceeded {
			return false
		}
	}
	return true
}

// promote starts the next promotions of a completed deployment, or
// succeeds it when all passed.
func (m *machine) promote(d *Deployment) {
	env := m.envSpec(d)
	for i := range d.Promotions {
		p := &d.Promotions[i]
		switch p.State {
		case PromotionRunning:
			if !env.Parallel {
				return // one at a time: wait for it
			}
			continue
		case PromotionPending:
			m.startPromotion(d, p, env.Promotions[i])
			if !env.Parallel || d.State.Terminal() {
				return
			}
		}
	}
	for _, p := range d.Promotions {
		if p.State != PromotionPassed {
			return
		}
	}
	m.finish(d, Succeeded, "")
	m.hook("deployment.succeeded", d, "")
	m.emit(Effect{Kind: EffectSucceeded, DeploymentID: d.ID, Environment: d.Environment})
	m.next()
}

// TimerKey names a promotion's timer: kind is "timeout" or "wait".
func TimerKey(deploymentID, promotion, kind string) string {
	return deploymentID + "/" + promotion + "/" + kind
}

func (m *machine) startPromotion(d *Deployment, p *Promotion, spec PromotionSpec) {
	m.setPromotion(p, PromotionRunning)
	p.StartedAt = m.now()
	m.hook("promotion.started", d, p.Name)
	timeout := spec.Timeout
	switch p.Type {
	case PromotionScript:
		for _, j := range d.Jobs {
			p.Jobs = append(p.Jobs, Job{AgentID: j.AgentID, State: JobPending})
			m.emit(Effect{Kind: EffectJob, DeploymentID: d.ID, Environment: d.Environment, Promotion: p.Name, AgentID: j.AgentID})
		}
		if timeout == 0 {
			timeout = DefaultPromotionTimeout
		}
	case PromotionExternal:
		if timeout == 0 {
			timeout = DefaultPromotionTimeout
		}
	case PromotionWait:
		m.emit(Effect{Kind: EffectTimer, Key: TimerKey(d.ID, p.Name, "wait"), At: m.in.At.Add(spec.Duration)})
		timeout = 0 // the soak's duration is its limit
	}
	if timeout > 0 {
		m.emit(Effect{Kind: EffectTimer, Key: TimerKey(d.ID, p.Name, "timeout"), At: m.in.At.Add(timeout)})
	}
}

// promotionDone records a promotion's result and moves the deployment on.
func (m *machine) promotionDone(d *Deployment, p *Promotion, passed bool, reason, by string) {
	p.FinishedAt, p.Reason, p.By = m.now(), reason, by
	if passed {
		m.setPromotion(p, PromotionPassed)
		p.Result = "passed"
		m.hook("promotion.passed", d, p.Name)
		m.promote(d)
		return
	}
	m.setPromotion(p, PromotionFailed)
	p.Result = "failed"
	m.hook("promotion.failed", d, p.Name)
	why := "promotion " + p.Name + " failed"
	if reason != "" {
		why += ": " + reason
	}
	m.fail(d, why)
}

func (m *machine) promotionResult(e PromotionResult) error {
	d, err := m.deployment(e.DeploymentID, "promotion_result")
	if err != nil {
		return err
	}
	p := d.Promotion(e.Promotion)
	if p == nil {
		return fmt.Errorf("%w: promotion %s of deployment %s", ErrNotFound, e.Promotion, d.ID)
	}
	want := PromotionExternal
	if e.Via == ViaApprove || e.Via == ViaReject {
		want = PromotionManual
	}
	if p.Type != want {
		return &TransitionError{Event: e.Via, From: "promotion type " + p.Type}
	}
	if p.State != PromotionRunning {
		return &TransitionError{Event: e.Via, From: "promotion " + string(p.State)}
	}
	m.promotionDone(d, p, e.Passed, e.Reason, e.By)
	return nil
}

func (m *machine) timerFired(e TimerFired) error {
	parts := strings.Split(e.Key, "/")
	if len(parts) != 3 {
		return fmt.Errorf("%w: timer key %q", ErrInvalidEvent, e.Key)
	}
	d := m.f.Deployment(parts[0])
	if d == nil {
		return fmt.Errorf("%w: deployment %s", ErrNotFound, parts[0])
	}
	p := d.Promotion(parts[1])
	if p == nil {
		return fmt.Errorf("%w: promotion %s", ErrNotFound, parts[1])
	}
	if d.State.Terminal() || p.State != PromotionRunning {
		return nil // the timer outlived what it guarded
	}
	switch parts[2] {
	case "wait":
		m.promotionDone(d, p, true, "", "")
	case "timeout":
		m.promotionDone(d, p, false, "timed out", "")
	default:
		return fmt.Errorf("%w: timer kind %q", ErrInvalidEvent, parts[2])
	}
	return nil
}

func (m *machine) cancel(e Cancel) error {
	if m.f.State.Terminal() {
		return &TransitionError{Event: "cancel", From: string(m.f.State)}
	}
	reason := "cancelled"
	if e.By != "" {
		reason += " by " + e.By
	}
	if e.Reason != "" {
		reason += ": " + e.Reason
	}
	m.stop(reason, true)
	return nil
}

// stop cancels every deployment not yet ended (running ones only when
// running is true) and ends the flow when nothing runs any more.
func (m *machine) stop(reason string, running bool) {
	active := false
	for i := range m.f.Deployments {
		d := &m.f.Deployments[i]
		switch {
		case d.State == NotStarted:
			waiting := d.Waiting
			d.Waiting = false
			m.setDeployment(d, Cancelled)
			d.FinishedAt, d.Reason = m.now(), reason
			if waiting {
				m.emit(Effect{Kind: EffectReleaseSlot, DeploymentID: d.ID, Environment: d.Environment})
			}
		case d.State.Active() && running:
			m.finish(d, Cancelled, reason)
			m.hook("deployment.cancelled", d, "")
		case d.State.Active():
			active = true
		}
	}
	m.f.Reason = reason
	if !active {
		m.setFlow(FlowCancelled)
		m.hook("flow.cancelled", nil, "")
	}
}

func (m *machine) supersede(e Supersede) error {
	if m.f.State.Terminal() || e.By == m.f.ID {
		return nil
	}
	m.stop("superseded by "+e.Version+" (flow "+e.By+")", false)
	return nil
}

// matching returns the ids of agents whose labels contain every target
// pair, sorted so the choice does not depend on map order.
func matching(agents []Agent, targets map[string]string) []string {
	var ids []string
	for _, a := range agents {
		if Matches(a.Labels, targets) {
			ids = append(ids, a.ID)
		}
	}
	sort.Strings(ids)
	return dedupe(ids)
}

// dedupe removes repeats from a sorted slice.
func dedupe(ids []string) []string {
	out := ids[:0]
	for i, id := range ids {
		if i == 0 || id != ids[i-1] {
			out = append(out, id)
		}
	}
	return out
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
