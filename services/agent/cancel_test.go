package agent

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

func TestPromotionJob(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	c := s.repo.commit("refs/heads/main", map[string]string{
		"deploy.sh": deployScript,
		"smoke.sh":  "#!/bin/sh\necho \"smoke $OTARIINAE_PROMOTION on $OTARIINAE_ENVIRONMENT at $(git rev-parse HEAD) args=$*\"\n",
	})
	s.start()
	j := s.job("promo", c)
	j.Kind, j.Promotion, j.Command = wire.JobPromotion, "smoke", "./smoke.sh --quick"
	j.ID = wire.PromotionJobID(j.DeploymentID, "smoke", s.cfg.ID)
	s.publish(j)
	started := s.report(j.ID, wire.JobStarted)
	require.Equal(t, "smoke", started.Promotion)
	fin := s.report(j.ID, wire.JobFinished)
	require.Equal(t, "smoke", fin.Promotion)
	require.Equal(t, 0, *fin.ExitCode, fin.Reason)
	s.waitLog(j.DeploymentID, "smoke smoke on staging at "+c+" args=--quick")
}

func TestCancelBeforeStart(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	c := s.repo.commit("refs/heads/main", map[string]string{"deploy.sh": deployScript})
	kv, err := s.js.KeyValue(context.Background(), wire.BucketCancels)
	require.NoError(t, err)
	j := s.job("cancelled", c)
	_, err = kv.Put(context.Background(), j.ID, []byte("cancelled by alice"))
	require.NoError(t, err)
	s.publish(j)
	s.start()
	fin := s.report(j.ID, wire.JobFinished)
	require.Equal(t, -1, *fin.ExitCode)
	require.Equal(t, "cancelled by alice", fin.Reason)
	require.Len(t, s.reportsOf(j.ID), 1, "never started")
	_, err = os.Stat(filepath.Join(s.cfg.Workdir, "web"))
	require.True(t, os.IsNotExist(err), "nothing was checked out")
	testenv.Eventually(t, waitLong, "job acked", s.jobsSettled)
}

func TestCancelWhileRunning(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	pidFile := filepath.Join(t.TempDir(), "pid")
	c := s.repo.commit("refs/heads/main", map[string]string{
		"deploy.sh": "#!/bin/sh\nsleep 120 &\necho $! > " + pidFile + "\necho running\nwait\n",
	})
	s.start()
	j := s.job("running", c)
	j.Command = "./deploy.sh"
	s.publish(j)
	s.report(j.ID, wire.JobStarted)
	s.waitLog(j.DeploymentID, "running")
	kv, err := s.js.KeyValue(context.Background(), wire.BucketCancels)
	require.NoError(t, err)
	_, err = kv.Put(context.Background(), j.ID, []byte("cancelled by bob: stop"))
	require.NoError(t, err)
	fin := s.report(j.ID, wire.JobFinished)
	require.Equal(t, -1, *fin.ExitCode)
	require.Equal(t, "cancelled by bob: stop", fin.Reason)
	b, err := os.ReadFile(pidFile)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err)
	testenv.Eventually(t, waitLong, "child killed with its group", func() bool { return !alive(pid) })
}

func TestAnnounceOnRequest(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	s.cfg.HeartbeatInterval = time.Hour // only the first beat and announces
	sub := s.subscribeHeartbeats()
	s.start()
	nextHeartbeat(t, sub, func(hb wire.Heartbeat) bool { return hb.State == stateIdle })
	nc := s.nats.Conn(t)
	// The agent subscribes once JetStream answered; ask until it replies.
	got := false
	for i := 0; i < 50 && !got; i++ {
		require.NoError(t, nc.Publish(wire.SubjectAnnounce, nil))
		msg, err := sub.NextMsg(200 * time.Millisecond)
		got = err == nil && msg != nil
	}
	require.True(t, got, "an announce request gets a heartbeat")
}

// TestRedeliveredFinishedJobIsNotRunAgain delivers a job the agent already
// finished (its ack lost): the agent reports the same outcome again and
// does not run the command a second time, even after a restart.
func TestRedeliveredFinishedJobIsNotRunAgain(t *testing.T) {
	t.Parallel()
	s := newSetup(t)
	counter := filepath.Join(t.TempDir(), "runs")
	c := s.repo.commit("refs/heads/main", map[string]string{"deploy.sh": "#!/bin/sh\necho run >> " + counter + "\nexit 3\n"})
	a := s.start()
	j := s.job("once", c)
	j.Command = "./deploy.sh"
	s.publish(j)
	first := s.report(j.ID, wire.JobFinished)
	require.Equal(t, 3, *first.ExitCode)
	require.NoError(t, a.stop(t))

	// The same job again, as JetStream would redeliver it, to a new agent
	// process on the same workdir. Its report goes out again under the
	// same message id (JetStream keeps the first), and the job is acked.
	s.publishOn(wire.JobSubject(j.AgentID), j)
	s.start()
	testenv.Eventually(t, waitLong, "redelivered job acked", s.jobsSettled)
	b, err := os.ReadFile(counter)
	require.NoError(t, err)
	require.Equal(t, "run\n", string(b), "the command ran once")
}
