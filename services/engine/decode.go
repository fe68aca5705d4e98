package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/go-github/v92/github"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/ghevent"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// internalEvent is what the engine sends itself through EVENTS
// (wire.SubjectInternal): timers that fired, environments handed over,
// supersede notices (to the older flows, and to the newer one, naming the
// flow it superseded) and rollback flows. Going through the stream makes
// each one a durable, de-duplicated event like any other.
type internalEvent struct {
	Kind         string           `json:"kind"` // timer | slot | supersede | supersedes | create
	FlowID       string           `json:"flow_id"`
	Key          string           `json:"key,omitempty"`
	DeploymentID string           `json:"deployment_id,omitempty"`
	By           string           `json:"by,omitempty"`
	Version      string           `json:"version,omitempty"`
	Create       *flow.CreateFlow `json:"create,omitempty"`
}

// decode turns a message into the flows it applies to. An error wrapping
// errRetry is worth retrying; any other means the message is unusable.
func (e *Engine) decode(ctx context.Context, msg jetstream.Msg) ([]target, error) {
	id := msg.Headers().Get(wire.HeaderMsgID)
	switch subj := msg.Subject(); {
	case strings.HasPrefix(subj, wire.SubjectGitHubPrefix):
		return e.decodeGitHub(msg)
	case subj == wire.SubjectJobReport:
		return decodeJobReport(msg.Data())
	case subj == wire.SubjectArtifact:
		var a wire.ArtifactCreated
		if err := json.Unmarshal(msg.Data(), &a); err != nil {
			return nil, fmt.Errorf("decode artifact: %w", err)
		}
		if a.EventID == "" {
			a.EventID = id
		}
		return e.createFlows("api."+a.EventID, a.Artifact, a.Version, a.Commit, a.Ref, "", a.Metadata, func(*config.Service) bool { return true }), nil
	case subj == wire.SubjectTrigger:
		return e.decodeTrigger(ctx, msg.Data())
	case subj == wire.SubjectInternal:
		return decodeInternal(msg.Data(), id)
	}
	return nil, fmt.Errorf("no handler for subject %s", msg.Subject())
}

func decodeJobReport(data []byte) ([]target, error) {
	r, err := wire.DecodeJobReport(data)
	if err != nil {
		return nil, fmt.Errorf("decode job report: %w", err)
	}
	flowID, ok := flow.FlowIDOf(r.DeploymentID)
	if !ok || flowID != r.FlowID {
		return nil, fmt.Errorf("job report %s: deployment %q does not belong to flow %q", r.JobID, r.DeploymentID, r.FlowID)
	}
	t := target{flowID: flowID, eventID: r.MsgID()}
	switch r.State {
	case wire.JobStarted:
		t.event = flow.JobStarted{DeploymentID: r.DeploymentID, AgentID: r.AgentID, Promotion: r.Promotion}
	case wire.JobFinished:
		if r.ExitCode == nil {
			return nil, fmt.Errorf("job report %s: finished without exit code", r.JobID)
		}
		t.event = flow.JobFinished{DeploymentID: r.DeploymentID, AgentID: r.AgentID, Promotion: r.Promotion, ExitCode: *r.ExitCode, Reason: r.Reason}
	default:
		return nil, fmt.Errorf("job report %s: unknown state %q", r.JobID, r.State)
	}
	return []target{t}, nil
}

func decodeInternal(data []byte, msgID string) ([]target, error) {
	var ie internalEvent
	if err := json.Unmarshal(data, &ie); err != nil {
		return nil, fmt.Errorf("decode internal event: %w", err)
	}
	t := target{flowID: ie.FlowID, eventID: msgID}
	switch ie.Kind {
	case "timer":
		t.event = flow.TimerFired{Key: ie.Key}
	case "slot":
		t.event = flow.SlotGranted{DeploymentID: ie.DeploymentID}
	case "supersede":
		t.event = flow.Supersede{By: ie.By, Version: ie.Version}
	case "supersedes":
		t.event = flow.Supersedes{Older: ie.By}
	case "create":
		if ie.Create == nil {
			return nil, errors.New("internal create without a flow")
		}
		t.event = *ie.Create
	default:
		return nil, fmt.Errorf("internal event kind %q", ie.Kind)
	}
	return []target{t}, nil
}

func (e *Engine) decodeTrigger(ctx context.Context, data []byte) ([]target, error) {
	var tr wire.Trigger
	if err := json.Unmarshal(data, &tr); err != nil {
		return nil, fmt.Errorf("decode trigger: %w", err)
	}
	t := target{flowID: tr.FlowID, eventID: "trigger." + tr.EventID}
	if tr.DeploymentID != "" {
		fid, ok := flow.FlowIDOf(tr.DeploymentID)
		if !ok {
			return nil, fmt.Errorf("trigger %s: bad deployment id %q", tr.EventID, tr.DeploymentID)
		}
		t.flowID = fid
	}
	switch tr.Kind {
	case wire.TriggerPromotionResult, wire.TriggerApprove, wire.TriggerReject:
		if tr.Kind == wire.TriggerPromotionResult && tr.Result != "passed" && tr.Result != "failed" {
			return nil, fmt.Errorf("trigger %s: result %q", tr.EventID, tr.Result)
		}
		via := map[wire.TriggerKind]string{wire.TriggerPromotionResult: flow.ViaResult, wire.TriggerApprove: flow.ViaApprove, wire.TriggerReject: flow.ViaReject}[tr.Kind]
		passed := tr.Kind == wire.TriggerApprove || (tr.Kind == wire.TriggerPromotionResult && tr.Result == "passed")
		t.event = flow.PromotionResult{DeploymentID: tr.DeploymentID, Promotion: tr.Promotion, Via: via, Passed: passed, Reason: tr.Reason, By: tr.By}
	case wire.TriggerCancel:
		t.event = flow.Cancel{Reason: tr.Reason, By: tr.By}
	case wire.TriggerRedeploy:
		old, err := e.st.GetFlow(ctx, tr.FlowID)
		if errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("redeploy: %w", err)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errRetry, err)
		}
		spec := *old.Spec
		if svc := e.conf.Get().Service(old.Service); svc != nil {
			spec = SpecOf(svc) // what the service says now, if it still exists
		}
		spec.Supersede = false
		create := flow.CreateFlow{
			FlowID: flow.RedeployFlowID(tr.EventID), Artifact: old.Artifact, Version: old.Version, Commit: old.Commit,
			Ref: old.Ref, Service: old.Service, Repository: old.Repository, Metadata: old.Metadata, RedeployOf: old.ID, Spec: spec,
		}
		t.flowID, t.event = create.FlowID, create
	default:
		return nil, fmt.Errorf("trigger %s: unknown kind %q", tr.EventID, tr.Kind)
	}
	return []target{t}, nil
}

// decodeGitHub turns a GitHub delivery into flow creates. A push needs
// three fields, read in one pass by ghevent.Scan; a pull request is parsed
// whole by go-github (it needs the number and the base ref).
func (e *Engine) decodeGitHub(msg jetstream.Msg) ([]target, error) {
	typ := msg.Headers().Get(wire.HeaderGitHubEvent)
	delivery := msg.Headers().Get(wire.HeaderDelivery)
	eventID := "gh." + delivery
	// The repository is the one ingest verified the signature for (the
	// URL's), never the payload's own claim.
	repo := msg.Headers().Get(wire.HeaderRepository)
	if repo == "" {
		return nil, fmt.Errorf("github delivery %s has no %s header", delivery, wire.HeaderRepository)
	}
	if typ == "push" {
		ev, err := ghevent.Scan(msg.Data())
		if err != nil {
			return nil, fmt.Errorf("parse github push delivery %s: %w", delivery, err)
		}
		commit := strings.ToLower(ev.After)
		if ev.Deleted || !wire.ValidCommit(commit) {
			return nil, nil // nothing to deploy; ingest normally filters these
		}
		if branch, ok := strings.CutPrefix(ev.Ref, "refs/heads/"); ok {
			return e.createFlows(eventID, config.ArtifactOf(repo), commit, commit, ev.Ref, repo, nil,
				func(s *config.Service) bool { return s.TracksBranch(branch) }), nil
		}
		if tag, ok := strings.CutPrefix(ev.Ref, "refs/tags/"); ok {
			return e.createFlows(eventID, config.ArtifactOf(repo), tag, commit, ev.Ref, repo, map[string]string{"tag": tag},
				func(s *config.Service) bool { return s.Tags }), nil
		}
		return nil, nil
	}
	payload, err := github.ParseWebHook(typ, msg.Data())
	if err != nil {
		return nil, fmt.Errorf("parse github %s delivery %s: %w", typ, delivery, err)
	}
	switch ev := payload.(type) {
	case *github.PullRequestEvent:
		switch ev.GetAction() {
		case "opened", "reopened", "synchronize":
		default:
			return nil, nil
		}
		pr := ev.GetPullRequest()
		commit := strings.ToLower(pr.GetHead().GetSHA())
		if !wire.ValidCommit(commit) {
			return nil, fmt.Errorf("pull request %d: head sha %q", ev.GetNumber(), commit)
		}
		meta := map[string]string{
			"pull_request": strconv.Itoa(ev.GetNumber()), "head_ref": pr.GetHead().GetRef(), "base_ref": pr.GetBase().GetRef(),
		}
		ref := fmt.Sprintf("refs/pull/%d/head", ev.GetNumber())
		return e.createFlows(eventID, config.ArtifactOf(repo), commit, commit, ref, repo, meta,
			func(s *config.Service) bool { return s.PullRequests }), nil
	}
	return nil, fmt.Errorf("github event %q is not handled", typ)
}

// createFlows returns a create for every service that deploys artifact and
// accepts this version (keep). repo is "" for artifacts posted by CI.
func (e *Engine) createFlows(eventID, artifact, version, commit, ref, repo string, meta map[string]string, keep func(*config.Service) bool) []target {
	var out []target
	for _, svc := range e.conf.Get().ServicesForArtifact(artifact) {
		if !keep(svc) {
			continue
		}
		r := repo
		if r == "" {
			r = svc.Repository
		}
		id := flow.FlowID(strings.ToLower(artifact), version, svc.Name)
		out = append(out, target{flowID: id, eventID: eventID, event: flow.CreateFlow{
			FlowID: id, Artifact: artifact, Version: version, Commit: strings.ToLower(commit), Ref: ref,
			Service: svc.Name, Repository: r, Metadata: meta, Spec: SpecOf(svc),
		}})
	}
	return out
}

// SpecOf freezes a service's configuration for a new flow.
func SpecOf(svc *config.Service) flow.Spec {
	sp := flow.Spec{
		GitURL: svc.GitURL, Command: svc.Deploy, Shell: svc.Shell, Secrets: svc.Secrets,
		FailureStrategy: svc.FailureStrategy, Supersede: svc.Supersede == nil || *svc.Supersede,
	}
	for _, env := range svc.Pipeline {
		es := flow.EnvSpec{Name: env.Environment, Targets: env.Targets, Env: env.Env, Timeout: env.Timeout.D(), Parallel: env.Parallel}
		for _, p := range env.Promotions {
			es.Promotions = append(es.Promotions, flow.PromotionSpec{
				Name: p.Name, Type: p.Type, Command: p.Command, Timeout: p.Timeout.D(), Duration: p.Duration.D(),
			})
		}
		sp.Environments = append(sp.Environments, es)
	}
	return sp
}
