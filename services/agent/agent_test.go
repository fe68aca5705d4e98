package agent

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

func TestDeployClonesThenFetches(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	first := s.repo.commit("refs/heads/main", map[string]string{"deploy.sh": deployScript})
	a := s.start()

	// First job: a fresh clone, run at the exact commit.
	j1 := s.job("one", first)
	s.publish(j1)
	started := s.report(j1.ID, wire.JobStarted)
	require.Equal(t, j1.DeploymentID, started.DeploymentID)
	require.Equal(t, j1.FlowID, started.FlowID)
	require.Equal(t, s.cfg.ID, started.AgentID)
	require.Nil(t, started.ExitCode)
	fin := s.report(j1.ID, wire.JobFinished)
	require.NotNil(t, fin.ExitCode)
	require.Equal(t, 0, *fin.ExitCode, "reason %q", fin.Reason)
	require.Empty(t, fin.Reason)

	lines := s.logs(j1.DeploymentID)
	out := logText(lines)
	dir := filepath.Join(s.cfg.Workdir, "web")
	for _, want := range []string{
		"system: $ git clone --no-checkout -- " + s.repo.URL + " " + dir,
		"system: checking out " + first,
		"system: $ ./deploy.sh one two",
		"stdout: head=" + first,
		"stdout: args=one two",
		"stdout: pwd=" + dir,
		"stdout: OTARIINAE_ORG=acme",
		"stdout: OTARIINAE_REPO=web",
		"stdout: OTARIINAE_COMMIT=" + first,
		"stdout: OTARIINAE_REF=refs/heads/main",
		"stdout: OTARIINAE_SERVICE=web",
		"stdout: OTARIINAE_ENVIRONMENT=staging",
		"stdout: OTARIINAE_DEPLOYMENT_ID=" + j1.DeploymentID,
		"stdout: OTARIINAE_FLOW_ID=" + j1.FlowID,
		"stdout: OTARIINAE_AGENT_ID=" + s.cfg.ID,
		"stdout: OTARIINAE_JOB_ID=" + j1.ID,
		"stdout: JOB_VAR=job value",
		"stdout: " + testPlainVar + "=" + testPlainValue,
		"stdout: " + testConfigVar + "=<unset>", // the agent's own config never leaks
		"system: exit status 0",
	} {
		require.Contains(t, out, want+"\n")
	}
	for _, l := range lines {
		require.Equal(t, j1.ID, l.JobID)
	}

	// Litter in the checkout must not survive the next job.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "untracked.txt"), []byte("x"), 0o644))

	// Second job, new commit: the checkout is reused and fetched.
	second := s.repo.commit("refs/heads/main", map[string]string{"VERSION": "2\n"})
	j2 := s.job("two", second)
	s.publish(j2)
	fin = s.report(j2.ID, wire.JobFinished)
	require.Equal(t, 0, *fin.ExitCode, "reason %q", fin.Reason)
	out = logText(s.logs(j2.DeploymentID))
	require.NotContains(t, out, "git clone")
	require.Contains(t, out, "system: $ git -C "+dir+" fetch --prune --tags --force origin\n")
	require.Contains(t, out, "stdout: head="+second+"\n")
	require.NoFileExists(t, filepath.Join(dir, "untracked.txt"))

	// Third job: a commit on no branch (a pull request head) is fetched by sha.
	git(t, s.repo.work, "checkout", "-q", "-b", "feature")
	pr := s.repo.commit("refs/pull/1/head", map[string]string{"VERSION": "pr\n"})
	j3 := s.job("three", pr)
	s.publish(j3)
	fin = s.report(j3.ID, wire.JobFinished)
	require.Equal(t, 0, *fin.ExitCode, "reason %q", fin.Reason)
	out = logText(s.logs(j3.DeploymentID))
	require.Contains(t, out, "system: $ git -C "+dir+" fetch origin "+pr+"\n")
	require.Contains(t, out, "stdout: head="+pr+"\n")

	testenv.Eventually(t, waitLong, "jobs acknowledged", s.jobsSettled)
	require.Equal(t, 3.0, testutil.ToFloat64(a.m.jobs.WithLabelValues(resultSucceeded)))
	require.Equal(t, 0.0, testutil.ToFloat64(a.m.jobs.WithLabelValues(resultFailed)))
	require.Equal(t, 0.0, testutil.ToFloat64(a.m.running))
	n, err := testutil.GatherAndCount(a.reg, "otariinae_agent_jobs_total", "otariinae_agent_job_duration_seconds", "otariinae_agent_running_jobs")
	require.NoError(t, err)
	require.Equal(t, 4, n)
	require.NoError(t, a.stop(t))
}

func TestDeployCommandForms(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	commit := s.repo.commit("refs/heads/main", map[string]string{
		"deploy.sh":         deployScript,
		"scripts/nested.sh": "#!/bin/sh\necho nested \"$1\"\n",
		"fail.sh":           "#!/bin/sh\necho about to fail\necho 'boom: it broke' >&2\nexit 3\n",
		"daemon.sh":         "#!/bin/sh\nsleep 60 &\necho \"child=$!\"\necho started the daemon\n",
		"long.sh":           "#!/bin/sh\nhead -c 150000 /dev/zero | tr '\\0' 'x'\nprintf 'crlf\\r\\nno newline at end'\n",
	})
	s.start()

	for _, tc := range []struct {
		name, command string
		shell         bool
		code          int
		reason        string
		want          []string
		lines         int // stdout lines expected, when set
	}{
		{name: "relative", command: "./deploy.sh a", want: []string{"stdout: args=a"}},
		{name: "nested-relative", command: "scripts/nested.sh b", want: []string{"stdout: nested b"}},
		{name: "path-lookup", command: "sh -c  echo", want: []string{"system: $ sh -c  echo", "system: exit status 0"}},
		{name: "shell", command: `echo "sum=$((1+2))" && ./deploy.sh x | grep args`, shell: true,
			want: []string{"stdout: sum=3", "stdout: args=x"}},
		{name: "no-shell", command: `echo $HOME "a|b"`, want: []string{`stdout: $HOME "a|b"`}},
		{name: "nonzero", command: "./fail.sh", code: 3, reason: "exit status 3",
			want: []string{"stdout: about to fail", "stderr: boom: it broke", "system: exit status 3"}},
		{name: "missing", command: "./nope.sh", code: -1, reason: "start deploy command",
			want: []string{"system: start deploy command"}},
		{name: "background-keeps-output", command: "./daemon.sh", want: []string{
			"stdout: started the daemon\n", "system: a background process kept the output open", "system: exit status 0\n"}},
		{name: "many-lines", command: "seq 1 20000", want: []string{"stdout: 1\n", "stdout: 20000\n"}, lines: 20000},
		{name: "long-lines", command: "./long.sh", want: []string{
			"stdout: " + strings.Repeat("x", maxLine) + "\n",
			"stdout: " + strings.Repeat("x", 150000-2*maxLine) + "crlf\n",
			"stdout: no newline at end\n",
		}},
	} {
		j := s.job(tc.name, commit)
		j.Command, j.Shell = tc.command, tc.shell
		s.publish(j)
		fin := s.report(j.ID, wire.JobFinished)
		require.Equal(t, tc.code, *fin.ExitCode, "%s: reason %q", tc.name, fin.Reason)
		require.Contains(t, fin.Reason, tc.reason, tc.name)
		lines := s.logs(j.DeploymentID)
		out := logText(lines)
		for _, w := range tc.want {
			require.Contains(t, out, w, tc.name)
		}
		if tc.lines > 0 {
			n := 0
			for _, l := range lines {
				if l.Stream == streamStdout {
					n++
				}
			}
			require.Equal(t, tc.lines, n, "%s: every line stored, none dropped", tc.name)
		}
		if m := regexp.MustCompile(`stdout: child=(\d+)`).FindStringSubmatch(out); m != nil {
			// A daemon left behind on purpose: the test cleans it up.
			pid, err := strconv.Atoi(m[1])
			require.NoError(t, err)
			require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
		}
	}
}

func TestTimeoutKillsProcessGroup(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	// The script and its child ignore SIGTERM, so only the group SIGKILL
	// that follows the grace period ends them.
	commit := s.repo.commit("refs/heads/main", map[string]string{
		"hang.sh": "#!/bin/sh\ntrap '' TERM\nsleep 60 &\necho \"child=$!\"\nwait\n",
	})
	s.start()
	j := s.job("hang", commit)
	j.Command, j.Timeout = "./hang.sh", 500*time.Millisecond
	s.publish(j)
	fin := s.report(j.ID, wire.JobFinished)
	require.Equal(t, -1, *fin.ExitCode)
	require.Contains(t, fin.Reason, "timed out after 500ms")

	out := logText(s.logs(j.DeploymentID))
	require.Contains(t, out, "system: timed out after 500ms\n")
	m := regexp.MustCompile(`stdout: child=(\d+)`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	pid, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	testenv.Eventually(t, waitLong, "the script's child to be killed", func() bool { return !alive(pid) })
}

func TestSecretsRedacted(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	commit := s.repo.commit("refs/heads/main", map[string]string{
		"leak.sh": "#!/bin/sh\necho \"secret=$" + testSecretVar + " again $" + testSecretVar + "\"\n" +
			"echo \"token=$JOB_TOKEN\" >&2\necho \"plain=$" + testPlainVar + "\"\n",
	})
	s.start()
	j := s.job("leak", commit)
	j.Command = "./leak.sh"
	j.Env = map[string]string{"JOB_TOKEN": "tok-123456"}
	j.Secrets = []string{testSecretVar, "JOB_TOKEN", "AGENT_TEST_UNSET_SECRET"}
	s.publish(j)
	fin := s.report(j.ID, wire.JobFinished)
	require.Equal(t, 0, *fin.ExitCode, fin.Reason)
	out := logText(s.logs(j.DeploymentID))
	require.NotContains(t, out, testSecretValue)
	require.NotContains(t, out, "tok-123456")
	require.Contains(t, out, "stdout: secret=[REDACTED] again [REDACTED]\n")
	require.Contains(t, out, "stderr: token=[REDACTED]\n")
	require.Contains(t, out, "stdout: plain="+testPlainValue+"\n")
}

func TestInvalidJobsRejected(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	commit := s.repo.commit("refs/heads/main", map[string]string{"deploy.sh": deployScript})
	a := s.start()

	for _, tc := range []struct {
		name   string
		mutate func(*wire.Job)
		want   string
	}{
		{"commit-option", func(j *wire.Job) { j.Commit = "--upload-pack=touch /tmp/pwned" }, "commit"},
		{"commit-ref", func(j *wire.Job) { j.Commit = "HEAD" }, "commit"},
		{"commit-upper", func(j *wire.Job) { j.Commit = strings.ToUpper(commit) }, "commit"},
		{"commit-short", func(j *wire.Job) { j.Commit = commit[:12] }, "commit"},
		{"url-option", func(j *wire.Job) { j.GitURL = "--upload-pack=touch /tmp/pwned" }, "git_url"},
		{"service-path", func(j *wire.Job) { j.Service = "../escape" }, "service"},
		{"command-empty", func(j *wire.Job) { j.Command = "  " }, "command"},
		{"env-name", func(j *wire.Job) { j.Env = map[string]string{"A=B": "c"} }, "env"},
	} {
		j := s.job(tc.name, commit)
		j.Service = "svc-" + tc.name
		tc.mutate(&j)
		s.publish(j)
		fin := s.report(j.ID, wire.JobFinished)
		require.Equal(t, -1, *fin.ExitCode, tc.name)
		require.Contains(t, fin.Reason, "rejected", tc.name)
		require.Contains(t, fin.Reason, tc.want, tc.name)
		require.Len(t, s.reportsOf(j.ID), 1, "%s: no started report", tc.name)
		require.Empty(t, s.logs(j.DeploymentID), "%s: nothing ran", tc.name)
	}
	// Nothing was ever checked out.
	entries, err := os.ReadDir(s.cfg.Workdir)
	require.NoError(t, err)
	require.Empty(t, entries)

	// A job addressed to another agent is dropped without a report, and the
	// queue moves on to the next job.
	other := s.job("other", commit)
	other.AgentID = "someone-else"
	s.publishOn(wire.JobSubject(s.cfg.ID), other)
	ok := s.job("ok", commit)
	s.publish(ok)
	fin := s.report(ok.ID, wire.JobFinished)
	require.Equal(t, 0, *fin.ExitCode, fin.Reason)
	require.Empty(t, s.reportsOf(other.ID))
	testenv.Eventually(t, waitLong, "jobs acknowledged", s.jobsSettled)
	require.Equal(t, 8.0, testutil.ToFloat64(a.m.jobs.WithLabelValues(resultFailed)))
}

func TestHeartbeats(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	s.cfg.Labels = "env=prod,agent=spoofed,hostname=override"
	sub := s.subscribeHeartbeats()
	a := s.start()

	hb := nextHeartbeat(t, sub, func(wire.Heartbeat) bool { return true })
	require.Equal(t, s.cfg.ID, hb.ID)
	require.Equal(t, "idle", hb.State)
	require.Equal(t, 0, hb.Jobs)
	require.Equal(t, "test-version", hb.Version)
	host, err := os.Hostname()
	require.NoError(t, err)
	require.Equal(t, host, hb.Hostname)
	require.Equal(t, map[string]string{"env": "prod", "agent": s.cfg.ID, "hostname": "override"}, hb.Labels)
	require.WithinDuration(t, time.Now(), hb.At, time.Minute)

	// Periodic: another idle one follows.
	nextHeartbeat(t, sub, func(h wire.Heartbeat) bool { return h.State == "idle" && h.At.After(hb.At) })

	// Busy while a job runs.
	commit := s.repo.commit("refs/heads/main", map[string]string{"wait.sh": "#!/bin/sh\necho ready\nsleep 60\n"})
	j := s.job("busy", commit)
	j.Command = "./wait.sh"
	s.publish(j)
	busy := nextHeartbeat(t, sub, func(h wire.Heartbeat) bool { return h.State == "busy" })
	require.Equal(t, 1, busy.Jobs)

	require.NoError(t, a.stop(t))
	nextHeartbeat(t, sub, func(h wire.Heartbeat) bool { return h.State == "draining" })
}

func TestShutdownStopsRunningJob(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	commit := s.repo.commit("refs/heads/main", map[string]string{
		"wait.sh": "#!/bin/sh\nsleep 60 &\necho \"child=$!\"\nwait\n",
	})
	a := s.start()
	j := s.job("stop", commit)
	j.Command = "./wait.sh"
	s.publish(j)
	s.report(j.ID, wire.JobStarted)
	s.waitLog(j.DeploymentID, "stdout: child=")

	require.NoError(t, a.stop(t))
	fin := s.report(j.ID, wire.JobFinished)
	require.Equal(t, -1, *fin.ExitCode)
	require.Equal(t, "agent stopped", fin.Reason)
	require.True(t, s.jobsSettled(), "the stopped job is acknowledged, not redelivered")

	out := logText(s.logs(j.DeploymentID))
	require.Contains(t, out, "system: agent stopped\n")
	m := regexp.MustCompile(`stdout: child=(\d+)`).FindStringSubmatch(out)
	require.NotNil(t, m, out)
	pid, err := strconv.Atoi(m[1])
	require.NoError(t, err)
	testenv.Eventually(t, waitLong, "the script's child to be killed", func() bool { return !alive(pid) })
}

func TestShutdownLetsShortJobFinish(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	s.cfg.ShutdownGrace = 30 * time.Second
	commit := s.repo.commit("refs/heads/main", map[string]string{
		// Finishes on its own once the test lets it.
		"gate.sh": "#!/bin/sh\necho ready\nwhile [ ! -e \"$GATE\" ]; do sleep 0.05; done\necho done\n",
	})
	gate := filepath.Join(t.TempDir(), "gate")
	sub := s.subscribeHeartbeats()
	a := s.start()
	j := s.job("gate", commit)
	j.Command, j.Env = "./gate.sh", map[string]string{"GATE": gate}
	s.publish(j)
	s.waitLog(j.DeploymentID, "stdout: ready")

	// Stop the agent; once it says it is draining, let the job end by itself.
	a.cancel()
	nextHeartbeat(t, sub, func(h wire.Heartbeat) bool { return h.State == "draining" })
	require.NoError(t, os.WriteFile(gate, nil, 0o644))
	require.NoError(t, a.stop(t))
	fin := s.report(j.ID, wire.JobFinished)
	require.Equal(t, 0, *fin.ExitCode, fin.Reason)
	require.Contains(t, logText(s.logs(j.DeploymentID)), "stdout: done\n")
	require.True(t, s.jobsSettled())
}

// TestStartStop starts and stops agents on one consumer in a row, idle:
// each Run returns nil and leaves nothing running (goleak checks).
func TestStartStop(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	for i := 0; i < 5; i++ {
		a := s.start()
		if i%2 == 0 {
			// Sometimes stop before the agent is even ready.
			testenv.Eventually(t, waitLong, "consumer", func() bool { return s.jobsSettled() })
		}
		require.NoError(t, a.stop(t))
	}
	_, err := os.Stat(s.cfg.Workdir)
	require.NoError(t, err)
}

func TestRunTwice(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	sub := s.subscribeHeartbeats()
	a := s.start()
	nextHeartbeat(t, sub, func(wire.Heartbeat) bool { return true }) // the first Run is running
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	require.ErrorContains(t, a.Run(ctx), "Run called twice")
	require.NoError(t, a.stop(t))
}
