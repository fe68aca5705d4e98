// Package wire holds every NATS subject, stream name and message body that
// crosses a process boundary. Nothing else in the tree spells a subject.
//
// Streams:
//
//	EVENTS  otariinae.events.>   GitHub deliveries, trigger calls, job reports (limits, kept for replay)
//	JOBS    otariinae.jobs.>     one subject per agent (work queue)
//	HOOKS   otariinae.hooks.>    one subject per webhook (work queue)
//	LOGS    otariinae.logs.>     one subject per (deployment, agent) (limits)
//
// Agent heartbeats are presence, not history: they go over core NATS on
// otariinae.agents.heartbeat.<agent> to a queue group of engines.
package wire

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Stream names.
const (
	StreamEvents = "EVENTS"
	StreamJobs   = "JOBS"
	StreamHooks  = "HOOKS"
	StreamLogs   = "LOGS"
)

// Subject roots and wildcards.
const (
	SubjectEventsAll = "otariinae.events.>"
	SubjectJobsAll   = "otariinae.jobs.>"
	SubjectHooksAll  = "otariinae.hooks.>"
	SubjectLogsAll   = "otariinae.logs.>"

	// SubjectGitHubPrefix + <event type>: a raw GitHub delivery.
	SubjectGitHubPrefix = "otariinae.events.github."
	// SubjectJobReport carries JobReport bodies from agents.
	SubjectJobReport = "otariinae.events.job"
	// SubjectArtifact carries ArtifactCreated bodies (CI through the API).
	SubjectArtifact = "otariinae.events.artifact"
	// SubjectTrigger carries Trigger bodies: people and systems acting on
	// flows through the API (approve, reject, promotion results, cancel,
	// redeploy).
	SubjectTrigger = "otariinae.events.trigger"
	// SubjectInternal carries Internal bodies the engine sends itself
	// (timers that fired, environment slots granted, supersede, rollback).
	SubjectInternal = "otariinae.events.internal"

	SubjectHeartbeatAll = "otariinae.agents.heartbeat.*"
	// SubjectAnnounce asks every agent to send a heartbeat now (an engine
	// that starts does, so it knows the fleet without waiting an interval).
	SubjectAnnounce = "otariinae.agents.announce"
	// QueueEngine is the queue group engines use for heartbeats.
	QueueEngine = "engine"
)

// Message headers.
const (
	HeaderMsgID        = "Nats-Msg-Id"
	HeaderGitHubEvent  = "Github-Event"
	HeaderDelivery     = "Github-Delivery"
	HeaderRepository   = "Otariinae-Repository"
	HeaderReceivedAt   = "Otariinae-Received-At"
	HeaderLogStream    = "Otariinae-Log-Stream" // stdout | stderr
	HeaderJobID        = "Otariinae-Job-Id"
	HeaderContentType  = "Content-Type"
	ContentTypeJSON    = "application/json"
	ContentTypeTextLog = "text/plain"
)

// tokenRE is what an id must look like to be used as one subject token.
var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// ValidToken reports whether s can be used as a single subject token
// (agent ids, webhook names, GitHub event types, deployment ids).
func ValidToken(s string) bool { return tokenRE.MatchString(s) }

// ValidCommit reports whether s is a full commit SHA: 40 (SHA-1) or 64
// (SHA-256) lowercase hex digits, and not all zeros (GitHub's "none").
// Such a value can never be read as an option or a ref name.
func ValidCommit(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	zeros := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
		zeros = zeros && c == '0'
	}
	return !zeros
}

// LogSubjectParts splits a LOGS subject into its deployment and agent ids.
func LogSubjectParts(subject string) (deploymentID, agentID string, ok bool) {
	rest, ok := strings.CutPrefix(subject, "otariinae.logs.")
	if !ok {
		return "", "", false
	}
	dep, agent, ok := strings.Cut(rest, ".")
	if !ok || dep == "" || agent == "" || strings.Contains(agent, ".") {
		return "", "", false
	}
	return dep, agent, true
}

// GitHubSubject is where ingest publishes a raw delivery of event type typ.
func GitHubSubject(typ string) string { return SubjectGitHubPrefix + typ }

// JobSubject is the subject an agent pulls its jobs from.
func JobSubject(agentID string) string { return "otariinae.jobs." + agentID }

// HookSubject is the subject of one webhook's hook requests.
func HookSubject(webhook string) string { return "otariinae.hooks." + webhook }

// LogSubject is where an agent streams one job's output.
func LogSubject(deploymentID, agentID string) string {
	return fmt.Sprintf("otariinae.logs.%s.%s", deploymentID, agentID)
}

// LogSubjectDeployment matches every agent's output for one deployment.
func LogSubjectDeployment(deploymentID string) string {
	return "otariinae.logs." + deploymentID + ".*"
}

// HeartbeatSubject is where an agent announces itself.
func HeartbeatSubject(agentID string) string { return "otariinae.agents.heartbeat." + agentID }

// JobKind says what a job runs.
type JobKind string

const (
	JobDeploy    JobKind = "deploy"
	JobPromotion JobKind = "promotion" // a script promotion: Command is the promotion's
)

// BucketCancels is the JetStream key-value bucket of cancelled jobs: the
// engine puts a job id there to stop it; an agent checks it before running
// a job and watches it while the job runs.
const BucketCancels = "otariinae-cancels"

// Job is what the engine asks one agent to do. It carries everything the
// agent needs: agents never read Redis or the config file.
type Job struct {
	ID           string            `json:"id"`
	Kind         JobKind           `json:"kind"`
	FlowID       string            `json:"flow_id"`
	DeploymentID string            `json:"deployment_id"`
	Promotion    string            `json:"promotion,omitempty"`
	AgentID      string            `json:"agent_id"`
	Service      string            `json:"service"`
	Environment  string            `json:"environment"`
	Org          string            `json:"org"`
	Repo         string            `json:"repo"`
	GitURL       string            `json:"git_url"`
	Commit       string            `json:"commit"`
	Ref          string            `json:"ref"`
	Command      string            `json:"command"`
	Shell        bool              `json:"shell,omitempty"`
	Env          map[string]string `json:"env,omitempty"`
	Secrets      []string          `json:"secrets,omitempty"`
	Timeout      time.Duration     `json:"timeout"`
	CreatedAt    time.Time         `json:"created_at"`
}

// JobID is the deterministic id of the job of one deployment on one agent.
func JobID(deploymentID, agentID string) string { return deploymentID + "." + agentID }

// PromotionJobID is the id of a script promotion's job on one agent.
func PromotionJobID(deploymentID, promotion, agentID string) string {
	return deploymentID + "." + promotion + "." + agentID
}

// JobState is what an agent reports about a job.
type JobState string

const (
	JobStarted  JobState = "started"
	JobFinished JobState = "finished"
)

// JobReport is an agent's report on a job, published to EVENTS.
type JobReport struct {
	JobID        string    `json:"job_id"`
	FlowID       string    `json:"flow_id"`
	DeploymentID string    `json:"deployment_id"`
	Promotion    string    `json:"promotion,omitempty"`
	AgentID      string    `json:"agent_id"`
	State        JobState  `json:"state"`
	ExitCode     *int      `json:"exit_code,omitempty"`
	Reason       string    `json:"reason,omitempty"`
	At           time.Time `json:"at"`
}

// MsgID is the JetStream de-duplication id of a report.
func (r JobReport) MsgID() string { return "job." + r.JobID + "." + string(r.State) }

// ArtifactCreated is an artifact version built by CI, posted through
// POST /api/v1/artifacts. EventID is the idempotency key.
type ArtifactCreated struct {
	EventID  string            `json:"event_id"`
	Artifact string            `json:"artifact"` // group:name
	Version  string            `json:"version"`
	Commit   string            `json:"commit"`
	Ref      string            `json:"ref,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	By       string            `json:"by,omitempty"`
	At       time.Time         `json:"at"`
}

// TriggerKind names what a trigger asks for.
type TriggerKind string

// Trigger kinds.
const (
	TriggerPromotionResult TriggerKind = "promotion_result" // external promotion: Result passed|failed
	TriggerApprove         TriggerKind = "approve"          // manual promotion
	TriggerReject          TriggerKind = "reject"           // manual promotion
	TriggerCancel          TriggerKind = "cancel"           // a flow
	TriggerRedeploy        TriggerKind = "redeploy"         // a flow's artifact version again, as a new flow
)

// Trigger is an action on a flow from the API. EventID is unique per
// request (the API's idempotency key or a fresh id).
type Trigger struct {
	EventID      string      `json:"event_id"`
	Kind         TriggerKind `json:"kind"`
	FlowID       string      `json:"flow_id"`
	DeploymentID string      `json:"deployment_id,omitempty"`
	Promotion    string      `json:"promotion,omitempty"`
	Result       string      `json:"result,omitempty"` // passed | failed
	Reason       string      `json:"reason,omitempty"`
	By           string      `json:"by,omitempty"` // the API token's name
	At           time.Time   `json:"at"`
}

// Heartbeat is an agent's periodic announcement of itself.
type Heartbeat struct {
	ID       string            `json:"id"`
	Hostname string            `json:"hostname"`
	Labels   map[string]string `json:"labels"`
	Version  string            `json:"version"`
	State    string            `json:"state"` // idle | busy | draining
	Jobs     int               `json:"jobs"`
	At       time.Time         `json:"at"`
}

// HookRequest is one webhook delivery to make, published to HOOKS by the
// engine and consumed by the dispatcher. ID is the Standard Webhooks
// webhook-id: stable across retries and redeliveries.
type HookRequest struct {
	ID        string    `json:"id"`
	Webhook   string    `json:"webhook"`
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	FlowID    string    `json:"flow_id"`
	Body      []byte    `json:"body"` // the exact JSON to POST
}
