package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/wire"
)

const commitA = "3ee38fa5b53b793881c52f0e1e52a2f342971716"

// TestAPI runs every /api/v1 test as a subtest of one group, then checks
// that together they exercised every operation of openapi.json.
func TestAPI(t *testing.T) {
	t.Parallel()
	t.Run("group", func(t *testing.T) {
		t.Run("auth", testAuth)
		t.Run("no tokens", testNoTokens)
		t.Run("artifacts", testArtifacts)
		t.Run("idempotency", testIdempotency)
		t.Run("promotions", testPromotions)
		t.Run("flow triggers", testFlowTriggers)
		t.Run("unavailable", testUnavailable)
		t.Run("list flows", testListFlows)
		t.Run("versions", testVersions)
		t.Run("agents and plan", testAgentsAndPlan)
		t.Run("services", testServices)
		t.Run("reload", testReload)
		t.Run("audit", testAudit)
		t.Run("webhook secret", testWebhookSecret)
		t.Run("seed and ops routes", testSeedRoutes)
	})
	if t.Failed() {
		return
	}
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPI)
	require.NoError(t, err)
	hits.Lock()
	defer hits.Unlock()
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			require.NotZero(t, hits.ops[op.OperationID], "no test called %s %s (%s) through serve", method, path, op.OperationID)
		}
	}
}

func testAuth(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{envToken: tokEnv})
	f := newFlow("v1", flow.FlowInProgress, 0)
	e.putFlow(f)
	cases := []struct {
		name, method, path, token, auth string
		want                            int
		code                            string
	}{
		{"read without token", "GET", "/api/v1/flows", "", "", 401, "unauthorized"},
		{"read wrong token", "GET", "/api/v1/flows", "nope", "", 401, "unauthorized"},
		{"read basic auth", "GET", "/api/v1/flows", "", "Basic dXNlcjpwYXNz", 401, "unauthorized"},
		{"read with read", "GET", "/api/v1/flows", tokRead, "", 200, ""},
		{"read with admin", "GET", "/api/v1/agents", tokAdmin, "", 200, ""},
		{"read with env token", "GET", "/api/v1/services", tokEnv, "", 200, ""},
		{"seed list without token", "GET", "/acme/web/deployments/", "", "", 401, "unauthorized"},
		{"seed commit wrong token", "GET", "/acme/web/deployments/" + f.Commit, "bad", "", 401, "unauthorized"},
		{"seed log without token", "GET", "/acme/web/deployments/" + f.Commit + "/log", "", "", 401, "unauthorized"},
		{"seed list with read", "GET", "/acme/web/deployments", tokRead, "", 200, ""},
		{"cancel without token", "POST", "/api/v1/flows/" + f.ID + "/cancel", "", "", 401, "unauthorized"},
		{"cancel with read", "POST", "/api/v1/flows/" + f.ID + "/cancel", tokRead, "", 403, "forbidden"},
		{"artifact with read", "POST", "/api/v1/artifacts", tokRead, "", 403, "forbidden"},
		{"reload with write", "POST", "/api/v1/config/reload", tokWrite, "", 403, "forbidden"},
		{"audit with write", "GET", "/api/v1/audit", tokWrite, "", 403, "forbidden"},
		{"audit with read", "GET", "/api/v1/audit", tokRead, "", 403, "forbidden"},
		{"audit with admin", "GET", "/api/v1/audit", tokAdmin, "", 200, ""},
		{"audit with env token", "GET", "/api/v1/audit", tokEnv, "", 200, ""},
		{"openapi needs nothing", "GET", "/api/v1/openapi.json", "", "", 200, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var hdrs []string
			if c.auth != "" {
				hdrs = []string{"Authorization", c.auth}
			}
			r := e.call(c.method, c.path, c.token, nil, hdrs...)
			require.Equal(t, c.want, r.status, string(r.body))
			if c.code != "" {
				require.Equal(t, c.code, r.errCode())
			}
			if c.want == 401 {
				require.Contains(t, r.header.Get("WWW-Authenticate"), "Bearer")
			}
		})
	}
	t.Cleanup(func() { require.Zero(t, e.events(wire.SubjectEventsAll)) })
}

func TestAuthenticateComparesEveryToken(t *testing.T) {
	t.Parallel()
	creds := []credential{
		{name: "a", hash: sha256Sum("ta"), scope: ScopeRead},
		{name: "b", hash: sha256Sum("tb"), scope: ScopeWrite},
		{name: "c", hash: sha256Sum("tc"), scope: ScopeAdmin},
	}
	for _, c := range []struct {
		tok, want string
		ok        bool
	}{{"ta", "a", true}, {"tb", "b", true}, {"tc", "c", true}, {"td", "", false}, {"", "", false}} {
		got, ok := authenticate(creds, c.tok)
		require.Equal(t, c.ok, ok, c.tok)
		require.Equal(t, c.want, got.name, c.tok)
	}
	// The highest scope listed wins; a bad hash never matches.
	cr, ok := tokenCredential(configToken("x", sha("t"), "read", "admin", "write"))
	require.True(t, ok)
	require.Equal(t, ScopeAdmin, cr.scope)
	_, ok = tokenCredential(configToken("x", "zz", "read"))
	require.False(t, ok)
}

func testNoTokens(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{noTokens: true})
	f := newFlow("v1", flow.FlowInProgress, 0)
	e.putFlow(f)
	cases := []struct {
		name, method, path string
		want               int
	}{
		{"reads are open", "GET", "/api/v1/flows", 200},
		{"seed reads are open", "GET", "/acme/web/deployments/", 200},
		{"triggers are closed", "POST", "/api/v1/flows/" + f.ID + "/cancel", 401},
		{"artifacts are closed", "POST", "/api/v1/artifacts", 401},
		{"reload is closed", "POST", "/api/v1/config/reload", 401},
		{"audit is closed", "GET", "/api/v1/audit", 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := e.call(c.method, c.path, "anything", nil)
			require.Equal(t, c.want, r.status, string(r.body))
			if c.want == 401 {
				require.Equal(t, "unauthorized", r.errCode())
				require.Contains(t, r.json["error"].(map[string]any)["message"], "no API token is configured")
			}
		})
	}
	t.Cleanup(func() { require.Zero(t, e.events(wire.SubjectEventsAll)) })
}

func testArtifacts(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	good := map[string]any{"artifact": "acme:web", "version": "1.2.3", "commit": strings.ToUpper(commitA), "ref": "refs/tags/v1.2.3", "metadata": map[string]string{"build": "42"}}
	r := e.call("POST", "/api/v1/artifacts", tokWrite, good)
	require.Equal(t, http.StatusAccepted, r.status, string(r.body))
	id := r.json["event_id"].(string)
	require.NotEmpty(t, id)
	require.Equal(t, 1, e.events(wire.SubjectArtifact))
	m := e.lastEvent(wire.SubjectArtifact)
	require.Equal(t, id, m.Header.Get(wire.HeaderMsgID))
	var ev wire.ArtifactCreated
	require.NoError(t, json.Unmarshal(m.Data, &ev))
	require.Equal(t, wire.ArtifactCreated{EventID: id, Artifact: "acme:web", Version: "1.2.3", Commit: commitA,
		Ref: "refs/tags/v1.2.3", Metadata: map[string]string{"build": "42"}, By: "ci", At: ev.At}, ev)
	require.WithinDuration(t, time.Now(), ev.At, time.Minute)

	with := func(k string, v any) map[string]any {
		out := map[string]any{}
		for kk, vv := range good {
			out[kk] = vv
		}
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
		return out
	}
	cases := []struct {
		name  string
		body  any
		ctype string
		want  int
		code  string
	}{
		{"malformed JSON", `{"artifact":`, "", 400, "bad_request"},
		{"not an object", `[1,2]`, "", 400, "bad_request"},
		{"two values", `{"artifact":"acme:web"} {}`, "", 400, "bad_request"},
		{"empty body", "", "", 400, "bad_request"},
		{"unknown field", with("colour", "red"), "", 400, "bad_request"},
		{"wrong type", with("version", 12), "", 400, "bad_request"},
		{"artifact without group", with("artifact", "web"), "", 400, "bad_request"},
		{"artifact missing", with("artifact", nil), "", 400, "bad_request"},
		{"version empty", with("version", ""), "", 400, "bad_request"},
		{"version too long", with("version", strings.Repeat("v", 129)), "", 400, "bad_request"},
		{"version with newline", with("version", "1\n2"), "", 400, "bad_request"},
		{"commit short", with("commit", "3ee38fa"), "", 400, "bad_request"},
		{"commit not hex", with("commit", strings.Repeat("g", 40)), "", 400, "bad_request"},
		{"no service deploys it", with("artifact", "acme:nothing"), "", 404, "not_found"},
		{"wrong content type", good, "text/plain", 415, "unsupported_media_type"},
		{"too large", with("ref", strings.Repeat("r", maxAPIBody)), "", 413, "payload_too_large"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var hdrs []string
			if c.ctype != "" {
				hdrs = []string{"Content-Type", c.ctype}
			}
			body := c.body
			if s, ok := body.(string); ok && s == "" {
				body = nil
			}
			r := e.call("POST", "/api/v1/artifacts", tokWrite, body, hdrs...)
			require.Equal(t, c.want, r.status, string(r.body))
			require.Equal(t, c.code, r.errCode())
		})
	}
	t.Cleanup(func() { require.Equal(t, 1, e.events(wire.SubjectEventsAll), "only the good call published") })
}

func testIdempotency(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{envToken: tokEnv})
	body := map[string]any{"artifact": "acme:shared", "version": "7", "commit": commitA}
	first := e.call("POST", "/api/v1/artifacts", tokWrite, body, "Idempotency-Key", "build-7")
	require.Equal(t, 202, first.status, string(first.body))
	again := e.call("POST", "/api/v1/artifacts", tokWrite, body, "Idempotency-Key", "build-7")
	require.Equal(t, 202, again.status)
	require.Equal(t, first.json["event_id"], again.json["event_id"])
	require.Equal(t, "true", again.header.Get("Idempotent-Replayed"))
	require.Equal(t, 1, e.events(wire.SubjectArtifact), "the retry published nothing")

	other := e.call("POST", "/api/v1/artifacts", tokWrite, map[string]any{"artifact": "acme:shared", "version": "8", "commit": commitA}, "Idempotency-Key", "build-7")
	require.Equal(t, 422, other.status)
	require.Equal(t, "idempotency_key_reused", other.errCode())

	// Keys are per token: another token's same key is another request.
	env := e.call("POST", "/api/v1/artifacts", tokEnv, body, "Idempotency-Key", "build-7")
	require.Equal(t, 202, env.status)
	require.NotEqual(t, first.json["event_id"], env.json["event_id"])

	bad := e.call("POST", "/api/v1/artifacts", tokWrite, body, "Idempotency-Key", "has space")
	require.Equal(t, 400, bad.status)

	// The key lives 24 h.
	ttl := e.rdb.TTL(context.Background(), e.keys.Idempotency("ci", "build-7")).Val()
	require.InDelta(t, store.IdempotencyTTL.Seconds(), ttl.Seconds(), 60)

	// Without a key every call is a new event.
	a := e.call("POST", "/api/v1/artifacts", tokWrite, body)
	b := e.call("POST", "/api/v1/artifacts", tokWrite, body)
	require.NotEqual(t, a.json["event_id"], b.json["event_id"])
	require.Equal(t, 4, e.events(wire.SubjectArtifact))

	// Triggers take keys too: a replay answers 202 even once the state moved on.
	f := newFlow("v9", flow.FlowInProgress, 0)
	e.putFlow(f)
	c1 := e.call("POST", "/api/v1/flows/"+f.ID+"/cancel", tokWrite, nil, "Idempotency-Key", "cancel-1")
	require.Equal(t, 202, c1.status)
	f.State = flow.FlowCancelled
	e.putFlow(f)
	c2 := e.call("POST", "/api/v1/flows/"+f.ID+"/cancel", tokWrite, nil, "Idempotency-Key", "cancel-1")
	require.Equal(t, 202, c2.status)
	require.Equal(t, c1.json["event_id"], c2.json["event_id"])
	require.Equal(t, 1, e.events(wire.SubjectTrigger))
}

func testPromotions(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	running := withPromotions(newFlow("v1", flow.FlowInProgress, 0), flow.PromotionRunning, flow.PromotionRunning)
	passed := withPromotions(newFlow("v2", flow.FlowInProgress, time.Second), flow.PromotionPassed, flow.PromotionPending)
	e.putFlow(running)
	e.putFlow(passed)
	dep := running.Deployments[0].ID
	prom := func(d, name, action string) string {
		p := "/api/v1/deployments/" + d + "/promotions/" + name
		if action != "" {
			p += "/" + action
		}
		return p
	}

	t.Run("accepted", func(t *testing.T) {
		cases := []struct {
			name, path string
			body       any
			kind       wire.TriggerKind
			result     string
			reason     string
		}{
			{"approve", prom(dep, "qa", "approve"), map[string]any{"reason": "looks good"}, wire.TriggerApprove, "", "looks good"},
			{"approve without body", prom(dep, "qa", "approve"), nil, wire.TriggerApprove, "", ""},
			{"reject", prom(dep, "qa", "reject"), map[string]any{"reason": "broken"}, wire.TriggerReject, "", "broken"},
			{"result passed", prom(dep, "check", ""), map[string]any{"result": "passed"}, wire.TriggerPromotionResult, "passed", ""},
			{"result failed", prom(dep, "check", ""), map[string]any{"result": "failed", "reason": "p99 up"}, wire.TriggerPromotionResult, "failed", "p99 up"},
		}
		for _, c := range cases {
			r := e.call("POST", c.path, tokWrite, c.body)
			require.Equal(t, 202, r.status, "%s: %s", c.name, r.body)
			m := e.lastEvent(wire.SubjectTrigger)
			var tr wire.Trigger
			require.NoError(t, json.Unmarshal(m.Data, &tr))
			require.Equal(t, r.json["event_id"], tr.EventID, c.name)
			require.Equal(t, tr.EventID, m.Header.Get(wire.HeaderMsgID))
			require.Equal(t, wire.Trigger{EventID: tr.EventID, Kind: c.kind, FlowID: running.ID, DeploymentID: dep,
				Promotion: tr.Promotion, Result: c.result, Reason: c.reason, By: "ci", At: tr.At}, tr, c.name)
		}
		require.Equal(t, len(cases), e.events(wire.SubjectTrigger))
	})

	t.Run("refused", func(t *testing.T) {
		before := e.events(wire.SubjectEventsAll)
		unknownFlow := flow.DeploymentID(flow.FlowID("acme:web", "nope", "web"), "staging")
		cases := []struct {
			name, path string
			body       any
			want       int
			code       string
			state      string
		}{
			{"deployment id malformed", prom("nope", "qa", "approve"), nil, 404, "deployment_not_found", ""},
			{"flow unknown", prom(unknownFlow, "qa", "approve"), nil, 404, "deployment_not_found", ""},
			{"environment unknown", prom(running.ID+"-qa", "qa", "approve"), nil, 404, "deployment_not_found", ""},
			{"promotion unknown", prom(dep, "nope", "approve"), nil, 404, "not_found", ""},
			{"approve an external", prom(dep, "check", "approve"), nil, 409, "conflict", "running"},
			{"reject a wait", prom(dep, "soak", "reject"), nil, 409, "conflict", "pending"},
			{"result on a manual", prom(dep, "qa", ""), map[string]any{"result": "passed"}, 409, "conflict", "running"},
			{"approve a passed one", prom(passed.Deployments[0].ID, "qa", "approve"), nil, 409, "conflict", "passed"},
			{"result on a pending one", prom(passed.Deployments[0].ID, "check", ""), map[string]any{"result": "passed"}, 409, "conflict", "pending"},
			{"result value", prom(dep, "check", ""), map[string]any{"result": "maybe"}, 400, "bad_request", ""},
			{"result missing", prom(dep, "check", ""), map[string]any{"reason": "x"}, 400, "bad_request", ""},
			{"result malformed", prom(dep, "check", ""), `{"result"`, 400, "bad_request", ""},
			{"approve unknown field", prom(dep, "qa", "approve"), map[string]any{"why": "x"}, 400, "bad_request", ""},
			{"reason too long", prom(dep, "qa", "reject"), map[string]any{"reason": strings.Repeat("x", maxReason+1)}, 400, "bad_request", ""},
		}
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				r := e.call("POST", c.path, tokWrite, c.body)
				require.Equal(t, c.want, r.status, string(r.body))
				require.Equal(t, c.code, r.errCode())
				if c.state != "" {
					require.Equal(t, c.state, r.errField("state"))
					require.Contains(t, r.errField("message"), c.state)
				}
			})
		}
		t.Cleanup(func() { require.Equal(t, before, e.events(wire.SubjectEventsAll), "a refused call published") })
	})
}

func testFlowTriggers(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	inProgress := newFlow("v1", flow.FlowInProgress, 0)
	succeeded := newFlow("v2", flow.FlowSucceeded, time.Second)
	cancelled := newFlow("v3", flow.FlowCancelled, 2*time.Second)
	for _, f := range []*flow.Flow{inProgress, succeeded, cancelled} {
		e.putFlow(f)
	}
	unknown := flow.FlowID("acme:web", "none", "web")
	cases := []struct {
		name, path string
		body       any
		want       int
		state      string
		kind       wire.TriggerKind
	}{
		{"cancel in progress", "/api/v1/flows/" + inProgress.ID + "/cancel", map[string]any{"reason": "bad build"}, 202, "", wire.TriggerCancel},
		{"cancel succeeded", "/api/v1/flows/" + succeeded.ID + "/cancel", nil, 409, "succeeded", ""},
		{"cancel cancelled", "/api/v1/flows/" + cancelled.ID + "/cancel", nil, 409, "cancelled", ""},
		{"redeploy succeeded", "/api/v1/flows/" + succeeded.ID + "/redeploy", nil, 202, "", wire.TriggerRedeploy},
		{"redeploy cancelled", "/api/v1/flows/" + cancelled.ID + "/redeploy", map[string]any{}, 202, "", wire.TriggerRedeploy},
		{"redeploy in progress", "/api/v1/flows/" + inProgress.ID + "/redeploy", nil, 409, "in_progress", ""},
		{"cancel unknown", "/api/v1/flows/" + unknown + "/cancel", nil, 404, "", ""},
		{"redeploy malformed id", "/api/v1/flows/xyz/redeploy", nil, 404, "", ""},
		{"cancel malformed body", "/api/v1/flows/" + inProgress.ID + "/cancel", "{", 400, "", ""},
	}
	for _, c := range cases {
		r := e.call("POST", c.path, tokWrite, c.body)
		require.Equal(t, c.want, r.status, "%s: %s", c.name, r.body)
		if c.state != "" {
			require.Equal(t, "conflict", r.errCode())
			require.Equal(t, c.state, r.errField("state"))
		}
		if c.kind != "" {
			var tr wire.Trigger
			require.NoError(t, json.Unmarshal(e.lastEvent(wire.SubjectTrigger).Data, &tr))
			require.Equal(t, c.kind, tr.Kind, c.name)
			require.Equal(t, r.json["event_id"], tr.EventID)
			require.Equal(t, "ci", tr.By)
		}
	}
	require.Equal(t, 3, e.events(wire.SubjectEventsAll))
	// Nothing in Redis changed: triggers only publish.
	f, err := e.st.GetFlow(context.Background(), inProgress.ID)
	require.NoError(t, err)
	require.Equal(t, flow.FlowInProgress, f.State)
}

func testUnavailable(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	f := newFlow("v1", flow.FlowInProgress, 0)
	e.putFlow(f)
	e.nats.Shutdown()
	for _, c := range []struct {
		path string
		body any
	}{
		{"/api/v1/flows/" + f.ID + "/cancel", nil},
		{"/api/v1/artifacts", map[string]any{"artifact": "acme:web", "version": "1", "commit": commitA}},
	} {
		r := e.call("POST", c.path, tokWrite, c.body, "Idempotency-Key", "k-"+c.path)
		require.Equal(t, 503, r.status, string(r.body))
		require.Equal(t, "unavailable", r.errCode())
		require.NotEmpty(t, r.header.Get("Retry-After"))
	}
	// The key was not marked published: a retry after the outage publishes.
	rec, found, err := e.st.GetIdempotency(context.Background(), "ci", "k-/api/v1/artifacts")
	require.NoError(t, err)
	require.True(t, found)
	require.False(t, rec.Published)
}

func testListFlows(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	states := []flow.FlowState{flow.FlowSucceeded, flow.FlowFailed, flow.FlowInProgress, flow.FlowSucceeded, flow.FlowCancelled, flow.FlowSucceeded}
	var web []*flow.Flow
	for i, s := range states {
		f := newFlow(fmt.Sprintf("v%d", i), s, time.Duration(i)*time.Second)
		web = append(web, f)
		e.putFlow(f)
	}
	api1 := newFlowOf("acme:shared", "api", "s1", flow.FlowSucceeded, 10*time.Second)
	e.putFlow(api1)
	ids := func(r resp) []string {
		var out []string
		for _, it := range r.json["items"].([]any) {
			m := it.(map[string]any)
			_, hasSpec := m["spec"]
			require.False(t, hasSpec, "a flow view must not show its spec")
			out = append(out, m["id"].(string))
		}
		return out
	}
	r := e.call("GET", "/api/v1/flows", tokRead, nil)
	require.Equal(t, 200, r.status, string(r.body))
	require.Equal(t, []string{api1.ID, web[5].ID, web[4].ID, web[3].ID, web[2].ID, web[1].ID, web[0].ID}, ids(r))
	require.Nil(t, r.json["next_cursor"])

	// Paging by 2 over service web.
	got := e.pageAll("/api/v1/flows?service=web&limit=2", tokRead, ids)
	require.Equal(t, []string{web[5].ID, web[4].ID, web[3].ID, web[2].ID, web[1].ID, web[0].ID}, got)

	// State filter, paged by 2: every succeeded web flow, in order.
	got = e.pageAll("/api/v1/flows?service=web&state=succeeded&limit=2", tokRead, ids)
	require.Equal(t, []string{web[5].ID, web[3].ID, web[0].ID}, got)

	r = e.call("GET", "/api/v1/flows?state=in_progress", tokRead, nil)
	require.Equal(t, []string{web[2].ID}, ids(r))
	r = e.call("GET", "/api/v1/flows?service=nobody", tokRead, nil)
	require.Equal(t, 200, r.status)
	require.Empty(t, r.json["items"])

	one := e.call("GET", "/api/v1/flows/"+web[1].ID, tokRead, nil)
	require.Equal(t, 200, one.status)
	require.Equal(t, "failed", one.json["state"])
	require.NotContains(t, string(one.body), "file:///secret")

	for _, c := range []struct {
		path string
		want int
	}{
		{"/api/v1/flows?state=done", 400},
		{"/api/v1/flows?limit=0", 400},
		{"/api/v1/flows?limit=x", 400},
		{"/api/v1/flows?cursor=nope", 400},
		{"/api/v1/flows?service=Bad_Name", 400},
		{"/api/v1/flows/" + flow.FlowID("a:b", "c", "d"), 404},
		{"/api/v1/flows/nope", 404},
		{"/api/v1/nothing", 404},
	} {
		r := e.call("GET", c.path, tokRead, nil)
		require.Equal(t, c.want, r.status, c.path)
		require.NotEmpty(t, r.errCode(), c.path)
	}
	require.Equal(t, 405, e.call("DELETE", "/api/v1/flows", tokRead, nil).status)
}

func testVersions(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	// acme:shared is deployed by web and api; v1 has both flows, v2 only web's.
	e.putFlow(newFlowOf("acme:shared", "web", "v1", flow.FlowSucceeded, 0))
	e.putFlow(newFlowOf("acme:shared", "api", "v1", flow.FlowFailed, time.Second))
	e.putFlow(newFlowOf("acme:shared", "web", "v2", flow.FlowInProgress, 5*time.Second))
	r := e.call("GET", "/api/v1/artifacts/acme:shared/versions", tokRead, nil)
	require.Equal(t, 200, r.status, string(r.body))
	items := r.json["items"].([]any)
	require.Len(t, items, 2)
	v2, v1 := items[0].(map[string]any), items[1].(map[string]any)
	require.Equal(t, "v2", v2["version"])
	require.Equal(t, "v1", v1["version"])
	require.Equal(t, t0.Format(time.RFC3339), v1["created_at"], "first seen: the first flow's creation")
	require.Equal(t, strings.Repeat("a", 40), v1["commit"])
	require.ElementsMatch(t, []any{
		map[string]any{"id": flow.FlowID("acme:shared", "v1", "web"), "service": "web", "state": "succeeded"},
		map[string]any{"id": flow.FlowID("acme:shared", "v1", "api"), "service": "api", "state": "failed"},
	}, v1["flows"])
	require.Len(t, v2["flows"], 1)

	p := e.call("GET", "/api/v1/artifacts/acme:shared/versions?limit=1", tokRead, nil)
	require.Len(t, p.json["items"], 1)
	p = e.call("GET", "/api/v1/artifacts/acme:shared/versions?limit=1&cursor="+url.QueryEscape(p.json["next_cursor"].(string)), tokRead, nil)
	require.Equal(t, "v1", p.json["items"].([]any)[0].(map[string]any)["version"])
	require.Nil(t, p.json["next_cursor"])

	// Known artifact, no version yet: an empty list.
	r = e.call("GET", "/api/v1/artifacts/ACME:web/versions", tokRead, nil)
	require.Equal(t, 200, r.status)
	require.Empty(t, r.json["items"])
	require.Equal(t, 404, e.call("GET", "/api/v1/artifacts/acme:nope/versions", tokRead, nil).status)
	require.Equal(t, 400, e.call("GET", "/api/v1/artifacts/nogroup/versions", tokRead, nil).status)
	require.Equal(t, 400, e.call("GET", "/api/v1/artifacts/acme:shared/versions?cursor=x", tokRead, nil).status)
}

func testAgentsAndPlan(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	ctx := context.Background()
	now := time.Now().UTC()
	for _, a := range []store.AgentRecord{
		{ID: "stg-1", Hostname: "h1", Labels: map[string]string{"env": "staging"}, Version: "1", State: "idle", LastSeenAt: now, Jobs: 0},
		{ID: "prod-1", Hostname: "h2", Labels: map[string]string{"env": "prod", "zone": "a"}, Version: "1", State: "busy", LastSeenAt: now, Jobs: 1},
		{ID: "prod-2", Hostname: "h3", Labels: map[string]string{"env": "prod"}, Version: "1", State: "idle", LastSeenAt: now.Add(-time.Minute)},
		{ID: "prod-3", Hostname: "h4", Labels: map[string]string{"env": "prod"}, Version: "1", State: "draining", LastSeenAt: now},
	} {
		require.NoError(t, e.st.PutAgent(ctx, a))
	}
	r := e.call("GET", "/api/v1/agents", tokRead, nil)
	require.Equal(t, 200, r.status, string(r.body))
	var states []string
	for _, it := range r.json["items"].([]any) {
		m := it.(map[string]any)
		states = append(states, m["id"].(string)+"="+m["state"].(string))
	}
	require.Equal(t, []string{"prod-1=busy", "prod-2=lost", "prod-3=draining", "stg-1=idle"}, states)

	r = e.call("GET", "/api/v1/services/web/plan?commit="+commitA, tokRead, nil)
	require.Equal(t, 200, r.status, string(r.body))
	var plan Plan
	require.NoError(t, json.Unmarshal(r.body, &plan))
	require.True(t, plan.Deployable)
	require.Len(t, plan.Environments, 2)
	agentsOf := func(pe PlanEnvironment) []string {
		var out []string
		for _, a := range pe.Agents {
			out = append(out, a.ID)
		}
		return out
	}
	require.Equal(t, []string{"stg-1"}, agentsOf(plan.Environments[0]))
	require.Equal(t, []string{"prod-1"}, agentsOf(plan.Environments[1]), "lost and draining agents get no job")

	require.Equal(t, 404, e.call("GET", "/api/v1/services/nope/plan?commit="+commitA, tokRead, nil).status)
	require.Equal(t, 400, e.call("GET", "/api/v1/services/web/plan?commit=abc", tokRead, nil).status)
	require.Equal(t, 400, e.call("GET", "/api/v1/services/web/plan", tokRead, nil).status)
	require.Zero(t, e.events(wire.SubjectEventsAll), "a plan publishes nothing")
}

func testServices(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	r := e.call("GET", "/api/v1/services", tokRead, nil)
	require.Equal(t, 200, r.status, string(r.body))
	var list ServiceList
	require.NoError(t, json.Unmarshal(r.body, &list))
	require.Len(t, list.Items, 2)
	web := list.Items[0]
	require.Equal(t, "web", web.Name)
	require.Equal(t, []string{"acme:web", "acme:shared"}, web.Artifacts)
	require.Equal(t, map[string]string{"env": "prod"}, web.Pipeline[1].Targets)
	require.Equal(t, "30m0s", web.Pipeline[0].Timeout)
	for _, secret := range []string{"debug-secret-value", "DB_PASSWORD", "file:///srv", "deploy.sh", sha(tokRead)} {
		require.NotContains(t, string(r.body), secret)
	}
}

func testReload(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	r := e.call("POST", "/api/v1/config/reload", tokAdmin, nil)
	require.Equal(t, 200, r.status, string(r.body))
	require.Equal(t, map[string]any{"services": 2.0, "webhooks": 1.0}, r.json)

	good, err := os.ReadFile(e.confPath)
	require.NoError(t, err)
	bad := strings.Replace(string(good), "name: api", "name: API_bad", 1)
	require.NoError(t, os.WriteFile(e.confPath, []byte(bad), 0o600))
	r = e.call("POST", "/api/v1/config/reload", tokAdmin, nil)
	require.Equal(t, 400, r.status)
	require.Equal(t, "invalid_config", r.errCode())
	require.Contains(t, r.errField("message"), "services[1].name")
	require.Len(t, e.call("GET", "/api/v1/services", tokRead, nil).json["items"], 2, "the old config stays")

	// Drop service api: the reload takes effect at once.
	i := strings.Index(string(good), "  - name: api")
	j := strings.Index(string(good), "webhooks:")
	require.NoError(t, os.WriteFile(e.confPath, []byte(string(good[:i])+string(good[j:])), 0o600))
	r = e.call("POST", "/api/v1/config/reload", tokAdmin, nil)
	require.Equal(t, 200, r.status, string(r.body))
	require.Equal(t, 1.0, r.json["services"])
	require.Len(t, e.call("GET", "/api/v1/services", tokRead, nil).json["items"], 1)

	// A reload may remove every token: then the API is closed to writes.
	require.NoError(t, os.WriteFile(e.confPath, []byte(testConfig), 0o600))
	require.Equal(t, 200, e.call("POST", "/api/v1/config/reload", tokAdmin, nil).status)
	require.Equal(t, 401, e.call("POST", "/api/v1/config/reload", tokAdmin, nil).status)
}

func testAudit(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{envToken: tokEnv})
	f := newFlow("v1", flow.FlowSucceeded, 0)
	e.putFlow(f)
	calls := []struct {
		token, method, path string
		body                any
		want                int
	}{
		{tokWrite, "POST", "/api/v1/artifacts", map[string]any{"artifact": "acme:web", "version": "2", "commit": commitA}, 202},
		{tokWrite, "POST", "/api/v1/flows/" + f.ID + "/cancel", nil, 409},
		{tokWrite, "POST", "/api/v1/flows/" + f.ID + "/redeploy", nil, 202},
		{tokRead, "POST", "/api/v1/flows/" + f.ID + "/redeploy", nil, 403}, // refused before the audit: not recorded
		{tokEnv, "POST", "/api/v1/config/reload", nil, 200},
	}
	for _, c := range calls {
		r := e.call(c.method, c.path, c.token, c.body, "X-Request-Id", "rq-"+c.path[len(c.path)-6:])
		require.Equal(t, c.want, r.status, string(r.body))
	}
	r := e.call("GET", "/api/v1/audit", tokAdmin, nil)
	require.Equal(t, 200, r.status, string(r.body))
	var list AuditList
	require.NoError(t, json.Unmarshal(r.body, &list))
	require.Len(t, list.Items, 4)
	type row struct {
		By, Action, Target string
		Status             int
	}
	var rows []row
	for _, it := range list.Items {
		rows = append(rows, row{it.By, it.Action, it.Target, it.Status})
		require.NotEmpty(t, it.RequestID)
		require.WithinDuration(t, time.Now(), it.At, time.Minute)
	}
	require.Equal(t, []row{
		{"env", "config.reload", "config", 200},
		{"ci", "flow.redeploy", f.ID, 202},
		{"ci", "flow.cancel", f.ID, 409},
		{"ci", "artifact.create", "acme:web@2", 202},
	}, rows)
	require.NotEmpty(t, list.Items[1].EventID)
	require.Equal(t, "rq-reload", list.Items[0].RequestID)

	// Paging by one.
	all := e.pageAll("/api/v1/audit?limit=1", tokAdmin, func(r resp) []string {
		var out []string
		for _, it := range r.json["items"].([]any) {
			out = append(out, it.(map[string]any)["action"].(string))
		}
		return out
	})
	require.Equal(t, []string{"config.reload", "flow.redeploy", "flow.cancel", "artifact.create"}, all)
	require.Equal(t, 400, e.call("GET", "/api/v1/audit?cursor=zz", tokAdmin, nil).status)
}

func testSeedRoutes(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	f := newFlowOf("acme:web", "web", commitA, flow.FlowSucceeded, 0)
	e.putFlow(f)
	for _, c := range []struct {
		method, path, token string
		want                int
		hdrs                []string
		body                any
	}{
		{"GET", "/acme/web/deployments/", tokRead, 200, nil, nil},
		{"GET", "/acme/web/deployments", tokRead, 200, nil, nil},
		{"GET", "/acme/web/deployments/" + commitA, tokRead, 200, nil, nil},
		{"GET", "/acme/web/deployments/" + commitA + "/log", tokRead, 200, nil, nil},
		{"GET", "/acme/nope/deployments/", tokRead, 404, nil, nil},
		{"POST", "/acme/web/", "", 200, []string{"X-GitHub-Event", "ping", "X-GitHub-Delivery", "d-ping-1"}, `{"zen":"hi"}`},
		{"POST", "/acme/web", "", 200, []string{"X-GitHub-Event", "ping", "X-GitHub-Delivery", "d-ping-2"}, `{"zen":"hi"}`},
		{"GET", "/healthz", "", 200, nil, nil},
		{"GET", "/readyz", "", 200, nil, nil},
		{"GET", "/metrics", "", 200, nil, nil},
		{"GET", "/api/v1/openapi.json", "", 200, nil, nil},
	} {
		r := e.call(c.method, c.path, c.token, c.body, c.hdrs...)
		require.Equal(t, c.want, r.status, "%s %s: %s", c.method, c.path, r.body)
	}
	one := e.call("GET", "/acme/web/deployments/"+commitA, tokRead, nil)
	require.NotContains(t, string(one.body), `"spec"`)
	doc := e.call("GET", "/api/v1/openapi.json", "", nil)
	require.Equal(t, "3.1.0", doc.json["openapi"])
	require.True(t, slices.Contains([]string{"application/json"}, doc.header.Get("Content-Type")))
}

func testWebhookSecret(t *testing.T) {
	t.Parallel()
	e := setup(t, envOpts{})
	r := e.call("GET", "/api/v1/webhooks/chat/secret", tokAdmin, nil)
	require.Equal(t, 200, r.status, string(r.body))
	var got WebhookSecret
	require.NoError(t, json.Unmarshal(r.body, &got))
	require.Equal(t, "chat", got.Webhook)
	require.True(t, got.Generated, "the config has none")
	_, err := config.DecodeSecret(got.Secret)
	require.NoError(t, err)
	// The same one every time, and the one dispatchers sign with.
	stored, err := e.st.WebhookSecret(context.Background(), "chat")
	require.NoError(t, err)
	require.Equal(t, stored, got.Secret)
	again := e.call("GET", "/api/v1/webhooks/chat/secret", tokAdmin, nil)
	require.Equal(t, string(r.body), string(again.body))

	require.Equal(t, 404, e.call("GET", "/api/v1/webhooks/nope/secret", tokAdmin, nil).status)
	require.Equal(t, 403, e.call("GET", "/api/v1/webhooks/chat/secret", tokWrite, nil).status)
	require.Equal(t, 401, e.call("GET", "/api/v1/webhooks/chat/secret", "", nil).status)
}
