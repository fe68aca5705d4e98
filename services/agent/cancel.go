package agent

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"
)

// cancelError is the cause of a job's context when the engine cancelled it.
type cancelError struct{ reason string }

func (e *cancelError) Error() string {
	switch {
	case e.reason == "":
		return "cancelled"
	case strings.HasPrefix(e.reason, "cancelled"), strings.HasPrefix(e.reason, "superseded"):
		return e.reason // the engine's reason says it already
	}
	return "cancelled: " + e.reason
}

// cancelled reports whether the engine cancelled job id, and why. When the
// bucket cannot be read the job runs: a cancel is best effort, the engine
// ignores reports of cancelled work.
func (a *Agent) cancelled(ctx context.Context, id string) (string, bool) {
	if a.cancels == nil {
		return "", false
	}
	e, err := a.cancels.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", false
	}
	if err != nil {
		a.log.WarnContext(ctx, "read cancelled jobs", "job_id", id, "err", err)
		return "", false
	}
	return string(e.Value()), true
}

// watchCancel returns a context that ends with a *cancelError when the
// engine cancels job id while it runs. stop releases the watch.
func (a *Agent) watchCancel(ctx context.Context, id string, log *slog.Logger) (context.Context, func()) {
	cctx, cancel := context.WithCancelCause(ctx)
	if a.cancels == nil {
		return cctx, func() { cancel(nil) }
	}
	w, err := a.cancels.Watch(cctx, id)
	if err != nil {
		log.Warn("watch for a cancel", "err", err)
		return cctx, func() { cancel(nil) }
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for e := range w.Updates() {
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				log.Info("job cancelled", "reason", string(e.Value()))
				cancel(&cancelError{reason: string(e.Value())})
				return
			}
		}
	}()
	return cctx, func() {
		_ = w.Stop()
		cancel(nil)
		wg.Wait()
	}
}
