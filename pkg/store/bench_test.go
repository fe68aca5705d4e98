package store_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
)

// BenchmarkCommit measures what Redis spends on the engine's state write,
// next to the engine benchmark's ceiling in the same run: a one-line
// EVALSHA (HSET of a small field) on a thousand keys. Both go through the
// group commit from 256 goroutines, as the engine's calls do. The writes
// are whole flows as the engine stores them (a staging and a production
// environment, two jobs: about 1.2 KB of JSON): commit.lua creating a
// new flow, and commit.lua moving an existing flow to its next revision.
// Two more calls split the write's cost: a script that only receives the
// state (carry), and one that only HSETs it into the existing flow hash
// (store). Reported per operation: calls/s and redis-server CPU (µs), the
// figures docs/performance.md uses to place the engine's floor.
func BenchmarkCommit(b *testing.B) {
	r := testenv.StartRedis(b)
	st := store.New(r.Client, r.Prefix)
	keys := store.Keys{Prefix: r.Prefix}
	ctx := context.Background()
	n := 5000 * b.N
	at := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	flows := make([]*flow.Flow, n)
	for i := range flows {
		flows[i] = testenv.WholeFlow(b, fmt.Sprintf("f%024d", i), at)
	}
	// run does n operations from 256 goroutines and returns calls/s and
	// redis-server CPU µs per call.
	run := func(op func(i int) error) (float64, float64) {
		var next atomic.Int64
		var wg sync.WaitGroup
		cpu0, start := testenv.RedisCPU(b, r.Client), time.Now()
		for range 256 {
			wg.Go(func() {
				for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
					if err := op(i); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		elapsed, cpu := time.Since(start), testenv.RedisCPU(b, r.Client)-cpu0
		return float64(n) / elapsed.Seconds(), float64(cpu.Microseconds()) / float64(n)
	}
	script := redis.NewScript(`return redis.call('HSET', KEYS[1], 'rev', ARGV[1])`)
	b.ResetTimer()
	ceiling, ceilingCPU := run(func(i int) error {
		_, err := st.Eval(ctx, script, []string{fmt.Sprintf("%sc:{%d}", r.Prefix, i%1000)}, i)
		return err
	})
	created, createdCPU := run(func(i int) error {
		_, err := st.Commit(ctx, flows[i], 0, "create", nil)
		return err
	})
	moved, movedCPU := run(func(i int) error {
		_, err := st.Commit(ctx, flows[i], 1, "grant", nil)
		return err
	})
	state, err := flows[0].AppendJSON(nil)
	require.NoError(b, err)
	carry := redis.NewScript(`return 1`)
	_, carryCPU := run(func(i int) error {
		_, err := st.Eval(ctx, carry, []string{keys.Flow(flows[i].ID)}, state)
		return err
	})
	hset := redis.NewScript(`return redis.call('HSET', KEYS[1], 'state', ARGV[1])`)
	_, storeCPU := run(func(i int) error {
		_, err := st.Eval(ctx, hset, []string{keys.Flow(flows[i].ID)}, state)
		return err
	})
	b.StopTimer()
	b.ReportMetric(0, "ns/op") // five runs and the setup: meaningless per op
	b.ReportMetric(carryCPU, "carry_redis_cpu_us/call")
	b.ReportMetric(storeCPU, "store_redis_cpu_us/call")
	b.ReportMetric(ceiling, "ceiling_calls/s")
	b.ReportMetric(ceilingCPU, "ceiling_redis_cpu_us/call")
	b.ReportMetric(created, "create_calls/s")
	b.ReportMetric(createdCPU, "create_redis_cpu_us/call")
	b.ReportMetric(moved, "update_calls/s")
	b.ReportMetric(movedCPU, "update_redis_cpu_us/call")
}
