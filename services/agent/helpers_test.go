package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// waitLong bounds every wait for something the agent does; nothing is
// asserted about how long it takes.
const waitLong = 60 * time.Second

// gitEnv makes git in tests independent of the machine's configuration.
func gitEnv() []string {
	return append(os.Environ(),
		"GIT_AUTHOR_NAME=otariinae test", "GIT_AUTHOR_EMAIL=test@example.invalid",
		"GIT_COMMITTER_NAME=otariinae test", "GIT_COMMITTER_EMAIL=test@example.invalid",
		"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_TERMINAL_PROMPT=0",
	)
}

func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command("git", append([]string{"-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false"}, args...)...)
	cmd.Dir = dir
	cmd.Env = gitEnv()
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "git %v: %s", args, out)
	return strings.TrimSpace(string(out))
}

// repo is a bare repository (the "remote", reached by file:// URL) and a
// work clone the test commits in.
type repo struct {
	t    *testing.T
	bare string
	work string
	URL  string
}

func newRepo(t *testing.T) *repo {
	t.Helper()
	dir := t.TempDir()
	r := &repo{t: t, bare: filepath.Join(dir, "remote.git"), work: filepath.Join(dir, "work")}
	git(t, dir, "init", "-q", "--bare", r.bare)
	git(t, dir, "init", "-q", r.work)
	r.URL = "file://" + r.bare
	return r
}

// commit writes files (name -> content, all executable), commits them and
// pushes to ref of the remote. It returns the commit's sha.
func (r *repo) commit(ref string, files map[string]string) string {
	r.t.Helper()
	for name, content := range files {
		p := filepath.Join(r.work, name)
		require.NoError(r.t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(r.t, os.WriteFile(p, []byte(content), 0o755))
	}
	git(r.t, r.work, "add", "-A")
	git(r.t, r.work, "commit", "-q", "--allow-empty", "-m", "commit")
	git(r.t, r.work, "push", "-q", "--force", r.bare, "HEAD:"+ref)
	return git(r.t, r.work, "rev-parse", "HEAD")
}

// deployScript prints what the tests check: the checked-out commit and the
// environment the agent gives it.
const deployScript = `#!/bin/sh
echo "head=$(git rev-parse HEAD)"
echo "args=$*"
echo "pwd=$(pwd)"
for v in OTARIINAE_ORG OTARIINAE_REPO OTARIINAE_COMMIT OTARIINAE_REF OTARIINAE_SERVICE \
  OTARIINAE_ENVIRONMENT OTARIINAE_DEPLOYMENT_ID OTARIINAE_FLOW_ID OTARIINAE_AGENT_ID \
  OTARIINAE_JOB_ID JOB_VAR ` + testPlainVar + ` ` + testConfigVar + `; do
  eval "echo \"$v=\${$v-<unset>}\""
done
`

// setup is one test's world: a NATS server, a repository, an agent config.
type setup struct {
	t       *testing.T
	nats    *testenv.NATS
	js      jetstream.JetStream
	repo    *repo
	cfg     Config
	reports jetstream.Consumer
	seen    []wire.JobReport
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	n := testenv.StartNATS(t)
	s := &setup{t: t, nats: n, js: n.JetStream(t), repo: newRepo(t)}
	s.cfg = Config{
		ID: "agent-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")), Labels: "env=staging,zone=a",
		Workdir: t.TempDir(), HeartbeatInterval: time.Second, ShutdownGrace: 300 * time.Millisecond,
	}
	if len(s.cfg.ID) > 128 {
		s.cfg.ID = s.cfg.ID[:128]
	}
	var err error
	s.reports, err = s.js.CreateConsumer(context.Background(), wire.StreamEvents, jetstream.ConsumerConfig{
		FilterSubject: wire.SubjectJobReport, AckPolicy: jetstream.AckNonePolicy,
	})
	require.NoError(t, err)
	return s
}

// runningAgent is an agent whose Run goroutine the test owns.
type runningAgent struct {
	*Agent
	reg    *prometheus.Registry
	cancel context.CancelFunc
	errc   chan error
	once   sync.Once
	err    error
}

// start runs an agent until stop (or the end of the test).
func (s *setup) start() *runningAgent {
	s.t.Helper()
	reg := prometheus.NewRegistry()
	a, err := New(s.cfg, s.nats.Conn(s.t), testenv.Logger(s.t), reg, "test-version")
	require.NoError(s.t, err)
	ctx, cancel := context.WithCancel(context.Background())
	ra := &runningAgent{Agent: a, reg: reg, cancel: cancel, errc: make(chan error, 1)}
	go func() { ra.errc <- a.Run(ctx) }()
	s.t.Cleanup(func() { ra.stop(s.t) })
	return ra
}

// stop cancels Run and waits for it to return.
func (ra *runningAgent) stop(t *testing.T) error {
	t.Helper()
	ra.once.Do(func() {
		ra.cancel()
		select {
		case ra.err = <-ra.errc:
		case <-time.After(waitLong):
			t.Fatalf("agent Run did not return within %s of cancel", waitLong)
		}
	})
	return ra.err
}

// job is a valid job for the setup's agent at commit.
func (s *setup) job(name, commit string) wire.Job {
	dep := "dep-" + name
	return wire.Job{
		ID: wire.JobID(dep, s.cfg.ID), Kind: wire.JobDeploy, FlowID: "flow-" + name, DeploymentID: dep,
		AgentID: s.cfg.ID, Service: "web", Environment: "staging", Org: "acme", Repo: "web",
		GitURL: s.repo.URL, Commit: commit, Ref: "refs/heads/main", Command: "./deploy.sh one two",
		Env: map[string]string{"JOB_VAR": "job value"}, Timeout: time.Minute, CreatedAt: time.Now().UTC(),
	}
}

func (s *setup) publish(j wire.Job) {
	s.t.Helper()
	s.publishOn(wire.JobSubject(j.AgentID), j)
}

func (s *setup) publishOn(subject string, j wire.Job) {
	s.t.Helper()
	data, err := json.Marshal(j)
	require.NoError(s.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = s.js.Publish(ctx, subject, data)
	require.NoError(s.t, err)
}

// report waits for the report of job in state.
func (s *setup) report(jobID string, state wire.JobState) wire.JobReport {
	s.t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		for _, r := range s.seen {
			if r.JobID == jobID && r.State == state {
				return r
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %s report for job %s within %s (seen %+v)", state, jobID, waitLong, s.seen)
		}
		batch, err := s.reports.Fetch(10, jetstream.FetchMaxWait(200*time.Millisecond))
		require.NoError(s.t, err)
		for msg := range batch.Messages() {
			var r wire.JobReport
			require.NoError(s.t, json.Unmarshal(msg.Data(), &r))
			s.seen = append(s.seen, r)
		}
	}
}

// reportsOf returns the reports seen so far for jobID.
func (s *setup) reportsOf(jobID string) []wire.JobReport {
	var out []wire.JobReport
	for _, r := range s.seen {
		if r.JobID == jobID {
			out = append(out, r)
		}
	}
	return out
}

type logLine struct {
	Stream, JobID, Text string
}

// logs reads every line stored so far for deploymentID.
func (s *setup) logs(deploymentID string) []logLine {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := s.js.CreateConsumer(ctx, wire.StreamLogs, jetstream.ConsumerConfig{
		FilterSubject: wire.LogSubjectDeployment(deploymentID), AckPolicy: jetstream.AckNonePolicy,
	})
	require.NoError(s.t, err)
	defer func() { _ = s.js.DeleteConsumer(ctx, wire.StreamLogs, cons.CachedInfo().Name) }()
	var out []logLine
	for i := 0; i < 10000; i++ {
		info, err := cons.Info(ctx)
		require.NoError(s.t, err)
		if info.NumPending == 0 && info.Delivered.Consumer == uint64(len(out)) {
			return out
		}
		batch, err := cons.Fetch(500, jetstream.FetchMaxWait(200*time.Millisecond))
		require.NoError(s.t, err)
		for msg := range batch.Messages() {
			out = append(out, logLine{
				Stream: msg.Headers().Get(wire.HeaderLogStream),
				JobID:  msg.Headers().Get(wire.HeaderJobID),
				Text:   string(msg.Data()),
			})
		}
	}
	s.t.Fatal("logs: too many rounds")
	return nil
}

// logText is all the log lines as "stream: text", one per line.
func logText(lines []logLine) string {
	var b strings.Builder
	for _, l := range lines {
		fmt.Fprintf(&b, "%s: %s\n", l.Stream, l.Text)
	}
	return b.String()
}

// waitLog waits until a line of deploymentID contains text.
func (s *setup) waitLog(deploymentID, text string) {
	s.t.Helper()
	testenv.Eventually(s.t, waitLong, "log line "+text, func() bool {
		return strings.Contains(logText(s.logs(deploymentID)), text)
	})
}

// jobsSettled reports whether the agent's job consumer has nothing pending
// or unacknowledged.
func (s *setup) jobsSettled() bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := s.js.Consumer(ctx, wire.StreamJobs, "agent-"+s.cfg.ID)
	if err != nil {
		return false
	}
	info, err := c.Info(ctx)
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0
}

// subscribeHeartbeats subscribes to the agent's heartbeats over core NATS.
func (s *setup) subscribeHeartbeats() *nats.Subscription {
	s.t.Helper()
	nc := s.nats.Conn(s.t)
	sub, err := nc.SubscribeSync(wire.HeartbeatSubject(s.cfg.ID))
	require.NoError(s.t, err)
	require.NoError(s.t, nc.Flush())
	return sub
}

// nextHeartbeat waits for a heartbeat matching ok.
func nextHeartbeat(t *testing.T, sub *nats.Subscription, ok func(wire.Heartbeat) bool) wire.Heartbeat {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for time.Now().Before(deadline) {
		msg, err := sub.NextMsg(time.Until(deadline))
		require.NoError(t, err)
		var hb wire.Heartbeat
		require.NoError(t, json.Unmarshal(msg.Data, &hb))
		if ok(hb) {
			return hb
		}
	}
	t.Fatal("no matching heartbeat")
	return wire.Heartbeat{}
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
