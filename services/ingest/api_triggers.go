package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"
	"unicode"

	"github.com/go-chi/chi/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// HeaderIdempotencyKey makes a trigger safe to retry: the same key (per
// token) gets the same event id and answer, and publishes once.
const HeaderIdempotencyKey = "Idempotency-Key"

// Accepted is the body of every 202 of a trigger.
type Accepted struct {
	EventID string `json:"event_id"`
}

// refusal is an answer given instead of publishing.
type refusal struct {
	code  api.Code
	msg   string
	extra map[string]any
}

func (f *refusal) write(w http.ResponseWriter) {
	if f.extra != nil {
		api.ErrorWith(w, f.code, f.msg, f.extra)
		return
	}
	api.Error(w, f.code, f.msg)
}

// triggerCall is one validated trigger request.
type triggerCall struct {
	// fingerprint identifies the request for Idempotency-Key reuse.
	fingerprint string
	// check validates against current state; nil means go ahead. An error
	// means Redis failed.
	check func(ctx context.Context) (*refusal, error)
	// message builds what to publish under eventID.
	message func(eventID string, at time.Time) (subject string, body any)
}

var idemKeyRE = regexp.MustCompile(`^[\x21-\x7e]{1,255}$`)

// accept runs a trigger: idempotency lookup, state check, publish with
// Nats-Msg-Id = event id, 202 after the PubAck. Nothing is written before
// every check passed, so a 4xx changes nothing.
func (in *Ingest) accept(w http.ResponseWriter, r *http.Request, c triggerCall) {
	ctx := r.Context()
	by := By(ctx)
	key := r.Header.Get(HeaderIdempotencyKey)
	if key != "" && !idemKeyRE.MatchString(key) {
		api.Error(w, api.CodeBadRequest, "Idempotency-Key must be 1 to 255 printable ASCII characters")
		return
	}
	eventID := ""
	if key != "" {
		rec, found, err := in.st.GetIdempotency(ctx, by, key)
		if err != nil {
			in.unavailable(w, "read idempotency key", err)
			return
		}
		if found {
			if rec.Fingerprint != c.fingerprint {
				api.Error(w, api.CodeIdempotencyMismatch, "this Idempotency-Key was used for a different request")
				return
			}
			if rec.Published {
				in.accepted(w, r, rec.EventID, true)
				return
			}
			eventID = rec.EventID // an earlier attempt did not get its PubAck
		}
	}
	// A retry of a request whose publish may have landed (its PubAck was
	// lost) is published again as it was, without checking the state it
	// may itself have changed: JetStream drops it if it landed, and the
	// engine still refuses it if it no longer applies.
	if eventID == "" {
		if ref, err := c.check(ctx); err != nil {
			in.unavailable(w, "read state", err)
			return
		} else if ref != nil {
			ref.write(w)
			return
		}
	}
	var rec store.Idempotency
	if key != "" && eventID == "" {
		mine := store.Idempotency{Fingerprint: c.fingerprint, EventID: newID("evt_")}
		cur, _, err := in.st.ReserveIdempotency(ctx, by, key, mine)
		if err != nil {
			in.unavailable(w, "reserve idempotency key", err)
			return
		}
		if cur.Fingerprint != c.fingerprint {
			api.Error(w, api.CodeIdempotencyMismatch, "this Idempotency-Key was used for a different request")
			return
		}
		if cur.Published {
			in.accepted(w, r, cur.EventID, true)
			return
		}
		rec, eventID = cur, cur.EventID
	} else if key != "" {
		rec = store.Idempotency{Fingerprint: c.fingerprint, EventID: eventID}
	}
	if eventID == "" {
		eventID = newID("evt_")
	}
	subject, body := c.message(eventID, time.Now().UTC())
	if err := in.publishJSON(ctx, subject, eventID, body); err != nil {
		in.log.WarnContext(ctx, "publish trigger", "subject", subject, "event_id", eventID, "err", err)
		api.Error(w, api.CodeUnavailable, "the event bus is unavailable; retry later")
		return
	}
	if key != "" {
		// Losing this write only means a retry publishes again under the
		// same Nats-Msg-Id, which JetStream drops inside its window.
		if err := in.st.MarkIdempotencyPublished(context.WithoutCancel(ctx), by, key, rec); err != nil {
			in.log.WarnContext(ctx, "mark idempotency key", "event_id", eventID, "err", err)
		}
	}
	in.accepted(w, r, eventID, false)
}

func (in *Ingest) accepted(w http.ResponseWriter, r *http.Request, eventID string, replay bool) {
	noteAudit(r, "", eventID)
	if replay {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	api.JSON(w, http.StatusAccepted, Accepted{EventID: eventID})
}

// publishJSON publishes body to EVENTS and waits for the PubAck.
func (in *Ingest) publishJSON(ctx context.Context, subject, msgID string, body any) error {
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("encode %s: %w", subject, err)
	}
	msg := &nats.Msg{Subject: subject, Data: b, Header: nats.Header{}}
	msg.Header.Set(wire.HeaderContentType, wire.ContentTypeJSON)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := in.js.PublishMsg(ctx, msg, jetstream.WithMsgID(msgID)); err != nil {
		return fmt.Errorf("publish %s: %w", subject, err)
	}
	return nil
}

// fingerprint hashes the route and the decoded request.
func fingerprint(r *http.Request, v any) string {
	b, _ := json.Marshal(v)
	h := sha256.New()
	h.Write([]byte(r.Method + " " + r.URL.Path + "\n"))
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// ArtifactRequest is the body of POST /api/v1/artifacts.
type ArtifactRequest struct {
	Artifact string            `json:"artifact"`
	Version  string            `json:"version"`
	Commit   string            `json:"commit"`
	Ref      string            `json:"ref,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

var (
	artifactRE = regexp.MustCompile(`^[A-Za-z0-9._-]+:[A-Za-z0-9._/-]+$`)
)

// Limits of an artifact request.
const (
	maxVersion  = 128
	maxRef      = 256
	maxReason   = 1024
	maxMetadata = 64
	maxMetaKey  = 128
	maxMetaVal  = 1024
)

func printable(s string) bool {
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func (a *ArtifactRequest) validate() string {
	a.Commit = strings.ToLower(a.Commit)
	switch {
	case len(a.Artifact) > 256 || !artifactRE.MatchString(a.Artifact):
		return "artifact must be group:name, e.g. acme:web"
	case a.Version == "" || len(a.Version) > maxVersion || !printable(a.Version) || strings.TrimSpace(a.Version) != a.Version:
		return fmt.Sprintf("version must be 1 to %d printable characters", maxVersion)
	case !wire.ValidCommit(a.Commit):
		return "commit must be a full SHA: 40 or 64 hexadecimal digits"
	case len(a.Ref) > maxRef || !printable(a.Ref):
		return fmt.Sprintf("ref must be at most %d printable characters", maxRef)
	case len(a.Metadata) > maxMetadata:
		return fmt.Sprintf("metadata holds at most %d entries", maxMetadata)
	}
	for k, v := range a.Metadata {
		if k == "" || len(k) > maxMetaKey || len(v) > maxMetaVal || !printable(k) {
			return fmt.Sprintf("metadata keys must be 1 to %d printable characters, values at most %d", maxMetaKey, maxMetaVal)
		}
	}
	return ""
}

func (in *Ingest) createArtifact(w http.ResponseWriter, r *http.Request) {
	var req ArtifactRequest
	if !decodeJSON(w, r, &req, false) {
		return
	}
	if msg := req.validate(); msg != "" {
		api.Error(w, api.CodeBadRequest, msg)
		return
	}
	noteAudit(r, req.Artifact+"@"+req.Version, "")
	in.accept(w, r, triggerCall{
		fingerprint: fingerprint(r, req),
		check: func(context.Context) (*refusal, error) {
			if len(in.conf.Get().ServicesForArtifact(req.Artifact)) == 0 {
				return &refusal{code: api.CodeNotFound, msg: "no service deploys artifact " + req.Artifact}, nil
			}
			return nil, nil
		},
		message: func(id string, at time.Time) (string, any) {
			return wire.SubjectArtifact, wire.ArtifactCreated{
				EventID: id, Artifact: req.Artifact, Version: req.Version, Commit: req.Commit,
				Ref: req.Ref, Metadata: req.Metadata, By: By(r.Context()), At: at,
			}
		},
	})
}

// PromotionResultRequest is the body of POST .../promotions/{name}.
type PromotionResultRequest struct {
	Result string `json:"result"`
	Reason string `json:"reason,omitempty"`
}

// DecisionRequest is the optional body of approve, reject, cancel and
// redeploy.
type DecisionRequest struct {
	Reason string `json:"reason,omitempty"`
}

func (in *Ingest) promotionResult(w http.ResponseWriter, r *http.Request) {
	var req PromotionResultRequest
	if !decodeJSON(w, r, &req, false) {
		return
	}
	if req.Result != string(flow.PromotionPassed) && req.Result != string(flow.PromotionFailed) {
		api.Error(w, api.CodeBadRequest, `result must be "passed" or "failed"`)
		return
	}
	in.promotionTrigger(w, r, wire.TriggerPromotionResult, flow.PromotionExternal, req.Result, req.Reason, req)
}

func (in *Ingest) approve(w http.ResponseWriter, r *http.Request) {
	var req DecisionRequest
	if !decodeJSON(w, r, &req, true) {
		return
	}
	in.promotionTrigger(w, r, wire.TriggerApprove, flow.PromotionManual, "", req.Reason, req)
}

func (in *Ingest) rejectPromotion(w http.ResponseWriter, r *http.Request) {
	var req DecisionRequest
	if !decodeJSON(w, r, &req, true) {
		return
	}
	in.promotionTrigger(w, r, wire.TriggerReject, flow.PromotionManual, "", req.Reason, req)
}

func validReason(w http.ResponseWriter, reason string) bool {
	if len(reason) > maxReason {
		api.Error(w, api.CodeBadRequest, fmt.Sprintf("reason must be at most %d bytes", maxReason))
		return false
	}
	return true
}

// promotionTrigger acts on a running promotion of type want.
func (in *Ingest) promotionTrigger(w http.ResponseWriter, r *http.Request, kind wire.TriggerKind, want, result, reason string, req any) {
	if !validReason(w, reason) {
		return
	}
	depID, name := chi.URLParam(r, "id"), chi.URLParam(r, "name")
	noteAudit(r, depID+"/promotions/"+name, "")
	var flowID string
	in.accept(w, r, triggerCall{
		fingerprint: fingerprint(r, req),
		check: func(ctx context.Context) (*refusal, error) {
			f, ref, err := in.loadFlow(ctx, depID, true)
			if ref != nil || err != nil {
				return ref, err
			}
			flowID = f.ID
			d := f.Deployment(depID)
			p := d.Promotion(name)
			switch {
			case p == nil:
				return &refusal{code: api.CodeNotFound, msg: "deployment " + depID + " has no promotion " + name}, nil
			case p.Type != want:
				return &refusal{code: api.CodeConflict,
					msg:   fmt.Sprintf("promotion %s is of type %s (state %s); %s applies to %s promotions", name, p.Type, p.State, kind, want),
					extra: map[string]any{"state": string(p.State), "type": p.Type}}, nil
			case p.State != flow.PromotionRunning:
				return &refusal{code: api.CodeConflict,
					msg:   fmt.Sprintf("promotion %s is %s, not running", name, p.State),
					extra: map[string]any{"state": string(p.State)}}, nil
			}
			return nil, nil
		},
		message: func(id string, at time.Time) (string, any) {
			return wire.SubjectTrigger, wire.Trigger{
				EventID: id, Kind: kind, FlowID: flowID, DeploymentID: depID, Promotion: name,
				Result: result, Reason: reason, By: By(r.Context()), At: at,
			}
		},
	})
}

// loadFlow reads the flow of id: a flow id, or with deployment a
// deployment id (then the deployment must exist too).
func (in *Ingest) loadFlow(ctx context.Context, id string, deployment bool) (*flow.Flow, *refusal, error) {
	flowID := id
	if deployment {
		var ok bool
		if flowID, ok = flow.FlowIDOf(id); !ok {
			return nil, &refusal{code: api.CodeDeploymentNotFound, msg: "no deployment " + id}, nil
		}
	}
	if !validFlowID(flowID) {
		return nil, &refusal{code: api.CodeNotFound, msg: "no flow " + id}, nil
	}
	f, err := in.st.GetFlow(ctx, flowID)
	if errors.Is(err, store.ErrNotFound) {
		if deployment {
			return nil, &refusal{code: api.CodeDeploymentNotFound, msg: "no deployment " + id}, nil
		}
		return nil, &refusal{code: api.CodeNotFound, msg: "no flow " + id}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	if deployment && f.Deployment(id) == nil {
		return nil, &refusal{code: api.CodeDeploymentNotFound, msg: "no deployment " + id}, nil
	}
	return f, nil, nil
}

func validFlowID(id string) bool {
	if len(id) != flow.FlowIDLen || id[0] != 'f' {
		return false
	}
	_, err := hex.DecodeString(id[1:])
	return err == nil && strings.ToLower(id) == id
}

func (in *Ingest) cancelFlow(w http.ResponseWriter, r *http.Request) {
	in.flowTrigger(w, r, wire.TriggerCancel, func(s flow.FlowState) string {
		if s != flow.FlowInProgress {
			return fmt.Sprintf("flow is %s: only a flow in progress can be cancelled", s)
		}
		return ""
	})
}

func (in *Ingest) redeployFlow(w http.ResponseWriter, r *http.Request) {
	in.flowTrigger(w, r, wire.TriggerRedeploy, func(s flow.FlowState) string {
		if !s.Terminal() {
			return fmt.Sprintf("flow is %s: only a finished flow (succeeded, failed or cancelled) can be redeployed", s)
		}
		return ""
	})
}

// flowTrigger acts on a whole flow; wrongState says why its state does
// not allow kind ("" when it does).
func (in *Ingest) flowTrigger(w http.ResponseWriter, r *http.Request, kind wire.TriggerKind, wrongState func(flow.FlowState) string) {
	var req DecisionRequest
	if !decodeJSON(w, r, &req, true) || !validReason(w, req.Reason) {
		return
	}
	id := chi.URLParam(r, "id")
	noteAudit(r, id, "")
	in.accept(w, r, triggerCall{
		fingerprint: fingerprint(r, req),
		check: func(ctx context.Context) (*refusal, error) {
			f, ref, err := in.loadFlow(ctx, id, false)
			if ref != nil || err != nil {
				return ref, err
			}
			if msg := wrongState(f.State); msg != "" {
				return &refusal{code: api.CodeConflict, msg: msg, extra: map[string]any{"state": string(f.State)}}, nil
			}
			return nil, nil
		},
		message: func(eid string, at time.Time) (string, any) {
			return wire.SubjectTrigger, wire.Trigger{
				EventID: eid, Kind: kind, FlowID: id, Reason: req.Reason, By: By(r.Context()), At: at,
			}
		},
	})
}
