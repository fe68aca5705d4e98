package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shanenoi/otariinae/pkg/flow"
)

// Batch is several of the engine's outbox operations sent in one round
// trip (shared with other callers' through the group commit). Add
// operations, Exec once, then read each operation's result through the
// function its method returned. Every operation is idempotent, so a batch
// is sent again whole when Redis did not know one of its scripts.
type Batch struct {
	s       *Store
	ops     []func(redis.Pipeliner) []redis.Cmder
	scripts []*redis.Script
	cmds    [][]redis.Cmder // per operation, after Exec
	err     error           // Exec's own error (no result at all)
}

// NewBatch returns an empty batch.
func (s *Store) NewBatch() *Batch { return &Batch{s: s} }

// add queues one operation and returns its index.
func (b *Batch) add(sc *redis.Script, op func(redis.Pipeliner) []redis.Cmder) int {
	if sc != nil {
		b.scripts = append(b.scripts, sc)
	}
	b.ops = append(b.ops, op)
	return len(b.ops) - 1
}

// result returns operation i's commands and the first error among them
// (redis.Nil, a nil reply, is not an error).
func (b *Batch) result(i int) ([]redis.Cmder, error) {
	if b.err != nil {
		return nil, b.err
	}
	if i >= len(b.cmds) {
		return nil, errors.New("batch result read before Exec")
	}
	for _, c := range b.cmds[i] {
		if err := c.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return nil, err
		}
	}
	return b.cmds[i], nil
}

// Exec sends every operation in one round trip. An error here means no
// operation has a result; each operation's own error is read through its
// result function.
func (b *Batch) Exec(ctx context.Context) error {
	if len(b.ops) == 0 {
		return nil
	}
	for attempt := 0; ; attempt++ {
		all := make([][]redis.Cmder, 0, len(b.ops))
		_, err := b.s.batch.do(ctx, func(p redis.Pipeliner) redis.Cmder {
			all = all[:0]
			for _, op := range b.ops {
				all = append(all, op(p))
			}
			return all[0][0]
		})
		if len(all) < len(b.ops) {
			b.err = fmt.Errorf("redis batch: %w", err)
			return b.err
		}
		noScript := false
		for _, cs := range all {
			for _, c := range cs {
				noScript = noScript || (c.Err() != nil && redis.HasErrorPrefix(c.Err(), "NOSCRIPT"))
			}
		}
		if noScript && attempt == 0 {
			// A new or restarted Redis: load the scripts, send again.
			for _, sc := range b.scripts {
				if err := sc.Load(ctx, b.s.rdb).Err(); err != nil {
					b.err = fmt.Errorf("load script: %w", err)
					return b.err
				}
			}
			continue
		}
		b.cmds = all
		return nil
	}
}

func (s *Store) slotKeys(service, env string) []string {
	return []string{s.keys.EnvSlot(service, env), s.keys.EnvQueue(service, env), s.keys.EnvReleased(service, env)}
}

// RequestSlot adds Store.RequestSlot.
func (b *Batch) RequestSlot(ctx context.Context, service, env, deploymentID string) func() (bool, error) {
	keys := b.s.slotKeys(service, env)
	i := b.add(slotRequestScript, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{slotRequestScript.EvalSha(ctx, p, keys, deploymentID)}
	})
	return func() (bool, error) {
		cs, err := b.result(i)
		var n int64
		if err == nil {
			n, err = cs[0].(*redis.Cmd).Int64()
		}
		if err != nil {
			return false, fmt.Errorf("request %s/%s for %s: %w", service, env, deploymentID, err)
		}
		return n == 1, nil
	}
}

// ReleaseSlot adds Store.ReleaseSlot.
func (b *Batch) ReleaseSlot(ctx context.Context, service, env, deploymentID string) func() (string, error) {
	keys := b.s.slotKeys(service, env)
	now := time.Now().UnixMilli()
	i := b.add(slotReleaseScript, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{slotReleaseScript.EvalSha(ctx, p, keys, deploymentID, now)}
	})
	return func() (string, error) {
		cs, err := b.result(i)
		var next string
		if err == nil {
			next, err = cs[0].(*redis.Cmd).Text()
		}
		if errors.Is(err, redis.Nil) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("release %s/%s from %s: %w", service, env, deploymentID, err)
		}
		return next, nil
	}
}

// AddTimer schedules a timer of a flow. Idempotent.
func (b *Batch) AddTimer(ctx context.Context, flowID, key string, at time.Time) func() error {
	i := b.add(nil, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{p.ZAdd(ctx, b.s.keys.Timers(), redis.Z{Score: float64(at.UnixMilli()), Member: timerMember(flowID, key)})}
	})
	return func() error {
		if _, err := b.result(i); err != nil {
			return fmt.Errorf("add timer %s of %s: %w", key, flowID, err)
		}
		return nil
	}
}

// SetLastSucceeded records the version that succeeded in env at
// v.SucceededAt, unless a later success is recorded there already.
func (b *Batch) SetLastSucceeded(ctx context.Context, service, env string, v flow.LastSuccess) func() error {
	data, err := json.Marshal(v)
	keys := []string{b.s.keys.LastSucceeded(service), b.s.keys.LastSucceededAt(service)}
	i := b.add(lastSucceededScript, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{lastSucceededScript.EvalSha(ctx, p, keys, env, data, v.SucceededAt.UnixMicro())}
	})
	return func() error {
		if err != nil {
			return fmt.Errorf("encode last success: %w", err)
		}
		if _, err := b.result(i); err != nil {
			return fmt.Errorf("record last success of %s/%s: %w", service, env, err)
		}
		return nil
	}
}

// JoinActive adds a flow created at to its service's in-progress flows
// (if it is not there yet), then reads the others: those created before
// it, oldest first, and the newest created after it ("" when none). In
// that order, so of two flows that join at once, at least one sees the
// other.
func (b *Batch) JoinActive(ctx context.Context, service, flowID string, at time.Time) func() ([]string, string, error) {
	key, micros := b.s.keys.ServiceActive(service), strconv.FormatInt(at.UnixMicro(), 10)
	i := b.add(nil, func(p redis.Pipeliner) []redis.Cmder {
		return []redis.Cmder{
			p.ZAddNX(ctx, key, redis.Z{Score: float64(at.UnixMicro()), Member: flowID}),
			p.ZRangeByScore(ctx, key, &redis.ZRangeBy{Min: "0", Max: "(" + micros}), // ended flows score below 0
			p.ZRevRangeByScore(ctx, key, &redis.ZRangeBy{Min: "(" + micros, Max: "+inf", Count: 1}),
		}
	})
	return func() ([]string, string, error) {
		cs, err := b.result(i)
		if err != nil {
			return nil, "", fmt.Errorf("read active flows of %s: %w", service, err)
		}
		var newer string
		if after := cs[2].(*redis.StringSliceCmd).Val(); len(after) > 0 {
			newer = after[0]
		}
		return cs[1].(*redis.StringSliceCmd).Val(), newer, nil
	}
}
