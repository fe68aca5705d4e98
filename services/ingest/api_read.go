package ingest

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// LostAfter is how long after its last heartbeat an agent counts as lost:
// the engine's default (ingest shows, the engine decides).
const LostAfter = store.DefaultAgentLostAfter

// FlowList is the body of GET /api/v1/flows.
type FlowList struct {
	Items      []*flow.Flow `json:"items"`
	NextCursor *string      `json:"next_cursor"`
}

var serviceNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

func (in *Ingest) listFlows(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, ok := queryLimit(w, r)
	if !ok {
		return
	}
	fq := store.FlowQuery{Service: q.Get("service"), State: flow.FlowState(q.Get("state")), Cursor: q.Get("cursor"), Limit: limit}
	if fq.Service != "" && !serviceNameRE.MatchString(fq.Service) {
		api.Error(w, api.CodeBadRequest, "service must be a service name")
		return
	}
	switch fq.State {
	case "", flow.FlowInProgress, flow.FlowSucceeded, flow.FlowFailed, flow.FlowCancelled:
	default:
		api.Error(w, api.CodeBadRequest, "state must be in_progress, succeeded, failed or cancelled")
		return
	}
	page, err := in.st.FlowsPage(r.Context(), fq)
	if errors.Is(err, store.ErrBadCursor) {
		api.Error(w, api.CodeBadRequest, "cursor is not one this API returned")
		return
	}
	if err != nil {
		in.unavailable(w, "list flows", err)
		return
	}
	out := FlowList{Items: make([]*flow.Flow, len(page.Flows)), NextCursor: cursorPtr(page.NextCursor)}
	for i, f := range page.Flows {
		out.Items[i] = f.View()
	}
	api.JSON(w, http.StatusOK, out)
}

func (in *Ingest) getFlow(w http.ResponseWriter, r *http.Request) {
	f, ref, err := in.loadFlow(r.Context(), chi.URLParam(r, "id"), false)
	if err != nil {
		in.unavailable(w, "read flow", err)
		return
	}
	if ref != nil {
		ref.write(w)
		return
	}
	api.JSON(w, http.StatusOK, f.View())
}

// VersionFlow is a flow of one artifact version, in a version listing.
type VersionFlow struct {
	ID      string         `json:"id"`
	Service string         `json:"service"`
	State   flow.FlowState `json:"state"`
}

// VersionItem is one row of GET /api/v1/artifacts/{artifact}/versions.
type VersionItem struct {
	Version   string        `json:"version"`
	Commit    *string       `json:"commit"` // null while no flow of it exists
	CreatedAt time.Time     `json:"created_at"`
	Flows     []VersionFlow `json:"flows"`
}

// VersionList is the body of GET /api/v1/artifacts/{artifact}/versions.
type VersionList struct {
	Items      []VersionItem `json:"items"`
	NextCursor *string       `json:"next_cursor"`
}

func (in *Ingest) artifactVersions(w http.ResponseWriter, r *http.Request) {
	artifact, err := url.PathUnescape(chi.URLParam(r, "artifact"))
	if err != nil || len(artifact) > 256 || !artifactRE.MatchString(artifact) {
		api.Error(w, api.CodeBadRequest, "the artifact must be group:name, e.g. acme:web")
		return
	}
	limit, ok := queryLimit(w, r)
	if !ok {
		return
	}
	cursor := r.URL.Query().Get("cursor")
	// The engine keys flows and versions by the lower-case artifact.
	key := strings.ToLower(artifact)
	services := in.conf.Get().ServicesForArtifact(artifact)
	versions, next, err := in.st.ArtifactVersions(r.Context(), key, cursor, limit)
	if errors.Is(err, store.ErrBadCursor) {
		api.Error(w, api.CodeBadRequest, "cursor is not one this API returned")
		return
	}
	if err != nil {
		in.unavailable(w, "list versions", err)
		return
	}
	if len(services) == 0 && len(versions) == 0 && cursor == "" {
		api.Error(w, api.CodeNotFound, "no service deploys artifact "+artifact+" and no version of it is known")
		return
	}
	ids := make([]string, 0, len(versions)*len(services))
	for _, v := range versions {
		for _, s := range services {
			ids = append(ids, flow.FlowID(key, v.Version, s.Name))
		}
	}
	flows, err := in.st.Flows(r.Context(), ids)
	if err != nil {
		in.unavailable(w, "read flows", err)
		return
	}
	out := VersionList{Items: make([]VersionItem, len(versions)), NextCursor: cursorPtr(next)}
	for i, v := range versions {
		item := VersionItem{Version: v.Version, CreatedAt: v.FirstSeen, Flows: []VersionFlow{}}
		for j := range services {
			f := flows[i*len(services)+j]
			if f == nil {
				continue
			}
			if item.Commit == nil {
				c := f.Commit
				item.Commit = &c
			}
			item.Flows = append(item.Flows, VersionFlow{ID: f.ID, Service: f.Service, State: f.State})
		}
		out.Items[i] = item
	}
	api.JSON(w, http.StatusOK, out)
}

// AgentList is the body of GET /api/v1/agents.
type AgentList struct {
	Items      []store.AgentRecord `json:"items"`
	NextCursor *string             `json:"next_cursor"`
}

func (in *Ingest) listAgents(w http.ResponseWriter, r *http.Request) {
	agents, err := in.st.Agents(r.Context(), time.Now(), LostAfter)
	if err != nil {
		in.unavailable(w, "list agents", err)
		return
	}
	slices.SortFunc(agents, func(a, b store.AgentRecord) int { return strings.Compare(a.ID, b.ID) })
	for i := range agents {
		if agents[i].Labels == nil {
			agents[i].Labels = map[string]string{}
		}
		agents[i].LastSeenAt = agents[i].LastSeenAt.UTC()
	}
	api.JSON(w, http.StatusOK, AgentList{Items: agents})
}

// ServiceView is a service as GET /api/v1/services shows it: no secrets,
// no environment values, no git URL (it may hold credentials).
type ServiceView struct {
	Name            string            `json:"name"`
	Repository      string            `json:"repository"`
	Artifacts       []string          `json:"artifacts"`
	Branches        []string          `json:"branches"`
	Tags            bool              `json:"tags"`
	PullRequests    bool              `json:"pull_requests"`
	FailureStrategy string            `json:"failure_strategy"`
	Supersede       bool              `json:"supersede"`
	Pipeline        []EnvironmentView `json:"pipeline"`
}

// EnvironmentView is one pipeline environment of a ServiceView.
type EnvironmentView struct {
	Environment string            `json:"environment"`
	Targets     map[string]string `json:"targets"`
	Strategy    string            `json:"strategy"`
	Timeout     string            `json:"timeout"`
	Parallel    bool              `json:"parallel"`
	Promotions  []PromotionView   `json:"promotions"`
}

// PromotionView is one promotion of an EnvironmentView.
type PromotionView struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

// ServiceList is the body of GET /api/v1/services.
type ServiceList struct {
	Items      []ServiceView `json:"items"`
	NextCursor *string       `json:"next_cursor"`
}

func serviceView(s *config.Service) ServiceView {
	v := ServiceView{
		Name: s.Name, Repository: s.Repository, Artifacts: nonNil(s.Artifacts), Branches: nonNil(s.Branches),
		Tags: s.Tags, PullRequests: s.PullRequests, FailureStrategy: s.FailureStrategy,
		Supersede: s.Supersede == nil || *s.Supersede, Pipeline: make([]EnvironmentView, len(s.Pipeline)),
	}
	for i, e := range s.Pipeline {
		ev := EnvironmentView{
			Environment: e.Environment, Targets: e.Targets, Strategy: e.Strategy,
			Timeout: e.Timeout.D().String(), Parallel: e.Parallel, Promotions: make([]PromotionView, len(e.Promotions)),
		}
		for j, p := range e.Promotions {
			ev.Promotions[j] = PromotionView{Name: p.Name, Type: p.Type}
		}
		v.Pipeline[i] = ev
	}
	return v
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func (in *Ingest) listServices(w http.ResponseWriter, _ *http.Request) {
	cfg := in.conf.Get()
	out := ServiceList{Items: make([]ServiceView, len(cfg.Services))}
	for i := range cfg.Services {
		out.Items[i] = serviceView(&cfg.Services[i])
	}
	api.JSON(w, http.StatusOK, out)
}

// PlanAgent is an agent a plan would deploy to.
type PlanAgent struct {
	ID       string            `json:"id"`
	Hostname string            `json:"hostname"`
	Labels   map[string]string `json:"labels"`
	State    string            `json:"state"`
}

// PlanEnvironment is one environment of a plan, in pipeline order.
type PlanEnvironment struct {
	Environment string            `json:"environment"`
	Targets     map[string]string `json:"targets"`
	Agents      []PlanAgent       `json:"agents"`
	Promotions  []PromotionView   `json:"promotions"`
}

// Plan is the body of GET /api/v1/services/{name}/plan.
type Plan struct {
	Service      string            `json:"service"`
	Commit       string            `json:"commit"`
	Environments []PlanEnvironment `json:"environments"`
	// Deployable is false when some environment has no online agent to
	// deploy to: the flow would fail there.
	Deployable bool `json:"deployable"`
}

// plan answers which agents each environment would deploy this commit to
// now. It only reads: nothing is published.
func (in *Ingest) plan(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	svc := in.conf.Get().Service(name)
	if svc == nil {
		api.Error(w, api.CodeNotFound, "no service "+name)
		return
	}
	commit := strings.ToLower(r.URL.Query().Get("commit"))
	if !wire.ValidCommit(commit) {
		api.Error(w, api.CodeBadRequest, "commit must be a full SHA: 40 or 64 hexadecimal digits")
		return
	}
	agents, err := in.st.Agents(r.Context(), time.Now(), LostAfter)
	if err != nil {
		in.unavailable(w, "list agents", err)
		return
	}
	slices.SortFunc(agents, func(a, b store.AgentRecord) int { return strings.Compare(a.ID, b.ID) })
	out := Plan{Service: svc.Name, Commit: commit, Environments: make([]PlanEnvironment, len(svc.Pipeline)), Deployable: true}
	for i, e := range svc.Pipeline {
		pe := PlanEnvironment{Environment: e.Environment, Targets: e.Targets, Agents: []PlanAgent{}, Promotions: make([]PromotionView, len(e.Promotions))}
		for j, p := range e.Promotions {
			pe.Promotions[j] = PromotionView{Name: p.Name, Type: p.Type}
		}
		for _, a := range agents {
			if !a.Eligible() || !flow.Matches(a.Labels, e.Targets) {
				continue
			}
			pe.Agents = append(pe.Agents, PlanAgent{ID: a.ID, Hostname: a.Hostname, Labels: a.Labels, State: a.State})
		}
		out.Deployable = out.Deployable && len(pe.Agents) > 0
		out.Environments[i] = pe
	}
	api.JSON(w, http.StatusOK, out)
}

// ReloadResult is the body of POST /api/v1/config/reload.
type ReloadResult struct {
	Services int `json:"services"`
	Webhooks int `json:"webhooks"`
}

func (in *Ingest) reloadConfig(w http.ResponseWriter, r *http.Request) {
	noteAudit(r, "config", "")
	cfg, err := in.conf.Reload()
	switch {
	case errors.Is(err, config.ErrNoFile):
		api.Error(w, api.CodeConflict, "the configuration was not loaded from a file (OTARIINAE_CONFIG): nothing to reload")
		return
	case err != nil:
		// The validation message names the field (and the line of an
		// unknown key); the configuration in force stays.
		api.Error(w, api.CodeInvalidConfig, fmt.Sprintf("the configuration file is invalid, the previous one stays in force: %v", err))
		return
	}
	in.log.InfoContext(r.Context(), "configuration reloaded", "by", By(r.Context()), "services", len(cfg.Services), "webhooks", len(cfg.Webhooks))
	api.JSON(w, http.StatusOK, ReloadResult{Services: len(cfg.Services), Webhooks: len(cfg.Webhooks)})
}
