package engine

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// benchConfig returns n services, each with its own repository and one
// environment deployed by two agents, no webhooks: the engine's own work
// per event (apply, Lua commit, outbox, ack) without fan-out.
func benchConfig(n int) string {
	var b strings.Builder
	b.WriteString("services:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - name: svc-%d\n    repository: acme/svc-%d\n    git_url: file:///srv/x.git\n    branches: [main]\n    deploy: ./deploy.sh\n    pipeline:\n      - environment: staging\n        targets: {env: staging}\n", i, i)
	}
	return b.String()
}

// drain waits until the consumer named durable has acked the stream up to
// want.
func drain(b *testing.B, js jetstream.JetStream, stream, durable string, want uint64) {
	b.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for time.Now().Before(deadline) {
		c, err := js.Consumer(context.Background(), stream, durable)
		if err == nil {
			info, err := c.Info(context.Background())
			if err == nil && info.AckFloor.Stream >= want && info.NumAckPending == 0 && info.NumPending == 0 {
				return
			}
		}
		// Polling is itself work for the server: not too often.
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatalf("consumer %s did not drain in 5m", durable)
}

func lastSeq(b *testing.B, js jetstream.JetStream) uint64 {
	b.Helper()
	s, err := js.Stream(context.Background(), wire.StreamEvents)
	require.NoError(b, err)
	info, err := s.Info(context.Background())
	require.NoError(b, err)
	return info.State.LastSeq
}

// BenchmarkEngine measures events applied per second by one engine on real
// NATS and Redis with a realistic mix, and in the same run the ceiling:
// the same consume loop (same stream, batch and worker count) doing one
// EVALSHA per message and an ack, no logic. It reports both, ours/ceiling,
// and the CPU each spends per event (this process, which holds the engine
// and the NATS server, plus redis-server). It also reports, for reference,
// the same loop whose one call is the engine's state write (a whole flow
// through commit.lua), and ours against it (write_ratio): how much the
// engine's logic and outbox cost beyond storing the state.
//
// The mix is whole flows: per flow, one push (create: index, ask for the
// environment), the environment grant (create the deployment, two jobs),
// and four job reports (two started, two finished; the last one completes
// the deployment, releases the environment, records the success, ends the
// flow). Like the ceiling's, each phase's input is published before the
// engine runs, so the timed work is the engine's alone: a backlog applied
// flat out. Reports come once every flow's jobs exist.
func BenchmarkEngine(b *testing.B) {
	flows := 300 * b.N
	fx := setupWith(b, benchConfig(flows))
	rdb := fx.st.Client()
	e := fx.newEngineWith(b, 0) // the default worker count
	// run starts the engine over what is in the stream, waits until it
	// has applied everything, stops it and returns the time and CPU taken
	// from when it started pulling events (its setup is not timed, as the
	// ceiling's is not).
	type mark struct {
		at  time.Time
		cpu time.Duration
	}
	// want is how many events a phase acks: it tells the end of the phase
	// without asking the server (asking is work for it, which the
	// ceiling, asking only once at its end, would not pay).
	run := func(want int64) (time.Duration, time.Duration) {
		started := make(chan mark, 1)
		var acked atomic.Int64
		finished := make(chan mark, 1)
		e.consumingFunc = func() { started <- mark{cpu: cpuUsed(b, rdb), at: time.Now()} }
		e.ackedFunc = func() {
			if acked.Add(1) == want {
				finished <- mark{at: time.Now()}
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = e.Run(ctx)
		}()
		var end mark
		select {
		case end = <-finished:
		case <-time.After(5 * time.Minute):
			b.Fatalf("%d of %d events acked in 5m", acked.Load(), want)
		}
		cpu := cpuUsed(b, rdb)
		// Then check with the server: everything acked, nothing left.
		drain(b, fx.js, wire.StreamEvents, "engine", lastSeq(b, fx.js))
		cancel()
		<-done
		m := <-started
		return end.at.Sub(m.at), cpu - m.cpu
	}

	b.ResetTimer()
	b.StopTimer()
	for n := range flows {
		delivery := fmt.Sprintf("d-%d", n)
		msg := &nats.Msg{Subject: wire.GitHubSubject("push"), Header: nats.Header{},
			Data: testenv.PushPayload(fmt.Sprintf("acme/svc-%d", n), "refs/heads/main", shaN(n))}
		msg.Header.Set(wire.HeaderGitHubEvent, "push")
		msg.Header.Set(wire.HeaderDelivery, delivery)
		msg.Header.Set(wire.HeaderRepository, fmt.Sprintf("acme/svc-%d", n))
		_, err := fx.js.PublishMsgAsync(msg, jetstream.WithMsgID(delivery))
		require.NoError(b, err)
	}
	<-fx.js.PublishAsyncComplete()
	b.StartTimer()
	// Per flow: the push and the environment grant (an internal event).
	phase1, cpu1 := run(2 * int64(flows))
	b.StopTimer()
	// Every flow's deployment exists now: each got its grant (an
	// internal event) in phase 1.
	for n := range flows {
		id := flow.FlowID(fmt.Sprintf("acme:svc-%d", n), shaN(n), fmt.Sprintf("svc-%d", n))
		f, err := fx.st.GetFlow(context.Background(), id)
		require.NoError(b, err)
		require.Equal(b, flow.Created, f.Deployments[0].State)
	}
	before := lastSeq(b, fx.js)
	zero := 0
	// Agents report at their own pace: one flow's reports are spread out
	// among the others', as they are in life (adjacent reports of one flow
	// would mostly measure write conflicts).
	for _, st := range []wire.JobState{wire.JobStarted, wire.JobFinished} {
		for _, a := range []string{"s1", "s2"} {
			for n := range flows {
				id := flow.FlowID(fmt.Sprintf("acme:svc-%d", n), shaN(n), fmt.Sprintf("svc-%d", n))
				dep := flow.DeploymentID(id, "staging")
				r := wire.JobReport{JobID: wire.JobID(dep, a), FlowID: id, DeploymentID: dep, AgentID: a, State: st}
				if st == wire.JobFinished {
					r.ExitCode = &zero
				}
				data, _ := json.Marshal(r)
				_, err := fx.js.PublishAsync(wire.SubjectJobReport, data, jetstream.WithMsgID(r.MsgID()))
				require.NoError(b, err)
			}
		}
	}
	<-fx.js.PublishAsyncComplete()
	b.StartTimer()
	phase2, cpu2 := run(4 * int64(flows))
	b.StopTimer()
	events := lastSeq(b, fx.js)
	c, err := fx.js.Consumer(context.Background(), wire.StreamEvents, "engine")
	require.NoError(b, err)
	ci, err := c.Info(context.Background())
	require.NoError(b, err)
	b.Logf("flows %d: creates and grants %s, reports %d in %s, %d events, %d redelivered; CPU %s and %s", flows, phase1, events-before, phase2, events, ci.NumRedelivered, cpu1, cpu2)
	if path := os.Getenv("BENCH_REDIS_STATS"); path != "" {
		// Redis's own account of the run (commands, calls, time in each):
		// too long for the benchmark's log, so to a file.
		stats, err := rdb.Info(context.Background(), "commandstats", "cpu").Result()
		require.NoError(b, err)
		require.NoError(b, os.WriteFile(path, []byte(stats), 0o644))
	}
	ours := float64(events) / (phase1 + phase2).Seconds()
	oursCPU := (cpu1 + cpu2) / time.Duration(events)
	id := flow.FlowID("acme:svc-0", shaN(0), "svc-0")
	f, err := fx.st.GetFlow(context.Background(), id)
	require.NoError(b, err)
	require.Equal(b, flow.FlowSucceeded, f.State)

	// Ceiling: as many messages, consume → EVALSHA → ack. With the
	// engine's worker count and with fewer, each EVALSHA its own round
	// trip or sent through the group commit the engine uses: the best of
	// them, so that neither a worker count nor a Redis path that suits
	// the engine but not the bare loop lowers the ceiling.
	var ceiling, ceilingCPU float64
	for _, workers := range slices.Compact(slices.Sorted(slices.Values([]int{8, 64, e.cfg.Workers}))) {
		for _, grouped := range []bool{false, true} {
			rate, cpu := benchCeiling(b, e.ConsumerConfig(), workers, events, nil, evalsha(grouped))
			b.Logf("ceiling with %d workers (group commit %v): %.0f events/s, %.0f µs CPU/event", workers, grouped, rate, cpu)
			if rate > ceiling {
				ceiling, ceilingCPU = rate, cpu
			}
		}
	}

	// Not the goal's ceiling, but where the engine's own logic starts: the
	// same loop whose one call is the engine's state write (commit.lua
	// moving a whole flow to its next revision, through the group commit),
	// with the engine's worker count.
	var stored []*flow.Flow
	writeRate, _ := benchCeiling(b, e.ConsumerConfig(), e.cfg.Workers, events, func(cx *fixture) {
		stored = prepareFlows(b, cx, events)
	}, func(cx *fixture, seq uint64) error {
		_, err := cx.st.Commit(context.Background(), stored[seq], 1, "next", nil)
		return err
	})
	b.Logf("write ceiling (consume, commit.lua of a whole flow, ack) with %d workers: %.0f events/s", e.cfg.Workers, writeRate)

	b.ReportMetric(ours, "events/s")
	b.ReportMetric(writeRate, "write_ceiling_events/s")
	b.ReportMetric(ours/writeRate, "write_ratio")
	b.ReportMetric(ceiling, "ceiling_events/s")
	b.ReportMetric(ours/ceiling, "ratio")
	b.ReportMetric(float64(oursCPU.Nanoseconds())/1e3, "cpu_us/event")
	b.ReportMetric(ceilingCPU, "ceiling_cpu_us/event")
}

// ceilingCall is the Redis work the bare loop does per message: on the
// fixture cx, for the message with stream sequence seq.
type ceilingCall func(cx *fixture, seq uint64) error

// evalsha is the ceiling's call: one EVALSHA of a one-line script, its
// own round trip or through the group commit.
func evalsha(grouped bool) ceilingCall {
	script := redis.NewScript(`return redis.call('HSET', KEYS[1], 'rev', ARGV[1])`)
	return func(cx *fixture, seq uint64) error {
		keys := []string{fmt.Sprintf("c:{%d}", seq%1000)}
		if grouped {
			_, err := cx.st.Eval(context.Background(), script, keys, seq)
			return err
		}
		return script.Run(context.Background(), cx.st.Client(), keys, seq).Err()
	}
}

// benchCeiling runs the bare loop over events messages on a fresh NATS and
// Redis: consume, call, ack, with workers goroutines; prepare (if not nil)
// runs first, untimed. It returns events/s and CPU µs per event.
func benchCeiling(b *testing.B, cc jetstream.ConsumerConfig, workers int, events uint64, prepare func(*fixture), call ceilingCall) (float64, float64) {
	b.StopTimer()
	defer b.StartTimer()
	cx := setupWith(b, benchConfig(1))
	rdb := cx.st.Client()
	payload := []byte(`{"job_id":"x"}`)
	for range events {
		_, err := cx.js.PublishAsync(wire.SubjectJobReport, payload)
		require.NoError(b, err)
	}
	<-cx.js.PublishAsyncComplete()
	if prepare != nil {
		prepare(cx)
	}
	require.NoError(b, call(cx, 0)) // scripts loaded, connections made: untimed, as the engine's setup is
	cons, err := cx.js.CreateOrUpdateConsumer(context.Background(), wire.StreamEvents, cc)
	require.NoError(b, err)
	b.StartTimer()
	cpu0 := cpuUsed(b, rdb)
	start := time.Now()
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * workers))
	require.NoError(b, err)
	defer it.Stop()
	msgs := make(chan jetstream.Msg)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range msgs {
				meta, _ := m.Metadata()
				if err := call(cx, meta.Sequence.Stream); err != nil {
					b.Error(err)
				}
				_ = m.Ack()
			}
		}()
	}
	for range events {
		m, err := it.Next()
		require.NoError(b, err)
		msgs <- m
	}
	close(msgs)
	wg.Wait() // every message acked, as the engine's phases end
	elapsed := time.Since(start)
	cpu := cpuUsed(b, rdb) - cpu0
	b.StopTimer()
	drain(b, cx.js, wire.StreamEvents, "engine", events)
	return float64(events) / elapsed.Seconds(), float64(cpu.Microseconds()) / float64(events)
}

// cpuUsed is the CPU time spent so far by this process (the engine, the
// embedded NATS server, the benchmark) and by the redis-server behind rdb.
func cpuUsed(b *testing.B, rdb redis.UniversalClient) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	require.NoError(b, syscall.Getrusage(syscall.RUSAGE_SELF, &ru))
	return time.Duration(ru.Utime.Nano()+ru.Stime.Nano()) + testenv.RedisCPU(b, rdb)
}

// prepareFlows stores one whole flow (testenv.WholeFlow) per message,
// and one more for the loop's warm-up call, at revision 1, and returns
// them by stream sequence.
func prepareFlows(b *testing.B, cx *fixture, events uint64) []*flow.Flow {
	at := time.Now().UTC()
	flows := make([]*flow.Flow, events+1)
	var wg sync.WaitGroup
	var next atomic.Uint64
	for range 64 {
		wg.Go(func() {
			for seq := next.Add(1) - 1; seq <= events; seq = next.Add(1) - 1 {
				f := testenv.WholeFlow(b, fmt.Sprintf("w%024d", seq), at)
				if _, err := cx.st.Commit(context.Background(), f, 0, "create", nil); err != nil {
					b.Error(err)
					return
				}
				flows[seq] = f
			}
		})
	}
	wg.Wait()
	return flows
}
