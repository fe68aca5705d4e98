package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// coalescer runs concurrent single-command calls as shared pipelines
// (group commit): the first caller leads and sends the queue as one
// pipeline; callers arriving meanwhile queue up, and when the pipeline
// returns, the first of them leads the next one. Under load one round trip
// serves many webhook deliveries; alone, a call costs what it did. No
// goroutine of its own: a leader is always a caller.
type coalescer struct {
	rdb   redis.UniversalClient
	mu    sync.Mutex
	busy  bool
	queue []*pipeOp
}

type pipeOp struct {
	add  func(redis.Pipeliner) redis.Cmder
	cmd  redis.Cmder
	err  error
	done chan struct{} // one signal: the result is in, or lead is set
	lead bool
}

const (
	maxBatch     = 512
	batchTimeout = time.Second // under a Redis outage a delivery still answers within GitHub's 10s
)

// do queues one command and returns it once it ran.
func (c *coalescer) do(ctx context.Context, add func(redis.Pipeliner) redis.Cmder) (redis.Cmder, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	op := &pipeOp{add: add, done: make(chan struct{}, 1)}
	c.mu.Lock()
	c.queue = append(c.queue, op)
	if c.busy {
		c.mu.Unlock()
		// Never abandoned on ctx: this op may be handed the lead, and the
		// pipeline it joins is bounded by batchTimeout.
		<-op.done
		if !op.lead {
			return op.cmd, op.err
		}
		c.mu.Lock()
	}
	c.busy = true
	n := min(len(c.queue), maxBatch)
	batch := c.queue[:n:n]
	c.queue = c.queue[n:]
	c.mu.Unlock()

	c.exec(batch, op)

	c.mu.Lock()
	if len(c.queue) == 0 {
		c.busy = false
		c.queue = nil
	} else {
		next := c.queue[0]
		next.lead = true
		next.done <- struct{}{}
	}
	c.mu.Unlock()
	return op.cmd, op.err
}

// exec sends batch as one pipeline and hands every other caller its result.
func (c *coalescer) exec(batch []*pipeOp, self *pipeOp) {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	pipe := c.rdb.Pipeline()
	for _, op := range batch {
		op.cmd = op.add(pipe)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
	for _, op := range batch {
		op.err = op.cmd.Err()
		if op != self {
			op.done <- struct{}{}
		}
	}
}

// eval runs a script through the shared pipeline, by its SHA. A Redis that
// does not know the script (a new or restarted one) gets it loaded once and
// the call is sent again. with, when not nil, adds idempotent commands to
// the same round trip; the first of their errors is returned. The script's
// own answer, including a nil reply (redis.Nil), is read from the returned
// command.
func (s *Store) eval(ctx context.Context, sc *redis.Script, keys []string, args []any, with func(redis.Pipeliner) []redis.Cmder) (*redis.Cmd, error) {
	for attempt := 0; ; attempt++ {
		var extra []redis.Cmder
		c, err := s.batch.do(ctx, func(p redis.Pipeliner) redis.Cmder {
			cmd := sc.EvalSha(ctx, p, keys, args...)
			if with != nil {
				extra = with(p)
			}
			return cmd
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			if attempt == 0 && redis.HasErrorPrefix(err, "NOSCRIPT") {
				if err := sc.Load(ctx, s.rdb).Err(); err != nil {
					return nil, fmt.Errorf("load script: %w", err)
				}
				continue
			}
			return nil, err
		}
		for _, ec := range extra {
			if ec.Err() != nil {
				return nil, ec.Err()
			}
		}
		return c.(*redis.Cmd), nil
	}
}

// Eval runs a script through the shared pipeline (group commit) by its
// SHA, loading it into a Redis that does not know it. The engine's
// benchmark measures its ceiling with it: the bare loop with the same
// Redis path as the engine.
func (s *Store) Eval(ctx context.Context, sc *redis.Script, keys []string, args ...any) (*redis.Cmd, error) {
	return s.eval(ctx, sc, keys, args, nil)
}
