// Package bus connects to NATS and owns the JetStream topology: the four
// streams, their limits, and the durable consumers services share.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shanenoi/otariinae/pkg/wire"
)

// DuplicateWindow is how long JetStream remembers a Nats-Msg-Id. The server
// default is 2 minutes; the engine republishes an outbox after a crash, so
// the window must outlast a restart.
const DuplicateWindow = 15 * time.Minute

// Connect dials NATS with reconnects forever, logging state changes.
func Connect(url, name string, log *slog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	base := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { log.Warn("nats async error", "err", err) }),
	}
	nc, err := nats.Connect(url, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	return nc, nil
}

// maxEventSize is the largest message EVENTS takes: a GitHub delivery (at
// most 25 MiB) with its headers.
const maxEventSize = 26 << 20

// StreamConfigs returns the configuration of every stream.
func StreamConfigs() []jetstream.StreamConfig {
	week := 7 * 24 * time.Hour
	return []jetstream.StreamConfig{
		{
			Name: wire.StreamEvents, Subjects: []string{wire.SubjectEventsAll},
			Description: "GitHub deliveries, triggers and job reports, kept for replay",
			Retention:   jetstream.LimitsPolicy, MaxAge: week, Storage: jetstream.FileStorage,
			Duplicates: DuplicateWindow, MaxMsgSize: maxEventSize,
		},
		{
			Name: wire.StreamJobs, Subjects: []string{wire.SubjectJobsAll},
			Description: "jobs for agents, one subject per agent",
			Retention:   jetstream.WorkQueuePolicy, MaxAge: week, Storage: jetstream.FileStorage,
			Duplicates: DuplicateWindow,
		},
		{
			Name: wire.StreamHooks, Subjects: []string{wire.SubjectHooksAll},
			Description: "hook requests, one subject per webhook",
			Retention:   jetstream.WorkQueuePolicy, MaxAge: week, Storage: jetstream.FileStorage,
			Duplicates: DuplicateWindow,
		},
		{
			Name: wire.StreamLogs, Subjects: []string{wire.SubjectLogsAll},
			Description: "deploy output, one subject per deployment and agent",
			Retention:   jetstream.LimitsPolicy, MaxAge: week, Storage: jetstream.FileStorage,
			Duplicates: time.Minute,
		},
	}
}

// CancelsConfig is the key-value bucket of cancelled job ids. An entry
// outlives any job's lifetime in JOBS (a week).
func CancelsConfig() jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: wire.BucketCancels, Description: "cancelled job ids",
		TTL: 7 * 24 * time.Hour, History: 1, Storage: jetstream.FileStorage,
	}
}

// EnsureStreams creates or updates every stream. It is idempotent and safe
// to call from every replica at start.
func EnsureStreams(ctx context.Context, js jetstream.JetStream) error {
	for _, cfg := range StreamConfigs() {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("ensure stream %s: %w", cfg.Name, err)
		}
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, CancelsConfig()); err != nil {
		return fmt.Errorf("ensure bucket %s: %w", wire.BucketCancels, err)
	}
	return nil
}

// EnsureStreamsRetry retries EnsureStreams until it succeeds or ctx ends, so
// a service can start before NATS is reachable.
func EnsureStreamsRetry(ctx context.Context, js jetstream.JetStream, log *slog.Logger) error {
	delay := 250 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := EnsureStreams(cctx, js)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return errors.Join(ctx.Err(), err)
		}
		log.Warn("waiting for jetstream", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// Durable consumer names.
const (
	ConsumerEngine     = "engine"
	ConsumerDispatcher = "dispatcher"
)

// AgentConsumer is the durable consumer name of one agent's jobs.
func AgentConsumer(agentID string) string { return "agent-" + agentID }
