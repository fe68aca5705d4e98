package store

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shanenoi/otariinae/pkg/flow"
)

var (
	//go:embed scripts/slot_request.lua
	slotRequestSrc    string
	slotRequestScript = redis.NewScript(slotRequestSrc)

	//go:embed scripts/slot_release.lua
	slotReleaseSrc    string
	slotReleaseScript = redis.NewScript(slotReleaseSrc)

	//go:embed scripts/last_succeeded.lua
	lastSucceededSrc    string
	lastSucceededScript = redis.NewScript(lastSucceededSrc)
)

// RequestSlot asks for (service, env) for a deployment. It reports whether
// the deployment holds the environment now; otherwise it waits in line and
// ReleaseSlot of the holder will name it, or it already released the
// environment and its request is a stale replay (false: nothing to grant).
func (s *Store) RequestSlot(ctx context.Context, service, env, deploymentID string) (bool, error) {
	b := s.NewBatch()
	res := b.RequestSlot(ctx, service, env, deploymentID)
	_ = b.Exec(ctx)
	return res()
}

// ReleaseSlot frees (service, env) from a deployment and returns the
// deployment that holds it next ("" for none); see slot_release.lua.
func (s *Store) ReleaseSlot(ctx context.Context, service, env, deploymentID string) (string, error) {
	b := s.NewBatch()
	res := b.ReleaseSlot(ctx, service, env, deploymentID)
	_ = b.Exec(ctx)
	return res()
}

// SlotHolder returns the deployment holding (service, env) and those waiting.
func (s *Store) SlotHolder(ctx context.Context, service, env string) (string, []string, error) {
	pipe := s.rdb.Pipeline()
	h := pipe.Get(ctx, s.keys.EnvSlot(service, env))
	q := pipe.LRange(ctx, s.keys.EnvQueue(service, env), 0, -1)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return "", nil, fmt.Errorf("read slot %s/%s: %w", service, env, err)
	}
	return h.Val(), q.Val(), nil
}

// timerMember is how a timer is stored: "<flow id>|<key>".
func timerMember(flowID, key string) string { return flowID + "|" + key }

// Timer is a due timer.
type Timer struct {
	FlowID string
	Key    string
	member string
}

// DueTimers returns up to limit timers due at now, oldest first. They stay
// scheduled until RemoveTimer: a replica that dies after reading them
// leaves them for the next.
func (s *Store) DueTimers(ctx context.Context, now time.Time, limit int) ([]Timer, error) {
	vals, err := s.rdb.ZRangeByScore(ctx, s.keys.Timers(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("read due timers: %w", err)
	}
	out := make([]Timer, 0, len(vals))
	for _, v := range vals {
		flowID, key, ok := strings.Cut(v, "|")
		if !ok {
			continue
		}
		out = append(out, Timer{FlowID: flowID, Key: key, member: v})
	}
	return out, nil
}

// RemoveTimer unschedules a timer once its event is published.
func (s *Store) RemoveTimer(ctx context.Context, t Timer) error {
	if err := s.rdb.ZRem(ctx, s.keys.Timers(), t.member).Err(); err != nil {
		return fmt.Errorf("remove timer %s: %w", t.member, err)
	}
	return nil
}

// LastSucceeded returns the last version that succeeded in each
// environment of a service.
func (s *Store) LastSucceeded(ctx context.Context, service string) (map[string]flow.LastSuccess, error) {
	vals, err := s.rdb.HGetAll(ctx, s.keys.LastSucceeded(service)).Result()
	if err != nil {
		return nil, fmt.Errorf("read last successes of %s: %w", service, err)
	}
	out := make(map[string]flow.LastSuccess, len(vals))
	for env, v := range vals {
		var ls flow.LastSuccess
		if err := json.Unmarshal([]byte(v), &ls); err != nil {
			return nil, fmt.Errorf("decode last success of %s/%s: %w", service, env, err)
		}
		out[env] = ls
	}
	return out, nil
}
