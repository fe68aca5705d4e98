package engine

import (
	"context"
	"time"
)

// runTimers fires due timers until ctx ends: each becomes an internal
// event with a deterministic id, so replicas firing the same timer at once
// publish it once. A timer is removed only after its event is stored.
func (e *Engine) runTimers(ctx context.Context) {
	tick := time.NewTicker(e.cfg.TimerInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		due, err := e.st.DueTimers(ctx, e.now(), 256)
		if err != nil {
			if ctx.Err() == nil {
				e.log.Warn("read due timers", "err", err)
			}
			continue
		}
		for _, t := range due {
			ie := internalEvent{Kind: "timer", FlowID: t.FlowID, Key: t.Key}
			if err := e.publishInternal(ctx, "timer."+t.FlowID+"."+t.Key, ie); err != nil {
				if ctx.Err() == nil {
					e.log.Warn("fire timer", "flow_id", t.FlowID, "key", t.Key, "err", err)
				}
				break
			}
			if err := e.st.RemoveTimer(ctx, t); err != nil {
				e.log.Warn("remove fired timer", "flow_id", t.FlowID, "key", t.Key, "err", err)
			}
			e.m.timers.Inc()
		}
	}
}
