package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/shanenoi/otariinae/pkg/wire"
)

// The agent remembers, in its workdir, every job it finished: a job
// redelivered after its finished report was stored (the ack was lost, or
// the agent restarted in between) is reported again, never run again.

// doneKeep is how long finished jobs are remembered: longer than a job can
// wait in JOBS (a week).
const doneKeep = 8 * 24 * time.Hour

func (a *Agent) doneDir() string { return filepath.Join(a.workdir, ".otariinae", "done") }

// donePath is the marker of job id; ids are validated ([A-Za-z0-9._-]),
// so the name stays inside the directory.
func (a *Agent) donePath(id string) string { return filepath.Join(a.doneDir(), id+".json") }

// markDone records the finished report of a job.
func (a *Agent) markDone(r wire.JobReport) error {
	if err := os.MkdirAll(a.doneDir(), 0o755); err != nil {
		return fmt.Errorf("record finished job: %w", err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("record finished job: %w", err)
	}
	tmp := a.donePath(r.JobID) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("record finished job: %w", err)
	}
	return os.Rename(tmp, a.donePath(r.JobID))
}

// finishedBefore returns the stored finished report of job id, if any.
func (a *Agent) finishedBefore(id string) (wire.JobReport, bool) {
	b, err := os.ReadFile(a.donePath(id))
	if err != nil {
		return wire.JobReport{}, false
	}
	var r wire.JobReport
	if json.Unmarshal(b, &r) != nil || r.JobID != id || r.State != wire.JobFinished {
		return wire.JobReport{}, false
	}
	return r, true
}

// forgetOldDone removes markers older than doneKeep (at start).
func (a *Agent) forgetOldDone() {
	entries, err := os.ReadDir(a.doneDir())
	if err != nil {
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > doneKeep {
			_ = os.Remove(filepath.Join(a.doneDir(), e.Name()))
		}
	}
}
