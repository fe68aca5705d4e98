package engine

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/wire"
)

// benchYAML: one environment, no supersede, no webhook: the engine's own
// work per event (load, apply, Lua commit, outbox, ack) without fan-out.
const benchYAML = `
services:
  - name: web
    repository: acme/web
    git_url: file:///srv/web.git
    branches: [main]
    deploy: ./deploy.sh
    supersede: false
    pipeline:
      - environment: staging
        targets: {env: staging}
`

// drain waits until the consumer named durable has acked everything and
// returns how many messages it was delivered.
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
		time.Sleep(5 * time.Millisecond)
	}
	b.Fatalf("consumer %s did not drain in 5m", durable)
}

// BenchmarkEngine measures events applied per second by one engine on real
// NATS and Redis, and in the same run the ceiling: the same consume loop
// (same stream, batch and worker count) doing one EVALSHA per message and
// an ack, no logic. It reports both and ours/ceiling.
func BenchmarkEngine(b *testing.B) {
	// Ours: pushes of distinct commits, each creating a flow (load, apply,
	// Lua commit, indexes, outbox: environment request, hook-less). One
	// flow gets the environment (one more event: the grant); the others
	// wait in line.
	pushes := 1000 * b.N
	fx := setupWith(b, benchYAML)
	for n := range pushes {
		fx.publishPush(b, fmt.Sprintf("d-%d", n), fmt.Sprintf("d-%d", n), shaN(n))
	}
	e := fx.newEngine(b)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	start := time.Now()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = e.Run(ctx)
	}()
	s, _ := fx.js.Stream(context.Background(), wire.StreamEvents)
	info, _ := s.Info(context.Background())
	drain(b, fx.js, wire.StreamEvents, "engine", info.State.LastSeq)
	ours := float64(info.State.LastSeq) / time.Since(start).Seconds()
	cancel()
	wg.Wait()

	// Ceiling: the same number of messages, consume → EVALSHA → ack.
	cx := setupWith(b, benchYAML)
	rdb := cx.st.Client()
	payload := []byte(`{"job_id":"x"}`)
	for range int(info.State.LastSeq) {
		_, err := cx.js.PublishAsync(wire.SubjectJobReport, payload)
		require.NoError(b, err)
	}
	<-cx.js.PublishAsyncComplete()
	script := redis.NewScript(`return redis.call('HSET', KEYS[1], 'rev', ARGV[1])`)
	cons, err := cx.js.CreateOrUpdateConsumer(context.Background(), wire.StreamEvents, jetstream.ConsumerConfig{
		Durable: "ceiling", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 1024, AckWait: 30 * time.Second,
	})
	require.NoError(b, err)
	start = time.Now()
	it, err := cons.Messages(jetstream.PullMaxMessages(16))
	require.NoError(b, err)
	msgs := make(chan jetstream.Msg)
	var cw sync.WaitGroup
	for range 8 {
		cw.Add(1)
		go func() {
			defer cw.Done()
			for m := range msgs {
				meta, _ := m.Metadata()
				_ = script.Run(context.Background(), rdb, []string{fmt.Sprintf("c:{%d}", meta.Sequence.Stream%1000)}, meta.Sequence.Stream).Err()
				_ = m.Ack()
			}
		}()
	}
	for range int(info.State.LastSeq) {
		m, err := it.Next()
		require.NoError(b, err)
		msgs <- m
	}
	close(msgs)
	cw.Wait()
	drain(b, cx.js, wire.StreamEvents, "ceiling", info.State.LastSeq)
	ceiling := float64(info.State.LastSeq) / time.Since(start).Seconds()
	it.Stop()

	b.ReportMetric(ours, "events/s")
	b.ReportMetric(ceiling, "ceiling_events/s")
	b.ReportMetric(ours/ceiling, "ratio")
	b.ReportMetric(0, "ns/op")
}
