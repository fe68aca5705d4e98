package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

const libSecret = "lib's own secret"

var (
	sha1 = strings.Repeat("a1", 20)
	sha2 = strings.Repeat("b2", 20)
)

func deletedPush(repo, ref string) []byte {
	var p map[string]any
	_ = json.Unmarshal(testenv.PushPayload(repo, ref, strings.Repeat("0", 40)), &p)
	p["deleted"] = true
	b, _ := json.Marshal(p)
	return b
}

// formRequest sends body as GitHub's form-encoded content type does:
// payload=<url-encoded JSON>, signed over the raw form body.
func formRequest(t *testing.T, u, event, delivery, secret string, payload []byte) *http.Request {
	t.Helper()
	body := []byte(url.Values{"payload": {string(payload)}}.Encode())
	req := testenv.GitHubRequest(t, u, event, delivery, secret, body)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return req
}

func TestGitHubDeliveries(t *testing.T) {
	t.Parallel()
	fx := ghSetup(t, ghOptions{})
	web, lib := fx.url+"/acme/web/", fx.url+"/acme/lib/"
	pushMain := testenv.PushPayload("acme/web", "refs/heads/main", sha1)

	tests := []struct {
		name      string
		req       func(delivery string) *http.Request
		status    int
		published string // subject published, "" for nothing
		code      string // error code, or "" for a 2xx
		ignored   string // part of the "ignored" reason
	}{
		{name: "push to a tracked branch, JSON", status: 202, published: wire.GitHubSubject("push"),
			req: func(d string) *http.Request { return testenv.GitHubRequest(t, web, "push", d, ghSecret, pushMain) }},
		{name: "push to a tracked branch, form-encoded", status: 202, published: wire.GitHubSubject("push"),
			req: func(d string) *http.Request { return formRequest(t, web, "push", d, ghSecret, pushMain) }},
		{name: "form-encoded, signature of the JSON only", status: 401, code: "invalid_signature",
			req: func(d string) *http.Request {
				r := formRequest(t, web, "push", d, ghSecret, pushMain)
				r.Header.Set("X-Hub-Signature-256", testenv.SignGitHub(ghSecret, pushMain))
				return r
			}},
		{name: "per-repository secret", status: 202, published: wire.GitHubSubject("push"),
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, lib, "push", d, libSecret, testenv.PushPayload("acme/lib", "refs/heads/main", sha1))
			}},
		{name: "global secret where the repository has its own", status: 401, code: "invalid_signature",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, lib, "push", d, ghSecret, testenv.PushPayload("acme/lib", "refs/heads/main", sha1))
			}},
		{name: "wrong signature", status: 401, code: "invalid_signature",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, web, "push", d, "not the secret", pushMain)
			}},
		{name: "missing signature", status: 401, code: "invalid_signature",
			req: func(d string) *http.Request { return testenv.GitHubRequest(t, web, "push", d, "", pushMain) }},
		{name: "over 25 MiB", status: 413, code: "payload_too_large",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, web, "push", d, ghSecret, bytes.Repeat([]byte{' '}, MaxBody+1))
			}},
		{name: "malformed JSON", status: 400, code: "bad_request",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, web, "push", d, ghSecret, []byte(`{"ref": "refs/heads/main", "after": `))
			}},
		{name: "form-encoded without payload", status: 400, code: "bad_request",
			req: func(d string) *http.Request {
				r := testenv.GitHubRequest(t, web, "push", d, ghSecret, []byte("other=1"))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				return r
			}},
		{name: "push without a commit", status: 400, code: "bad_request",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, web, "push", d, ghSecret, testenv.PushPayload("acme/web", "refs/heads/main", "nope"))
			}},
		{name: "unknown repository", status: 404, code: "repository_not_configured",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, fx.url+"/acme/unknown/", "push", d, ghSecret, testenv.PushPayload("acme/unknown", "refs/heads/main", sha1))
			}},
		{name: "missing delivery id", status: 400, code: "bad_request",
			req: func(string) *http.Request { return testenv.GitHubRequest(t, web, "push", "", ghSecret, pushMain) }},
		{name: "missing event", status: 400, code: "bad_request",
			req: func(d string) *http.Request { return testenv.GitHubRequest(t, web, "", d, ghSecret, pushMain) }},
		{name: "wrong content type", status: 415, code: "unsupported_media_type",
			req: func(d string) *http.Request {
				r := testenv.GitHubRequest(t, web, "push", d, ghSecret, pushMain)
				r.Header.Set("Content-Type", "text/plain")
				return r
			}},
		{name: "untracked branch", status: 202, ignored: "feature/x is not tracked",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, web, "push", d, ghSecret, testenv.PushPayload("acme/web", "refs/heads/feature/x", sha1))
			}},
		{name: "deleted branch", status: 202, ignored: "branch main was deleted",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, web, "push", d, ghSecret, deletedPush("acme/web", "refs/heads/main"))
			}},
		{name: "tag push, tags enabled", status: 202, published: wire.GitHubSubject("push"),
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, lib, "push", d, libSecret, testenv.PushPayload("acme/lib", "refs/tags/v1.2.0", sha1))
			}},
		{name: "deleted tag", status: 202, ignored: "tag v1.2.0 was deleted",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, lib, "push", d, libSecret, deletedPush("acme/lib", "refs/tags/v1.2.0"))
			}},
		{name: "tag push, tags not enabled", status: 202, ignored: "tag pushes are not enabled",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, web, "push", d, ghSecret, testenv.PushPayload("acme/web", "refs/tags/v1.2.0", sha1))
			}},
		{name: "pull request opened", status: 202, published: wire.GitHubSubject("pull_request"),
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, lib, "pull_request", d, libSecret, testenv.PullRequestPayload("acme/lib", "opened", sha2))
			}},
		{name: "pull request synchronize, form-encoded", status: 202, published: wire.GitHubSubject("pull_request"),
			req: func(d string) *http.Request {
				return formRequest(t, lib, "pull_request", d, libSecret, testenv.PullRequestPayload("acme/lib", "synchronize", sha2))
			}},
		{name: "pull request reopened", status: 202, published: wire.GitHubSubject("pull_request"),
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, lib, "pull_request", d, libSecret, testenv.PullRequestPayload("acme/lib", "reopened", sha2))
			}},
		{name: "pull request closed", status: 202, ignored: "action closed does not deploy",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, lib, "pull_request", d, libSecret, testenv.PullRequestPayload("acme/lib", "closed", sha2))
			}},
		{name: "pull request, not enabled", status: 202, ignored: "pull request deployments are not enabled",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, web, "pull_request", d, ghSecret, testenv.PullRequestPayload("acme/web", "opened", sha2))
			}},
		{name: "pull request without head sha", status: 400, code: "bad_request",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, lib, "pull_request", d, libSecret, testenv.PullRequestPayload("acme/lib", "opened", ""))
			}},
		{name: "other event", status: 202, ignored: "event issues is not handled",
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, web, "issues", d, ghSecret, []byte(`{"action":"opened"}`))
			}},
		{name: "ping", status: 200,
			req: func(d string) *http.Request {
				return testenv.GitHubRequest(t, web, "ping", d, ghSecret, []byte(`{"zen":"Keep it logically awesome.","hook_id":1}`))
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Not parallel: each case counts what EVENTS holds.
			delivery := testenv.DeliveryID()
			before := fx.events(t)
			resp, body := fx.do(t, tt.req(delivery))
			require.Equal(t, tt.status, resp.StatusCode, "%s", body)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			state, err := fx.st.DeliveryState(context.Background(), delivery)
			require.NoError(t, err)
			if tt.code != "" {
				require.Equal(t, tt.code, testenv.ErrorCode(t, body))
				require.Equal(t, before, fx.events(t), "nothing published")
				require.Equal(t, store.DeliveryUnknown, state, "a refused delivery leaves no record")
				return
			}
			got := ghBody(t, body)
			if tt.published == "" {
				require.Equal(t, before, fx.events(t), "nothing published")
				if tt.ignored != "" {
					require.Contains(t, got["ignored"], tt.ignored)
				}
				require.Equal(t, store.DeliveryIgnored, state, "the repair loop must know it reached us")
				return
			}
			require.Equal(t, before+1, fx.events(t))
			require.Equal(t, delivery, got["delivery"])
			require.Equal(t, store.DeliveryPublished, state)
			m := fx.lastEvent(t)
			require.Equal(t, tt.published, m.Subject)
			require.Equal(t, delivery, m.Header.Get(wire.HeaderMsgID))
			require.Equal(t, delivery, m.Header.Get(wire.HeaderDelivery))
			require.Equal(t, strings.TrimPrefix(tt.published, wire.SubjectGitHubPrefix), m.Header.Get(wire.HeaderGitHubEvent))
			require.NotEmpty(t, m.Header.Get(wire.HeaderRepository))
			require.NotEmpty(t, m.Header.Get(wire.HeaderReceivedAt))
			require.True(t, json.Valid(m.Data), "the JSON payload is published, also for form-encoded deliveries")
		})
	}
}

func TestGitHubUnsignedWithoutSecret(t *testing.T) {
	t.Parallel()
	fx := ghSetup(t, ghOptions{})
	fx.in.cfg.GitHubWebhookSecret = "" // web has no secret of its own
	req := testenv.GitHubRequest(t, fx.url+"/acme/web/", "push", testenv.DeliveryID(), "", testenv.PushPayload("acme/web", "refs/heads/main", sha1))
	resp, body := fx.do(t, req)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "%s", body)
	// lib still has its own secret: its deliveries must be signed.
	req = testenv.GitHubRequest(t, fx.url+"/acme/lib/", "push", testenv.DeliveryID(), "", testenv.PushPayload("acme/lib", "refs/heads/main", sha1))
	resp, body = fx.do(t, req)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s", body)
}

func TestGitHubDuplicates(t *testing.T) {
	t.Parallel()
	fx := ghSetup(t, ghOptions{})
	ctx := context.Background()
	push := func(delivery string) (int, map[string]any) {
		req := testenv.GitHubRequest(t, fx.url+"/acme/web/", "push", delivery, ghSecret, testenv.PushPayload("acme/web", "refs/heads/main", sha1))
		resp, body := fx.do(t, req)
		return resp.StatusCode, ghBody(t, body)
	}

	t.Run("inside the JetStream window", func(t *testing.T) {
		d := testenv.DeliveryID()
		before := fx.events(t)
		code, _ := push(d)
		require.Equal(t, http.StatusAccepted, code)
		code, body := push(d)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, true, body["duplicate"])
		require.Equal(t, d, body["delivery"])
		require.Equal(t, "push", body["event"])
		require.Equal(t, before+1, fx.events(t))
	})

	t.Run("outside the JetStream window", func(t *testing.T) {
		// Days later JetStream has forgotten the id; only Redis knows it.
		d := testenv.DeliveryID()
		require.NoError(t, fx.st.RecordDelivery(ctx, d))
		before := fx.events(t)
		code, body := push(d)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, true, body["duplicate"])
		require.Equal(t, before, fx.events(t), "nothing published")
	})

	t.Run("JetStream knows it, Redis lost it", func(t *testing.T) {
		d := testenv.DeliveryID()
		code, _ := push(d)
		require.Equal(t, http.StatusAccepted, code)
		require.NoError(t, fx.st.Client().Del(ctx, store.Keys{Prefix: prefixOfStore(t, fx)}.Delivery(d)).Err())
		before := fx.events(t)
		code, body := push(d)
		require.Equal(t, http.StatusOK, code)
		require.Equal(t, true, body["duplicate"])
		require.Equal(t, before, fx.events(t))
		seen, err := fx.st.DeliverySeen(ctx, d)
		require.NoError(t, err)
		require.True(t, seen, "recorded again")
	})

	t.Run("ignored before, deploys after a config change", func(t *testing.T) {
		d := testenv.DeliveryID()
		require.NoError(t, fx.st.RecordIgnored(ctx, d))
		before := fx.events(t)
		code, _ := push(d)
		require.Equal(t, http.StatusAccepted, code)
		require.Equal(t, before+1, fx.events(t))
	})

	t.Run("concurrent copies publish once", func(t *testing.T) {
		d := testenv.DeliveryID()
		before := fx.events(t)
		codes := make(chan int, 8)
		for range 8 {
			go func() {
				req := testenv.GitHubRequest(t, fx.url+"/acme/web/", "push", d, ghSecret, testenv.PushPayload("acme/web", "refs/heads/main", sha1))
				resp, err := fx.http.Do(req)
				if err != nil {
					codes <- 0
					return
				}
				resp.Body.Close()
				codes <- resp.StatusCode
			}()
		}
		accepted := 0
		for range 8 {
			c := <-codes
			require.Contains(t, []int{200, 202}, c)
			if c == 202 {
				accepted++
			}
		}
		require.Equal(t, 1, accepted)
		require.Equal(t, before+1, fx.events(t))
	})
}

// prefixOfStore finds the test Redis prefix through a key the store wrote.
func prefixOfStore(t *testing.T, fx *ghFixture) string {
	t.Helper()
	require.NoError(t, fx.st.RecordIgnored(context.Background(), "prefix-probe"))
	keys, err := fx.st.Client().Keys(context.Background(), "*delivery:prefix-probe").Result()
	require.NoError(t, err)
	require.Len(t, keys, 1)
	return strings.TrimSuffix(keys[0], "delivery:prefix-probe")
}

func TestGitHubRedisDown(t *testing.T) {
	t.Parallel()
	// A Redis that is not there: connections are refused at once.
	down, err := store.Open("unix://"+t.TempDir()+"/no-redis.sock", "x:")
	require.NoError(t, err)
	t.Cleanup(func() { _ = down.Close() })
	fx := ghSetup(t, ghOptions{store: down})
	before := fx.events(t)
	req := testenv.GitHubRequest(t, fx.url+"/acme/web/", "push", testenv.DeliveryID(), ghSecret, testenv.PushPayload("acme/web", "refs/heads/main", sha1))
	resp, body := fx.do(t, req)
	require.Equal(t, http.StatusAccepted, resp.StatusCode, "GitHub never retries: never refuse for Redis: %s", body)
	require.Equal(t, before+1, fx.events(t))
	require.Equal(t, 2.0, testutil.ToFloat64(fx.in.m.dedupeErrors), "the read and the write failed")
}
