package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// Outbox operations. Each is idempotent, so the outbox can be carried out
// again after a crash.
const (
	opPublish   = "publish"   // a message to JOBS, HOOKS or EVENTS, by its id
	opTimer     = "timer"     // schedule a timer
	opSlot      = "slot"      // ask for an environment
	opRelease   = "release"   // give an environment back
	opSucceeded = "succeeded" // remember the version that succeeded in an environment
	opCancel    = "cancel"    // mark jobs cancelled for their agents
	opSupersede = "supersede" // tell older flows of the service to give way
)

// outboxEntry is one operation, written with the state in one Lua step.
type outboxEntry struct {
	Op           string            `json:"op"`
	Subject      string            `json:"subject,omitempty"`
	MsgID        string            `json:"msg_id,omitempty"`
	Data         []byte            `json:"data,omitempty"`
	FlowID       string            `json:"flow_id,omitempty"`
	Service      string            `json:"service,omitempty"`
	Environment  string            `json:"environment,omitempty"`
	DeploymentID string            `json:"deployment_id,omitempty"`
	Key          string            `json:"key,omitempty"`
	At           time.Time         `json:"at,omitzero"`
	JobIDs       []string          `json:"job_ids,omitempty"`
	Version      string            `json:"version,omitempty"`
	Reason       string            `json:"reason,omitempty"`
	Last         *flow.LastSuccess `json:"last,omitempty"`
}

// HookBody is the native JSON body of a hook.
type HookBody struct {
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	Data      HookData  `json:"data"`
}

// HookData is the data of a native hook body.
type HookData struct {
	Flow        *flow.Flow       `json:"flow"`
	Deployment  *flow.Deployment `json:"deployment,omitempty"`
	Promotion   *flow.Promotion  `json:"promotion,omitempty"`
	Artifact    string           `json:"artifact"`
	Service     string           `json:"service"`
	Environment string           `json:"environment,omitempty"`
}

// outbox is a rendered outbox: the entries as written to Redis and, when
// this replica rendered them, the same entries decoded.
type outbox struct {
	rev     int64 // the revision whose commit wrote them (0: the legacy list)
	raw     [][]byte
	entries []outboxEntry // nil: decode raw
}

// render turns effects into outbox entries. Ids derive from (flow, event,
// effect index) so a replay renders the same ids.
func (e *Engine) render(f *flow.Flow, effects []flow.Effect, eventID string, at time.Time) (outbox, error) {
	var out outbox
	add := func(o outboxEntry) error {
		b, err := json.Marshal(o)
		if err != nil {
			return fmt.Errorf("encode outbox entry: %w", err)
		}
		out.raw = append(out.raw, b)
		out.entries = append(out.entries, o)
		return nil
	}
	publish := func(subject, msgID string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode %s: %w", subject, err)
		}
		return add(outboxEntry{Op: opPublish, Subject: subject, MsgID: msgID, Data: b})
	}
	for i, ef := range effects {
		var err error
		switch ef.Kind {
		case flow.EffectJob:
			job, jerr := jobFor(f, ef, at)
			if jerr != nil {
				return outbox{}, jerr
			}
			err = publish(wire.JobSubject(ef.AgentID), "job."+job.ID, job)
		case flow.EffectHook:
			err = e.renderHook(f, ef, eventID, i, at, add)
		case flow.EffectTimer:
			err = add(outboxEntry{Op: opTimer, FlowID: f.ID, Key: ef.Key, At: ef.At})
		case flow.EffectRequestSlot:
			err = add(outboxEntry{Op: opSlot, FlowID: f.ID, Service: f.Service, Environment: ef.Environment, DeploymentID: ef.DeploymentID})
		case flow.EffectReleaseSlot:
			err = add(outboxEntry{Op: opRelease, FlowID: f.ID, Service: f.Service, Environment: ef.Environment, DeploymentID: ef.DeploymentID})
		case flow.EffectSucceeded:
			err = add(outboxEntry{Op: opSucceeded, Service: f.Service, Environment: ef.Environment, Last: &flow.LastSuccess{
				Artifact: f.Artifact, Version: f.Version, Commit: f.Commit, Ref: f.Ref, FlowID: f.ID, SucceededAt: at,
			}})
		case flow.EffectCancelJobs:
			var ids []string
			d := f.Deployment(ef.DeploymentID)
			for _, a := range ef.AgentIDs {
				ids = append(ids, wire.JobID(ef.DeploymentID, a))
				if d != nil {
					for _, p := range d.Promotions {
						if p.Type == flow.PromotionScript && len(p.Jobs) > 0 {
							ids = append(ids, wire.PromotionJobID(ef.DeploymentID, p.Name, a))
						}
					}
				}
			}
			reason := "cancelled"
			if d != nil && d.Reason != "" {
				reason = d.Reason
			}
			err = add(outboxEntry{Op: opCancel, FlowID: f.ID, JobIDs: ids, Reason: reason})
		case flow.EffectSupersede:
			err = add(outboxEntry{Op: opSupersede, FlowID: f.ID, Service: f.Service, Version: f.Version, At: f.CreatedAt})
		case flow.EffectCreateFlow:
			err = publish(wire.SubjectInternal, "create."+ef.Create.FlowID, internalEvent{Kind: "create", FlowID: ef.Create.FlowID, Create: ef.Create})
		default:
			err = fmt.Errorf("unknown effect %q", ef.Kind)
		}
		if err != nil {
			return outbox{}, err
		}
	}
	return out, nil
}

func (e *Engine) renderHook(f *flow.Flow, ef flow.Effect, eventID string, index int, at time.Time, add func(outboxEntry) error) error {
	if ef.Snapshot == nil {
		return nil // nobody listened when the event was applied
	}
	webhooks := e.conf.Get().Webhooks
	wanted := false
	for i := range webhooks {
		wanted = wanted || webhooks[i].Wants(ef.Hook, f.Service)
	}
	if !wanted {
		return nil // nobody listens: skip building the body
	}
	snap := ef.Snapshot.View()
	data := HookData{Flow: snap, Artifact: snap.Artifact, Service: snap.Service}
	if d := snap.Deployment(ef.DeploymentID); d != nil {
		data.Deployment, data.Environment = d, d.Environment
		if ef.Promotion != "" {
			data.Promotion = d.Promotion(ef.Promotion)
		}
	}
	body, err := json.Marshal(HookBody{Type: ef.Hook, Timestamp: at, Data: data})
	if err != nil {
		return fmt.Errorf("encode hook body: %w", err)
	}
	for i := range webhooks {
		wh := &webhooks[i]
		if !wh.Wants(ef.Hook, f.Service) {
			continue
		}
		id := hookID(f.ID, eventID, index, wh.Name)
		req, err := json.Marshal(wire.HookRequest{ID: id, Webhook: wh.Name, Type: ef.Hook, Timestamp: at, FlowID: f.ID, Body: body})
		if err != nil {
			return fmt.Errorf("encode hook request: %w", err)
		}
		if err := add(outboxEntry{Op: opPublish, Subject: wire.HookSubject(wh.Name), MsgID: "hook." + id, Data: req}); err != nil {
			return err
		}
	}
	return nil
}

func hookID(flowID, eventID string, index int, webhook string) string {
	h := sha256.Sum256(fmt.Appendf(nil, "%s\x00%s\x00%d\x00%s", flowID, eventID, index, webhook))
	return "msg_" + hex.EncodeToString(h[:16])
}

func jobFor(f *flow.Flow, ef flow.Effect, at time.Time) (wire.Job, error) {
	var env *flow.EnvSpec
	for i := range f.Deployments {
		if f.Deployments[i].ID == ef.DeploymentID && f.Spec != nil {
			env = &f.Spec.Environments[i]
		}
	}
	if env == nil {
		return wire.Job{}, fmt.Errorf("job for unknown deployment %s", ef.DeploymentID)
	}
	org, repo, _ := strings.Cut(f.Repository, "/")
	job := wire.Job{
		ID: wire.JobID(ef.DeploymentID, ef.AgentID), Kind: wire.JobDeploy,
		FlowID: f.ID, DeploymentID: ef.DeploymentID, AgentID: ef.AgentID,
		Service: f.Service, Environment: env.Name, Org: org, Repo: repo,
		GitURL: f.Spec.GitURL, Commit: f.Commit, Ref: f.Ref,
		Command: f.Spec.Command, Shell: f.Spec.Shell, Env: env.Env, Secrets: f.Spec.Secrets,
		Timeout: env.Timeout, CreatedAt: at,
	}
	if ef.Promotion != "" {
		var spec *flow.PromotionSpec
		for i := range env.Promotions {
			if env.Promotions[i].Name == ef.Promotion {
				spec = &env.Promotions[i]
			}
		}
		if spec == nil {
			return wire.Job{}, fmt.Errorf("job for unknown promotion %s of %s", ef.Promotion, ef.DeploymentID)
		}
		job.ID = wire.PromotionJobID(ef.DeploymentID, ef.Promotion, ef.AgentID)
		job.Kind, job.Promotion, job.Command = wire.JobPromotion, ef.Promotion, spec.Command
		job.Timeout = spec.Timeout
		if job.Timeout == 0 {
			job.Timeout = flow.DefaultPromotionTimeout
		}
	}
	return job, nil
}

// runOutbox carries out the flow's outbox entries, in order, then removes
// them (and indexes f, when given, in the same round trip). Publishes go
// out asynchronously; a run of Redis operations goes in one round trip,
// after the publishes before it are acknowledged; everything is awaited
// before anything is removed. On an error the entries stay for the replay.
func (e *Engine) runOutbox(ctx context.Context, flowID string, writes []outbox, f *flow.Flow) error {
	var entries []outboxEntry
	done := make([]store.OutboxWrite, 0, len(writes))
	for _, ob := range writes {
		done = append(done, store.OutboxWrite{Rev: ob.rev, Entries: ob.raw})
		if ob.entries != nil {
			entries = append(entries, ob.entries...)
			continue
		}
		for _, raw := range ob.raw {
			var o outboxEntry
			if err := json.Unmarshal(raw, &o); err != nil {
				// Written by this package; unreadable means a bug. Keep
				// going with the rest rather than blocking the flow forever.
				e.log.Error("undecodable outbox entry dropped", "flow_id", flowID, "err", err)
				continue
			}
			entries = append(entries, o)
		}
	}
	var pending []jetstream.PubAckFuture
	publish := func(subject, msgID string, data []byte) error {
		p, err := e.js.PublishMsgAsync(&nats.Msg{Subject: subject, Data: data, Header: nats.Header{wire.HeaderMsgID: []string{msgID}}})
		if err != nil {
			return fmt.Errorf("publish %s: %w", subject, err)
		}
		pending = append(pending, p)
		return nil
	}
	wait := func() error {
		if len(pending) == 0 {
			return nil
		}
		timeout := time.NewTimer(5 * time.Second)
		defer timeout.Stop()
		for _, p := range pending {
			select {
			case <-p.Ok():
			case err := <-p.Err():
				return fmt.Errorf("publish %s: %w", p.Msg().Subject, err)
			case <-timeout.C:
				return fmt.Errorf("publish %s: no ack in 5s", p.Msg().Subject)
			}
		}
		pending = pending[:0]
		return nil
	}
	for i := 0; i < len(entries); {
		o := entries[i]
		var err error
		switch {
		case o.Op == opPublish:
			if err = publish(o.Subject, o.MsgID, o.Data); err == nil {
				e.m.done(o.Op)
			}
			i++
		case inRedis(o.Op):
			j := i + 1
			for j < len(entries) && inRedis(entries[j].Op) {
				j++
			}
			// Operations may depend on what was published before them.
			if err = wait(); err == nil {
				err = e.doRedis(ctx, entries[i:j], publish)
			}
			i = j
		default:
			if err = wait(); err == nil {
				if err = e.do(ctx, o); err == nil {
					e.m.done(o.Op)
				}
			}
			i++
		}
		if err != nil {
			return fmt.Errorf("outbox of flow %s: %w", flowID, err)
		}
	}
	if err := wait(); err != nil {
		return fmt.Errorf("outbox of flow %s: %w", flowID, err)
	}
	return e.st.AckOutbox(ctx, flowID, done, f)
}

// inRedis reports whether an outbox operation is carried out in Redis, so
// that it can share a round trip with its neighbours.
func inRedis(op string) bool {
	switch op {
	case opTimer, opSlot, opRelease, opSucceeded, opSupersede:
		return true
	}
	return false
}

// doRedis carries out a run of Redis operations in one round trip, then
// what follows from their answers (environment grants, supersede notices)
// through publish.
func (e *Engine) doRedis(ctx context.Context, ops []outboxEntry, publish func(subject, msgID string, data []byte) error) error {
	b := e.st.NewBatch()
	then := make([]func() error, len(ops))
	for k, o := range ops {
		switch o.Op {
		case opTimer:
			then[k] = b.AddTimer(ctx, o.FlowID, o.Key, o.At)
		case opSlot:
			granted := b.RequestSlot(ctx, o.Service, o.Environment, o.DeploymentID)
			then[k] = func() error {
				ok, err := granted()
				if err != nil || !ok {
					return err
				}
				return e.grant(o.DeploymentID, publish)
			}
		case opRelease:
			next := b.ReleaseSlot(ctx, o.Service, o.Environment, o.DeploymentID)
			then[k] = func() error {
				dep, err := next()
				if err != nil || dep == "" {
					return err
				}
				return e.grant(dep, publish)
			}
		case opSucceeded:
			then[k] = b.SetLastSucceeded(ctx, o.Service, o.Environment, *o.Last)
		case opSupersede:
			around := b.JoinActive(ctx, o.Service, o.FlowID, o.At)
			then[k] = func() error {
				older, newer, err := around()
				if err != nil {
					return err
				}
				return e.supersede(ctx, o, older, newer, publish)
			}
		}
	}
	if err := b.Exec(ctx); err != nil {
		return err
	}
	for k, fn := range then {
		if err := fn(); err != nil {
			return fmt.Errorf("%s: %w", ops[k].Op, err)
		}
		e.m.done(ops[k].Op)
	}
	return nil
}

// supersede sends the notices of a new flow's supersede operation. Both
// sides look: the new flow tells older ones to give way, and gives way
// itself if a newer one already exists. Each flow joins the service's
// in-progress set before it looks (Batch.JoinActive), so of two flows
// created at once at least one sees the other; the message ids make a
// notice sent by both sides count once.
func (e *Engine) supersede(ctx context.Context, o outboxEntry, older []string, newer string, publish func(subject, msgID string, data []byte) error) error {
	// The new flow records the one it supersedes (the newest of them, the
	// version it follows), before the older ones hear of it: once they
	// have ended, a replay would no longer see them. Once per flow: a
	// replay sends the same id, which JetStream or the flow drops.
	newest := ""
	for _, old := range older {
		if old != o.FlowID {
			newest = old // older is oldest first
		}
	}
	if newest != "" {
		ie := internalEvent{Kind: "supersedes", FlowID: o.FlowID, By: newest}
		if err := publishEvent(publish, "supersedes."+o.FlowID, ie); err != nil {
			return err
		}
	}
	for _, old := range older {
		if old == o.FlowID {
			continue
		}
		ie := internalEvent{Kind: "supersede", FlowID: old, By: o.FlowID, Version: o.Version}
		if err := publishEvent(publish, "supersede."+old+"."+o.FlowID, ie); err != nil {
			return err
		}
	}
	if newer == "" || newer == o.FlowID {
		return nil
	}
	nf, err := e.st.GetFlow(ctx, newer)
	if err != nil {
		return err
	}
	ie := internalEvent{Kind: "supersede", FlowID: o.FlowID, By: newer, Version: nf.Version}
	return publishEvent(publish, "supersede."+o.FlowID+"."+newer, ie)
}

// publishEvent sends an internal event through publish.
func publishEvent(publish func(subject, msgID string, data []byte) error, msgID string, ie internalEvent) error {
	b, err := json.Marshal(ie)
	if err != nil {
		return fmt.Errorf("encode internal event: %w", err)
	}
	return publish(wire.SubjectInternal, msgID, b)
}

func (e *Engine) publish(ctx context.Context, subject, msgID string, data []byte) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := e.js.Publish(pctx, subject, data, jetstream.WithMsgID(msgID))
	return err
}

func (e *Engine) publishInternal(ctx context.Context, msgID string, ie internalEvent) error {
	b, err := json.Marshal(ie)
	if err != nil {
		return err
	}
	return e.publish(ctx, wire.SubjectInternal, msgID, b)
}

// do carries out one outbox operation that is not a publish and not in
// Redis.
func (e *Engine) do(ctx context.Context, o outboxEntry) error {
	switch o.Op {
	case opCancel:
		for _, id := range o.JobIDs {
			if _, err := e.cancels.Put(ctx, id, []byte(o.Reason)); err != nil {
				return fmt.Errorf("cancel job %s: %w", id, err)
			}
		}
		return nil
	}
	return fmt.Errorf("unknown outbox operation %q", o.Op)
}

// grant tells a deployment's flow that its environment is free.
func (e *Engine) grant(deploymentID string, publish func(subject, msgID string, data []byte) error) error {
	flowID, ok := flow.FlowIDOf(deploymentID)
	if !ok {
		return fmt.Errorf("grant to bad deployment id %q", deploymentID)
	}
	return publishEvent(publish, "slot."+deploymentID, internalEvent{Kind: "slot", FlowID: flowID, DeploymentID: deploymentID})
}
