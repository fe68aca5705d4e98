package main_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/services/ingest"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "otariinae-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "otariinae")
	out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build otariinae: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// proc is one otariinae process.
type proc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs []string
	http chan string
	done chan error
}

// start runs `otariinae <cmd>` with exactly env (plus PATH and HOME), and
// stops it with SIGTERM when the test ends, asserting a clean exit.
func start(t *testing.T, name string, env ...string) *proc {
	t.Helper()
	cmd := exec.Command(binary, name)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "OTARIINAE_LOG_FORMAT=json", "OTARIINAE_HTTP_ADDR=127.0.0.1:0"}, env...)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	p := &proc{cmd: cmd, http: make(chan string, 1), done: make(chan error, 1)}
	require.NoError(t, cmd.Start())
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs = append(p.logs, line)
			p.mu.Unlock()
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == "serving" {
				p.http <- rec["http"].(string)
			}
		}
		p.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			require.NoError(t, err, "%s exit; logs:\n%s", name, p.log())
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("%s did not stop within 30s of SIGTERM; logs:\n%s", name, p.log())
		}
	})
	return p
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.logs, "\n")
}

func (p *proc) addr(t *testing.T) string {
	t.Helper()
	select {
	case a := <-p.http:
		return a
	case err := <-p.done:
		t.Fatalf("exited before serving: %v\n%s", err, p.log())
	case <-time.After(30 * time.Second):
		t.Fatalf("not serving after 30s:\n%s", p.log())
	}
	return ""
}

func get(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, b
}

// TestProductionTopology runs every service as its own process against an
// external NATS and Redis; the agent is given only a NATS URL.
func TestProductionTopology(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	r := testenv.StartRedis(t)
	repo := testenv.NewGitRepo(t)
	out := t.TempDir()
	sha := repo.Commit("deploy", map[string]string{"deploy.sh": "#!/bin/sh\necho \"deployed $OTARIINAE_COMMIT to $OTARIINAE_ENVIRONMENT on $OTARIINAE_AGENT_ID\"\ntouch \"$OUT/$OTARIINAE_ENVIRONMENT\"\n"})
	secret := config.NewSecret()
	hooks := testenv.NewHookReceiver(t, secret)
	confPath := filepath.Join(t.TempDir(), "otariinae.yaml")
	require.NoError(t, os.WriteFile(confPath, []byte(fmt.Sprintf(`
services:
  - name: web
    repository: acme/web
    git_url: %s
    branches: [main]
    deploy: ./deploy.sh
    pipeline:
      - environment: staging
        targets: {env: staging}
        env: {OUT: %q}
      - environment: production
        targets: {env: production}
        env: {OUT: %q}
webhooks:
  - name: test
    url: %s
    secret: %s
`, repo.URL(), out, out, hooks.URL, secret)), 0o600))

	common := []string{"OTARIINAE_NATS_URL=" + n.URL, "OTARIINAE_REDIS_URL=" + r.URL, "OTARIINAE_REDIS_PREFIX=" + r.Prefix, "OTARIINAE_CONFIG=" + confPath}
	ing := start(t, "ingest", append(common, "OTARIINAE_GITHUB_WEBHOOK_SECRET=s3cret")...)
	eng := start(t, "engine", common...)
	disp := start(t, "dispatcher", append(common, "OTARIINAE_HOOKS_ALLOW_NETWORKS=127.0.0.0/8")...)
	agents := []*proc{
		start(t, "agent", "OTARIINAE_NATS_URL="+n.URL, "OTARIINAE_AGENT_ID=stg-1", "OTARIINAE_AGENT_LABELS=env=staging", "OTARIINAE_AGENT_WORKDIR="+t.TempDir(), "OTARIINAE_AGENT_HEARTBEAT_INTERVAL=200ms"),
		start(t, "agent", "OTARIINAE_NATS_URL="+n.URL, "OTARIINAE_AGENT_ID=prd-1", "OTARIINAE_AGENT_LABELS=env=production", "OTARIINAE_AGENT_WORKDIR="+t.TempDir(), "OTARIINAE_AGENT_HEARTBEAT_INTERVAL=200ms"),
	}
	api := ing.addr(t)
	for _, p := range append([]*proc{eng, disp}, agents...) {
		base := p.addr(t)
		testenv.Eventually(t, 30*time.Second, base+"/readyz", func() bool {
			code, _ := get(t, base+"/readyz")
			return code == http.StatusOK
		})
	}
	testenv.Eventually(t, 30*time.Second, "agents registered", func() bool {
		return agentsKnown(t, r, 2)
	})

	body := testenv.PushPayload("acme/web", "refs/heads/main", sha)
	resp, err := http.DefaultClient.Do(testenv.GitHubRequest(t, api+"/acme/web/", "push", testenv.DeliveryID(), "s3cret", body))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)

	var got ingest.CommitDeployments
	testenv.Eventually(t, 60*time.Second, "flow succeeded", func() bool {
		code, b := get(t, api+"/acme/web/deployments/"+sha)
		if code != http.StatusOK {
			return false
		}
		require.NoError(t, json.Unmarshal(b, &got))
		return got.Flows[0].State.Terminal()
	})
	f := got.Flows[0]
	require.Equal(t, flow.FlowSucceeded, f.State, "%+v", f)
	require.Equal(t, "stg-1", f.Deployments[0].Jobs[0].AgentID)
	require.Equal(t, "prd-1", f.Deployments[1].Jobs[0].AgentID)
	require.FileExists(t, filepath.Join(out, "staging"))
	require.FileExists(t, filepath.Join(out, "production"))
	_, logBody := get(t, api+"/acme/web/deployments/"+sha+"/log")
	require.Contains(t, string(logBody), "[staging stg-1] deployed "+sha+" to staging on stg-1")
	require.Contains(t, string(logBody), "[production prd-1] deployed "+sha+" to production on prd-1")
	testenv.Eventually(t, 30*time.Second, "flow.succeeded hook", func() bool {
		for _, h := range hooks.Hooks() {
			if h.Type == "flow.succeeded" {
				return true
			}
		}
		return false
	})
	require.Zero(t, hooks.Failed())
}

func agentsKnown(t *testing.T, r *testenv.Redis, n int) bool {
	t.Helper()
	got, err := r.Client.HLen(context.Background(), r.Prefix+"agents").Result()
	return err == nil && got >= int64(n)
}

func TestHelpListsEnvironment(t *testing.T) {
	t.Parallel()
	for cmd, vars := range map[string][]string{
		"ingest":     {"OTARIINAE_NATS_URL", "OTARIINAE_REDIS_URL", "OTARIINAE_HTTP_ADDR", "OTARIINAE_CONFIG", "OTARIINAE_GITHUB_WEBHOOK_SECRET", "127.0.0.1:8080"},
		"engine":     {"OTARIINAE_NATS_URL", "OTARIINAE_REDIS_URL", "OTARIINAE_AGENT_LOST_AFTER"},
		"dispatcher": {"OTARIINAE_HOOKS_ALLOW_NETWORKS", "OTARIINAE_REDIS_PREFIX"},
		"agent":      {"OTARIINAE_NATS_URL", "OTARIINAE_AGENT_ID", "OTARIINAE_AGENT_LABELS", "OTARIINAE_AGENT_WORKDIR"},
		"dev":        {"OTARIINAE_DATA_DIR", "./.otariinae", "OTARIINAE_DEV_NATS_ADDR", "127.0.0.1:0", "OTARIINAE_AGENT_LABELS"},
	} {
		out, err := exec.Command(binary, cmd, "--help").CombinedOutput()
		require.NoError(t, err, cmd)
		for _, v := range vars {
			require.Contains(t, string(out), v, "%s --help", cmd)
		}
	}
	out, err := exec.Command(binary, "agent", "--help").CombinedOutput()
	require.NoError(t, err)
	require.NotContains(t, string(out), "REDIS", "agents never need Redis")
}

func TestInvalidConfigStopsAtStart(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(path, []byte("services:\n  - name: web\n    repository: acme/web\n    branches: [main]\n    deploy: ./deploy.sh\n    pipeline:\n      - environment: staging\n        targets: {}\n"), 0o600))
	cmd := exec.Command(binary, "engine")
	cmd.Env = []string{"OTARIINAE_CONFIG=" + path, "OTARIINAE_NATS_URL=nats://127.0.0.1:1", "OTARIINAE_HTTP_ADDR=127.0.0.1:0"}
	out, err := cmd.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "services[0] (web).pipeline[0].targets")

	out, err = exec.Command(binary, "config", "validate", path).CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "targets")

	require.NoError(t, os.WriteFile(path, []byte("services: []\nwebhoks: []\n"), 0o600))
	out, err = exec.Command(binary, "config", "validate", path).CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "line 2: field webhoks not found")
}

// TestSIGHUPReloadsConfig changes the file under a running ingest and
// signals it: a valid file takes effect, an invalid one is refused and the
// config in force stays.
func TestSIGHUPReloadsConfig(t *testing.T) {
	t.Parallel()
	n := testenv.StartNATS(t)
	r := testenv.StartRedis(t)
	confPath := filepath.Join(t.TempDir(), "otariinae.yaml")
	svc := func(name string) string {
		return fmt.Sprintf("  - name: %s\n    repository: acme/%s\n    branches: [main]\n    deploy: ./deploy.sh\n    pipeline:\n      - environment: staging\n        targets: {env: staging}\n", name, name)
	}
	require.NoError(t, os.WriteFile(confPath, []byte("services:\n"+svc("web")), 0o600))
	ing := start(t, "ingest", "OTARIINAE_NATS_URL="+n.URL, "OTARIINAE_REDIS_URL="+r.URL, "OTARIINAE_REDIS_PREFIX="+r.Prefix, "OTARIINAE_CONFIG="+confPath)
	api := ing.addr(t)
	services := func() string {
		code, b := get(t, api+"/api/v1/services")
		require.Equal(t, http.StatusOK, code, "%s", b)
		return string(b)
	}
	require.NotContains(t, services(), `"api"`)

	require.NoError(t, os.WriteFile(confPath, []byte("services:\n"+svc("web")+svc("api")), 0o600))
	require.NoError(t, ing.cmd.Process.Signal(syscall.SIGHUP))
	testenv.Eventually(t, 20*time.Second, "service api after SIGHUP", func() bool { return strings.Contains(services(), `"api"`) })

	require.NoError(t, os.WriteFile(confPath, []byte("services:\n  - name: BAD\n"), 0o600))
	require.NoError(t, ing.cmd.Process.Signal(syscall.SIGHUP))
	testenv.Eventually(t, 20*time.Second, "reload failure logged", func() bool { return strings.Contains(ing.log(), "config reload failed") })
	require.Contains(t, services(), `"api"`, "the config in force stays")
}
