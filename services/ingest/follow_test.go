package ingest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// logFixture is ingest with one flow of acme/web at commit, written through
// the real store, whose state the test drives as the engine would.
type logFixture struct {
	*ghFixture
	commit string
	f      *flow.Flow
	rev    int64
	seq    int
}

func logSetup(t *testing.T) *logFixture {
	t.Helper()
	fx := &logFixture{ghFixture: ghSetup(t, ghOptions{}), commit: strings.Repeat("c3", 20)}
	fx.in.followPoll = 50 * time.Millisecond
	id := flow.FlowID("acme:web", fx.commit, "web")
	now := time.Now().UTC()
	fx.f = &flow.Flow{
		ID: id, Artifact: "acme:web", Version: fx.commit, Commit: fx.commit, Ref: "refs/heads/main",
		Service: "web", Repository: "acme/web", State: flow.FlowInProgress, CreatedAt: now, UpdatedAt: now,
		Deployments: []flow.Deployment{
			{ID: flow.DeploymentID(id, "staging"), FlowID: id, Environment: "staging", State: flow.Started},
			{ID: flow.DeploymentID(id, "production"), FlowID: id, Environment: "production", State: flow.NotStarted},
		},
	}
	fx.write(t)
	return fx
}

// write stores the flow's current state.
func (fx *logFixture) write(t *testing.T) {
	t.Helper()
	fx.seq++
	c, err := fx.st.Commit(context.Background(), fx.f, fx.rev, fmt.Sprintf("test-event-%d", fx.seq), nil)
	require.NoError(t, err)
	require.NoError(t, fx.st.IndexFlow(context.Background(), fx.f))
	fx.rev = c.Rev
}

func (fx *logFixture) dep(env string) string { return flow.DeploymentID(fx.f.ID, env) }

// log publishes one output line of agent for env's deployment.
func (fx *logFixture) log(t *testing.T, env, agent, line string) {
	t.Helper()
	_, err := fx.js.Publish(context.Background(), wire.LogSubject(fx.dep(env), agent), []byte(line+"\n"))
	require.NoError(t, err)
}

// open starts a log request and returns the response; the body is closed
// when the test ends.
func (fx *logFixture) open(t *testing.T, query string, header http.Header) *http.Response {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, fx.url+"/acme/web/deployments/"+fx.commit+"/log"+query, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := fx.http.Do(req)
	require.NoError(t, err)
	t.Cleanup(func() { _ = resp.Body.Close() })
	return resp
}

// readLine reads one line with a deadline.
func readLine(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := r.ReadString('\n')
		ch <- res{s, err}
	}()
	select {
	case got := <-ch:
		require.NoError(t, got.err)
		return strings.TrimSuffix(got.s, "\n")
	case <-time.After(15 * time.Second):
		t.Fatal("no line in 15s")
		return ""
	}
}

func TestLogFollow(t *testing.T) {
	t.Parallel()
	fx := logSetup(t)
	fx.log(t, "staging", "a1", "cloning")

	resp := fx.open(t, "?follow=1", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Equal(t, "no-cache", resp.Header.Get("Cache-Control"))
	require.Equal(t, "no", resp.Header.Get("X-Accel-Buffering"))
	r := bufio.NewReader(resp.Body)
	require.Equal(t, "[staging a1] cloning", readLine(t, r), "what was there before")

	fx.log(t, "staging", "a1", "deploying")
	require.Equal(t, "[staging a1] deploying", readLine(t, r), "live")
	fx.log(t, "staging", "a2", "second agent")
	require.Equal(t, "[staging a2] second agent", readLine(t, r))

	// Staging ends, production starts: a new subject joins the stream.
	fx.log(t, "staging", "a1", "done")
	fx.f.Deployments[0].State = flow.Succeeded
	fx.f.Deployments[1].State = flow.Started
	fx.write(t)
	require.Equal(t, "[staging a1] done", readLine(t, r))
	fx.log(t, "production", "p1", "deploying to production")
	require.Equal(t, "[production p1] deploying to production", readLine(t, r))
	require.Equal(t, 1.0, testutil.ToFloat64(fx.in.m.follows))

	// The last lines, then the flow ends: the stream sends them and ends.
	fx.log(t, "production", "p1", "done")
	fx.log(t, "production", "p1", "really done")
	fx.f.Deployments[1].State = flow.Succeeded
	fx.f.State = flow.FlowSucceeded
	fx.write(t)
	rest, err := io.ReadAll(r)
	require.NoError(t, err, "the stream ends by itself")
	require.Equal(t, "[production p1] done\n[production p1] really done\n", string(rest))
	testenv.Eventually(t, 5*time.Second, "follow gauge back to 0", func() bool {
		return testutil.ToFloat64(fx.in.m.follows) == 0
	})

	t.Run("terminal flow: everything, then the end", func(t *testing.T) {
		resp := fx.open(t, "?follow=1", nil)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		require.Equal(t, strings.Join([]string{
			"[staging a1] cloning", "[staging a1] deploying", "[staging a2] second agent", "[staging a1] done",
			"[production p1] deploying to production", "[production p1] done", "[production p1] really done",
		}, "\n")+"\n", string(b))
	})

	t.Run("filters", func(t *testing.T) {
		tests := []struct {
			query string
			want  []string
		}{
			{"?environment=production", []string{"[production p1] deploying to production", "[production p1] done", "[production p1] really done"}},
			{"?agent=a2", []string{"[staging a2] second agent"}},
			{"?environment=staging&agent=a1", []string{"[staging a1] cloning", "[staging a1] deploying", "[staging a1] done"}},
			{"?environment=production&agent=a1", nil},
		}
		for _, tt := range tests {
			for _, follow := range []string{"", "&follow=1"} {
				t.Run(tt.query+follow, func(t *testing.T) {
					resp := fx.open(t, tt.query+follow, nil)
					require.Equal(t, http.StatusOK, resp.StatusCode)
					b, err := io.ReadAll(resp.Body)
					require.NoError(t, err)
					want := ""
					if len(tt.want) > 0 {
						want = strings.Join(tt.want, "\n") + "\n"
					}
					require.Equal(t, want, string(b))
				})
			}
		}
	})

	t.Run("bad filters", func(t *testing.T) {
		for query, want := range map[string]struct {
			status int
			code   string
		}{
			"?environment=qa&follow=1": {404, "deployment_not_found"},
			"?environment=qa":          {404, "deployment_not_found"},
			"?agent=a.b&follow=1":      {400, "bad_request"},
			"?environment=a%20b":       {400, "bad_request"},
		} {
			resp := fx.open(t, query, nil)
			b, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			require.Equal(t, want.status, resp.StatusCode, "%s: %s", query, b)
			require.Equal(t, want.code, testenv.ErrorCode(t, b))
		}
		resp := fx.open(t, "?follow=1", http.Header{"Accept": {"text/event-stream"}, "Last-Event-Id": {"x"}})
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	})
}

// sseEvent is one server-sent event.
type sseEvent struct {
	id   string
	data []string
}

// readEvents parses an SSE body until it ends, skipping comments.
func readEvents(t *testing.T, r io.Reader) ([]sseEvent, int) {
	t.Helper()
	var out []sseEvent
	var cur sseEvent
	pings := 0
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if cur.id != "" || len(cur.data) > 0 {
				out = append(out, cur)
			}
			cur = sseEvent{}
		case strings.HasPrefix(line, ":"):
			pings++
		case strings.HasPrefix(line, "id: "):
			cur.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			cur.data = append(cur.data, strings.TrimPrefix(line, "data: "))
		default:
			t.Fatalf("unexpected SSE line %q", line)
		}
	}
	require.NoError(t, sc.Err())
	return out, pings
}

func TestLogFollowSSE(t *testing.T) {
	t.Parallel()
	fx := logSetup(t)
	fx.in.followPing = 50 * time.Millisecond
	sse := http.Header{"Accept": {"text/event-stream"}}
	fx.log(t, "staging", "a1", "one")

	resp := fx.open(t, "?follow=1", sse)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	require.Equal(t, "no-cache", resp.Header.Get("Cache-Control"))
	require.Equal(t, "no", resp.Header.Get("X-Accel-Buffering"))
	r := bufio.NewReader(resp.Body)
	require.Equal(t, "id: 1", readLine(t, r))
	require.Equal(t, "data: [staging a1] one", readLine(t, r))
	require.Equal(t, "", readLine(t, r))
	// Idle: pings keep the connection alive.
	require.Equal(t, ": ping", readLine(t, r))
	require.Equal(t, "", readLine(t, r))

	fx.log(t, "staging", "a1", "two\r")
	fx.log(t, "staging", "a1", "three")
	fx.f.Deployments[0].State = flow.Failed
	fx.f.State = flow.FlowFailed
	fx.write(t)
	events, _ := readEvents(t, r)
	require.Equal(t, []sseEvent{
		{id: "2", data: []string{"[staging a1] two"}},
		{id: "3", data: []string{"[staging a1] three"}},
	}, events)

	// A reconnecting EventSource resumes after Last-Event-ID.
	resume := sse.Clone()
	resume.Set("Last-Event-ID", "1")
	resp = fx.open(t, "?follow=1", resume)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	events, _ = readEvents(t, resp.Body)
	require.Equal(t, []string{"2", "3"}, []string{events[0].id, events[1].id})
	require.Len(t, events, 2)
}

func TestLogFollowClientGoesAway(t *testing.T) {
	t.Parallel()
	fx := logSetup(t)
	fx.log(t, "staging", "a1", "one")
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fx.url+"/acme/web/deployments/"+fx.commit+"/log?follow=1", nil)
	require.NoError(t, err)
	resp, err := fx.http.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, "[staging a1] one", readLine(t, bufio.NewReader(resp.Body)))
	require.Equal(t, 1.0, testutil.ToFloat64(fx.in.m.follows))
	cancel()
	testenv.Eventually(t, 10*time.Second, "the stream to stop", func() bool {
		return testutil.ToFloat64(fx.in.m.follows) == 0
	})
}
