package dev_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
	"github.com/shanenoi/otariinae/services/dev"
	"github.com/shanenoi/otariinae/services/ingest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const deployScript = `#!/bin/sh
set -e
echo "deploying $OTARIINAE_SERVICE $OTARIINAE_COMMIT to $OTARIINAE_ENVIRONMENT args=$*"
env | grep -E '^(OTARIINAE_|GREETING=)' | sort > "$OUT_DIR/$OTARIINAE_ENVIRONMENT.$OTARIINAE_COMMIT.env"
git rev-parse HEAD > "$OUT_DIR/$OTARIINAE_ENVIRONMENT.$OTARIINAE_COMMIT.head"
if [ -f fail-in-$OTARIINAE_ENVIRONMENT ]; then echo "boom in $OTARIINAE_ENVIRONMENT" >&2; exit 3; fi
echo "done"
`

const githubSecret = "It's a Secret to Everybody"

// system is a running `otariinae dev` with its fixtures.
type system struct {
	addrs  dev.Addrs
	repo   *testenv.GitRepo
	out    string
	hooks  *testenv.HookReceiver
	st     *store.Store
	js     jetstream.JetStream
	client *http.Client
	token  string // sent on reads when set
}

const defaultPipeline = `      - environment: staging
        targets: {agent: local}
        env: {OUT_DIR: %[1]q, GREETING: "hello world; $(touch /tmp/never)"}
      - environment: production
        targets: {agent: local}
        env: {OUT_DIR: %[1]q}
`

func startDev(t *testing.T) *system { return startDevWith(t, defaultPipeline, "") }

// startDevWith runs otariinae dev with the service's pipeline (a format
// string given the output directory) and an admin API token.
func startDevWith(t *testing.T, pipeline, token string) *system {
	t.Helper()
	r := testenv.StartRedis(t)
	s := &system{repo: testenv.NewGitRepo(t), out: t.TempDir(), client: &http.Client{Timeout: 30 * time.Second}, token: token}
	secret := config.NewSecret()
	s.hooks = testenv.NewHookReceiver(t, secret)
	confPath := filepath.Join(t.TempDir(), "otariinae.yaml")
	conf := fmt.Sprintf(`
services:
  - name: web
    repository: acme/web
    git_url: %s
    branches: [main]
    deploy: ./deploy.sh --from-otariinae
    pipeline:
%s
webhooks:
  - name: test
    url: %s/hooks
    secret: %s
    events: ["*"]
`, s.repo.URL(), strings.TrimRight(fmt.Sprintf(pipeline, s.out), "\n"), s.hooks.URL, secret)
	require.NoError(t, os.WriteFile(confPath, []byte(conf), 0o600))

	cfg := dev.Config{
		DataDir: t.TempDir(), DevNATSAddr: "127.0.0.1:0", RedisURL: r.URL, RedisPrefix: r.Prefix,
		HTTPAddr: "127.0.0.1:0", ConfigFile: confPath,
	}
	cfg.IngestConfig.GitHubWebhookSecret = githubSecret
	cfg.IngestConfig.APIToken = token
	cfg.DispatcherConfig.HooksAllowNetworks = "127.0.0.0/8"
	cfg.AgentConfig.HeartbeatInterval = 200 * time.Millisecond
	cfg.AgentConfig.ShutdownGrace = 2 * time.Second

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan dev.Addrs, 1)
	done := make(chan error, 1)
	go func() {
		done <- dev.Run(ctx, cfg, dev.Options{Version: "test", Ready: func(a dev.Addrs) { ready <- a }}, testenv.Logger(t))
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(60 * time.Second):
			t.Error("dev did not stop within 60s")
		}
	})
	select {
	case s.addrs = <-ready:
	case err := <-done:
		t.Fatalf("dev exited: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("dev not ready in 60s")
	}
	s.st = store.New(r.Client, r.Prefix)
	nc, err := nats.Connect(s.addrs.NATS)
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	s.js, err = jetstream.New(nc)
	require.NoError(t, err)
	// The agent announces itself at start; wait until the engine heard it.
	testenv.Eventually(t, 30*time.Second, "agent local online", func() bool {
		agents, err := s.st.Agents(context.Background(), time.Now(), 30*time.Second)
		return err == nil && len(agents) == 1 && agents[0].ID == "local"
	})
	return s
}

func (s *system) do(t *testing.T, req *http.Request) (int, []byte) {
	t.Helper()
	resp, err := s.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

func (s *system) push(t *testing.T, branch, sha string) (int, []byte) {
	t.Helper()
	body := testenv.PushPayload("acme/web", "refs/heads/"+branch, sha)
	return s.do(t, testenv.GitHubRequest(t, s.addrs.HTTP+"/acme/web/", "push", testenv.DeliveryID(), githubSecret, body))
}

func (s *system) get(t *testing.T, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, s.addrs.HTTP+path, nil)
	require.NoError(t, err)
	if s.token != "" {
		req.Header.Set("Authorization", "Bearer "+s.token)
	}
	return s.do(t, req)
}

// waitFlow polls the seed route until the commit's flow is terminal.
func (s *system) waitFlow(t *testing.T, sha string) *flow.Flow {
	t.Helper()
	var got ingest.CommitDeployments
	testenv.Eventually(t, 90*time.Second, "flow of "+sha+" to end", func() bool {
		code, b := s.get(t, "/acme/web/deployments/"+sha)
		if code != http.StatusOK {
			return false
		}
		require.NoError(t, json.Unmarshal(b, &got))
		return len(got.Flows) == 1 && got.Flows[0].State.Terminal()
	})
	require.Equal(t, sha, got.Commit)
	return got.Flows[0]
}

func (s *system) eventCount(t *testing.T) uint64 {
	t.Helper()
	st, err := s.js.Stream(context.Background(), wire.StreamEvents)
	require.NoError(t, err)
	info, err := st.Info(context.Background())
	require.NoError(t, err)
	return info.State.Msgs
}

func readEnvFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		out[k] = v
	}
	return out
}

func TestDevEndToEnd(t *testing.T) {
	s := startDev(t)

	t.Run("push deploys staging then production", func(t *testing.T) {
		sha := s.repo.Commit("first", map[string]string{"deploy.sh": deployScript})
		code, body := s.push(t, "main", sha)
		require.Equal(t, http.StatusAccepted, code, "%s", body)
		var accepted map[string]string
		require.NoError(t, json.Unmarshal(body, &accepted))
		require.Equal(t, "push", accepted["event"])
		require.NotEmpty(t, accepted["delivery"])

		f := s.waitFlow(t, sha)
		require.Equal(t, flow.FlowSucceeded, f.State)
		require.Equal(t, "acme:web", f.Artifact)
		require.Equal(t, "refs/heads/main", f.Ref)
		require.Nil(t, f.Spec, "the internal spec is not shown")
		require.Len(t, f.Deployments, 2)
		staging, prod := f.Deployments[0], f.Deployments[1]
		require.Equal(t, "staging", staging.Environment)
		require.Equal(t, "production", prod.Environment)
		for _, d := range f.Deployments {
			require.Equal(t, flow.Succeeded, d.State)
			require.NotNil(t, d.CreatedAt)
			require.NotNil(t, d.StartedAt)
			require.NotNil(t, d.CompletedAt)
			require.NotNil(t, d.FinishedAt)
			require.False(t, d.StartedAt.Before(*d.CreatedAt))
			require.False(t, d.FinishedAt.Before(*d.StartedAt))
			require.Equal(t, []flow.Job{{AgentID: "local", State: flow.JobSucceeded, ExitCode: ptr(0)}}, d.Jobs)
		}
		require.False(t, prod.CreatedAt.Before(*staging.FinishedAt), "production starts after staging ended")

		// The script ran at the pushed commit with the documented environment.
		for _, d := range f.Deployments {
			head, err := os.ReadFile(filepath.Join(s.out, d.Environment+"."+sha+".head"))
			require.NoError(t, err)
			require.Equal(t, sha, strings.TrimSpace(string(head)))
			env := readEnvFile(t, filepath.Join(s.out, d.Environment+"."+sha+".env"))
			require.Equal(t, "acme", env["OTARIINAE_ORG"])
			require.Equal(t, "web", env["OTARIINAE_REPO"])
			require.Equal(t, sha, env["OTARIINAE_COMMIT"])
			require.Equal(t, "refs/heads/main", env["OTARIINAE_REF"])
			require.Equal(t, "web", env["OTARIINAE_SERVICE"])
			require.Equal(t, d.Environment, env["OTARIINAE_ENVIRONMENT"])
			require.Equal(t, d.ID, env["OTARIINAE_DEPLOYMENT_ID"])
			require.Equal(t, f.ID, env["OTARIINAE_FLOW_ID"])
			require.Equal(t, "local", env["OTARIINAE_AGENT_ID"])
		}
		stagingEnv := readEnvFile(t, filepath.Join(s.out, "staging."+sha+".env"))
		require.Equal(t, "hello world; $(touch /tmp/never)", stagingEnv["GREETING"], "config env passed verbatim, never through a shell")
		require.NotContains(t, readEnvFile(t, filepath.Join(s.out, "production."+sha+".env")), "GREETING")

		// The log route shows every job's output, prefixed.
		code, logBody := s.get(t, "/acme/web/deployments/"+sha+"/log")
		require.Equal(t, http.StatusOK, code)
		log := string(logBody)
		require.Contains(t, log, "[staging local] deploying web "+sha+" to staging args=--from-otariinae")
		require.Contains(t, log, "[production local] deploying web "+sha+" to production args=--from-otariinae")
		require.Less(t, strings.Index(log, "[staging local] done"), strings.Index(log, "[production local] deploying"))

		// The list route shows it, newest first.
		code, listBody := s.get(t, "/acme/web/deployments/")
		require.Equal(t, http.StatusOK, code)
		var list ingest.DeploymentList
		require.NoError(t, json.Unmarshal(listBody, &list))
		require.Equal(t, sha, list.Items[0].Commit)
		require.Equal(t, f.ID, list.Items[0].FlowID)

		// Every transition reached the receiver, signed.
		want := []string{
			"flow.created", "flow.started", "flow.succeeded",
			"deployment.created", "deployment.started", "deployment.completed", "deployment.succeeded",
		}
		testenv.Eventually(t, 30*time.Second, "hooks of the flow", func() bool {
			return len(hooksOf(s.hooks, f.ID)) == 11
		})
		hooks := hooksOf(s.hooks, f.ID)
		types := map[string]int{}
		ids := map[string]bool{}
		for _, h := range hooks {
			types[h.Type]++
			require.False(t, ids[h.ID], "hook id %s delivered twice", h.ID)
			ids[h.ID] = true
			require.Contains(t, h.Data, "flow")
			require.Equal(t, "web", h.Data["service"])
			require.Equal(t, "acme:web", h.Data["artifact"])
		}
		for _, typ := range want {
			require.Positive(t, types[typ], "no %s hook in %v", typ, types)
		}
		require.Equal(t, 2, types["deployment.succeeded"])
		require.Zero(t, s.hooks.Failed())
	})

	t.Run("failing deploy fails the flow and stops the pipeline", func(t *testing.T) {
		sha := s.repo.Commit("break staging", map[string]string{"fail-in-staging": "x"})
		code, body := s.push(t, "main", sha)
		require.Equal(t, http.StatusAccepted, code, "%s", body)
		f := s.waitFlow(t, sha)
		require.Equal(t, flow.FlowFailed, f.State)
		require.Equal(t, flow.Failed, f.Deployments[0].State)
		require.Contains(t, f.Deployments[0].Reason, "exited 3")
		require.Equal(t, 3, *f.Deployments[0].Jobs[0].ExitCode)
		require.Equal(t, flow.NotStarted, f.Deployments[1].State)
		_, logBody := s.get(t, "/acme/web/deployments/"+sha+"/log")
		require.Contains(t, string(logBody), "[staging local] boom in staging")
		testenv.Eventually(t, 30*time.Second, "flow.failed hook", func() bool {
			return slices.ContainsFunc(hooksOf(s.hooks, f.ID), func(h testenv.Hook) bool { return h.Type == "flow.failed" })
		})
	})

	t.Run("untracked branch is ignored", func(t *testing.T) {
		before := s.eventCount(t)
		sha := strings.Repeat("ab", 20)
		code, body := s.push(t, "feature/x", sha)
		require.Equal(t, http.StatusAccepted, code)
		var ignored map[string]string
		require.NoError(t, json.Unmarshal(body, &ignored))
		require.Contains(t, ignored["ignored"], "feature/x")
		require.Equal(t, before, s.eventCount(t))
		code, _ = s.get(t, "/acme/web/deployments/"+sha)
		require.Equal(t, http.StatusNotFound, code)
	})

	t.Run("bad input changes nothing", func(t *testing.T) {
		sha := strings.Repeat("cd", 20)
		good := testenv.PushPayload("acme/web", "refs/heads/main", sha)
		tests := []struct {
			name     string
			req      func() *http.Request
			status   int
			wantCode string
		}{
			{"wrong signature", func() *http.Request {
				return testenv.GitHubRequest(t, s.addrs.HTTP+"/acme/web/", "push", testenv.DeliveryID(), "not the secret", good)
			}, 401, "invalid_signature"},
			{"missing signature", func() *http.Request {
				return testenv.GitHubRequest(t, s.addrs.HTTP+"/acme/web/", "push", testenv.DeliveryID(), "", good)
			}, 401, "invalid_signature"},
			{"over 25 MiB", func() *http.Request {
				big := bytes.Repeat([]byte{' '}, ingest.MaxBody+1)
				return testenv.GitHubRequest(t, s.addrs.HTTP+"/acme/web/", "push", testenv.DeliveryID(), githubSecret, big)
			}, 413, "payload_too_large"},
			{"malformed JSON", func() *http.Request {
				return testenv.GitHubRequest(t, s.addrs.HTTP+"/acme/web/", "push", testenv.DeliveryID(), githubSecret, []byte(`{"ref": "refs/heads/main", "after": `))
			}, 400, "bad_request"},
			{"unknown repository", func() *http.Request {
				return testenv.GitHubRequest(t, s.addrs.HTTP+"/acme/unknown/", "push", testenv.DeliveryID(), githubSecret, testenv.PushPayload("acme/unknown", "refs/heads/main", sha))
			}, 404, "repository_not_configured"},
			{"payload for another repository", func() *http.Request {
				// Signed with acme/web's secret, but about acme/api: a
				// delivery verified for one repository never deploys another.
				return testenv.GitHubRequest(t, s.addrs.HTTP+"/acme/web/", "push", testenv.DeliveryID(), githubSecret, testenv.PushPayload("acme/api", "refs/heads/main", sha))
			}, 400, "bad_request"},
			{"missing delivery id", func() *http.Request {
				return testenv.GitHubRequest(t, s.addrs.HTTP+"/acme/web/", "push", "", githubSecret, good)
			}, 400, "bad_request"},
			{"wrong content type", func() *http.Request {
				r := testenv.GitHubRequest(t, s.addrs.HTTP+"/acme/web/", "push", testenv.DeliveryID(), githubSecret, good)
				r.Header.Set("Content-Type", "text/plain")
				return r
			}, 415, "unsupported_media_type"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				before := s.eventCount(t)
				code, body := s.do(t, tt.req())
				require.Equal(t, tt.status, code, "%s", body)
				require.Equal(t, tt.wantCode, testenv.ErrorCode(t, body))
				require.Equal(t, before, s.eventCount(t), "nothing published")
			})
		}
		code, _ := s.get(t, "/acme/web/deployments/"+sha)
		require.Equal(t, http.StatusNotFound, code)
	})

	t.Run("ping answers 200", func(t *testing.T) {
		code, body := s.do(t, testenv.GitHubRequest(t, s.addrs.HTTP+"/acme/web/", "ping", testenv.DeliveryID(), githubSecret, []byte(`{"zen":"Keep it logically awesome.","hook_id":1}`)))
		require.Equal(t, http.StatusOK, code, "%s", body)
	})

	t.Run("read routes answer errors as JSON", func(t *testing.T) {
		code, body := s.get(t, "/acme/unknown/deployments/")
		require.Equal(t, http.StatusNotFound, code)
		require.Equal(t, "repository_not_configured", testenv.ErrorCode(t, body))
		code, body = s.get(t, "/acme/web/deployments/not-a-sha")
		require.Equal(t, http.StatusBadRequest, code)
		require.Equal(t, "bad_request", testenv.ErrorCode(t, body))
		code, body = s.get(t, "/acme/web/deployments/?limit=0")
		require.Equal(t, http.StatusBadRequest, code)
		require.Equal(t, "bad_request", testenv.ErrorCode(t, body))
	})

	t.Run("health and metrics", func(t *testing.T) {
		code, _ := s.get(t, "/healthz")
		require.Equal(t, http.StatusOK, code)
		code, body := s.get(t, "/readyz")
		require.Equal(t, http.StatusOK, code, "%s", body)
		code, body = s.get(t, "/metrics")
		require.Equal(t, http.StatusOK, code)
		for _, m := range []string{"otariinae_ingest_deliveries_total", "otariinae_engine_events_total", "otariinae_dispatcher_deliveries_total", "otariinae_agent_jobs_total"} {
			require.Contains(t, string(body), m)
		}
	})
}

func hooksOf(hr *testenv.HookReceiver, flowID string) []testenv.Hook {
	var out []testenv.Hook
	for _, h := range hr.Hooks() {
		if f, ok := h.Data["flow"].(map[string]any); ok && f["id"] == flowID {
			out = append(out, h)
		}
	}
	return out
}

func ptr[T any](v T) *T { return &v }

const promotionPipeline = `      - environment: staging
        targets: {agent: local}
        env: {OUT_DIR: %[1]q}
        promotions:
          - {name: smoke, type: script, command: ./smoke.sh --staging, timeout: 1m}
          - {name: release, type: manual}
      - environment: production
        targets: {agent: local}
        env: {OUT_DIR: %[1]q}
`

const smokeScript = `#!/bin/sh
echo "smoke $OTARIINAE_PROMOTION of $OTARIINAE_COMMIT args=$*"
if [ -f smoke-fails ]; then echo "smoke failed" >&2; exit 7; fi
`

func (s *system) post(t *testing.T, path, token, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.addrs.HTTP+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	return s.do(t, req)
}

// TestDevPromotions runs a two-environment pipeline whose staging is gated
// by a script promotion and a manual approval through the API: one run
// passes, one fails its smoke test.
func TestDevPromotions(t *testing.T) {
	const token = "s3cret-admin-token"
	s := startDevWith(t, promotionPipeline, token)

	t.Run("script passes, approval ships to production", func(t *testing.T) {
		sha := s.repo.Commit("good", map[string]string{"deploy.sh": deployScript, "smoke.sh": smokeScript})
		code, body := s.push(t, "main", sha)
		require.Equal(t, http.StatusAccepted, code, "%s", body)
		var f *flow.Flow
		testenv.Eventually(t, 90*time.Second, "release awaiting approval", func() bool {
			_, b := s.get(t, "/acme/web/deployments/"+sha)
			var got ingest.CommitDeployments
			if json.Unmarshal(b, &got) != nil || len(got.Flows) != 1 {
				return false
			}
			f = got.Flows[0]
			return f.Deployments[0].Promotions[1].State == flow.PromotionRunning
		})
		d := f.Deployments[0]
		require.Equal(t, flow.Completed, d.State)
		require.Equal(t, flow.PromotionPassed, d.Promotions[0].State)
		require.Equal(t, "script", d.Promotions[0].Type)
		require.Len(t, d.Promotions[0].Jobs, 1)
		_, logBody := s.get(t, "/acme/web/deployments/"+sha+"/log")
		require.Contains(t, string(logBody), "[staging local] smoke smoke of "+sha+" args=--staging")

		// Writes need a token with write scope.
		code, body = s.post(t, "/api/v1/deployments/"+d.ID+"/promotions/release/approve", "", `{}`)
		require.Equal(t, http.StatusUnauthorized, code, "%s", body)
		code, body = s.post(t, "/api/v1/deployments/"+d.ID+"/promotions/release/approve", token, `{"reason": "ship it"}`)
		require.Equal(t, http.StatusAccepted, code, "%s", body)

		f = s.waitFlow(t, sha)
		require.Equal(t, flow.FlowSucceeded, f.State)
		rel := f.Deployments[0].Promotions[1]
		require.Equal(t, flow.PromotionPassed, rel.State)
		require.Equal(t, "env", rel.By, "who approved: the token's name")
		require.Equal(t, "ship it", rel.Reason)
		require.Equal(t, flow.Succeeded, f.Deployments[1].State)

		testenv.Eventually(t, 30*time.Second, "promotion hooks", func() bool {
			n := 0
			for _, h := range hooksOf(s.hooks, f.ID) {
				if strings.HasPrefix(h.Type, "promotion.") {
					n++
					require.Contains(t, h.Data, "promotion")
				}
			}
			return n == 4 // smoke and release: started, passed
		})

		// Approving again is a conflict: the promotion is no longer running.
		code, body = s.post(t, "/api/v1/deployments/"+d.ID+"/promotions/release/approve", token, `{}`)
		require.Equal(t, http.StatusConflict, code, "%s", body)
		require.Equal(t, "conflict", testenv.ErrorCode(t, body))
	})

	t.Run("a failing script fails the flow before production", func(t *testing.T) {
		sha := s.repo.Commit("bad smoke", map[string]string{"smoke-fails": "1"})
		code, body := s.push(t, "main", sha)
		require.Equal(t, http.StatusAccepted, code, "%s", body)
		f := s.waitFlow(t, sha)
		require.Equal(t, flow.FlowFailed, f.State)
		d := f.Deployments[0]
		require.Equal(t, flow.Failed, d.State)
		require.Equal(t, flow.PromotionFailed, d.Promotions[0].State)
		require.Equal(t, flow.PromotionPending, d.Promotions[1].State)
		require.Contains(t, d.Reason, "promotion smoke failed")
		require.Equal(t, flow.NotStarted, f.Deployments[1].State)
	})
}

// TestDevRestartKeepsJetStream stops otariinae dev and starts it again on
// the same data dir: the streams and their messages are still there.
func TestDevRestartKeepsJetStream(t *testing.T) {
	r := testenv.StartRedis(t)
	dataDir := t.TempDir()
	confPath := filepath.Join(t.TempDir(), "otariinae.yaml")
	require.NoError(t, os.WriteFile(confPath, []byte("services:\n  - name: web\n    repository: acme/web\n    branches: [main]\n    deploy: ./deploy.sh\n    pipeline:\n      - environment: staging\n        targets: {agent: local}\n"), 0o600))
	cfg := dev.Config{DataDir: dataDir, DevNATSAddr: "127.0.0.1:0", RedisURL: r.URL, RedisPrefix: r.Prefix, HTTPAddr: "127.0.0.1:0", ConfigFile: confPath}
	cfg.AgentConfig.ShutdownGrace = time.Second
	run := func(check func(a dev.Addrs)) {
		ctx, cancel := context.WithCancel(context.Background())
		ready := make(chan dev.Addrs, 1)
		done := make(chan error, 1)
		go func() {
			done <- dev.Run(ctx, cfg, dev.Options{Version: "test", Ready: func(a dev.Addrs) { ready <- a }}, testenv.Logger(t))
		}()
		select {
		case a := <-ready:
			check(a)
		case err := <-done:
			t.Fatalf("dev exited: %v", err)
		case <-time.After(60 * time.Second):
			t.Fatal("dev not ready in 60s")
		}
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(60 * time.Second):
			t.Fatal("dev did not stop in 60s")
		}
	}
	events := func(a dev.Addrs) uint64 {
		nc, err := nats.Connect(a.NATS)
		require.NoError(t, err)
		defer nc.Close()
		js, err := jetstream.New(nc)
		require.NoError(t, err)
		var n uint64
		testenv.Eventually(t, 30*time.Second, "EVENTS stream", func() bool {
			s, err := js.Stream(context.Background(), wire.StreamEvents)
			if err != nil {
				return false
			}
			info, err := s.Info(context.Background())
			if err != nil {
				return false
			}
			n = info.State.Msgs
			return true
		})
		return n
	}
	var before uint64
	run(func(a dev.Addrs) {
		sha := strings.Repeat("ef", 20)
		resp, err := http.DefaultClient.Do(testenv.GitHubRequest(t, a.HTTP+"/acme/web/", "push", testenv.DeliveryID(), "", testenv.PushPayload("acme/web", "refs/heads/main", sha)))
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusAccepted, resp.StatusCode)
		before = events(a)
		require.Positive(t, before)
	})
	run(func(a dev.Addrs) {
		require.GreaterOrEqual(t, events(a), before, "the JetStream store survived the restart")
	})
}
