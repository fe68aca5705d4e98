package engine

import (
	"hash/maphash"
	"sync"

	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
)

// flowCache keeps the last state this replica wrote for in-progress flows,
// so applying the next event needs no read: the commit's revision check
// catches a state another replica changed meanwhile, and the engine then
// reads it again. Flows are never modified in place (Apply clones).
type flowCache struct {
	mu    sync.Mutex
	max   int
	flows map[string]store.Loaded
}

func newFlowCache(max int) *flowCache {
	return &flowCache{max: max, flows: make(map[string]store.Loaded)}
}

func (c *flowCache) get(id string) (store.Loaded, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	l, ok := c.flows[id]
	return l, ok
}

func (c *flowCache) put(f *flow.Flow, rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.State.Terminal() {
		delete(c.flows, f.ID) // no more events of consequence
		return
	}
	if len(c.flows) >= c.max {
		for k := range c.flows { // drop an arbitrary entry: it is only a cache
			delete(c.flows, k)
			break
		}
	}
	c.flows[f.ID] = store.Loaded{Flow: f, Rev: rev}
}

func (c *flowCache) drop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.flows, id)
}

// flowLocks serialises this replica's writers of one flow, from load to
// commit: events of a hot flow (many agents reporting at once) wait their
// turn and find the cached state current, instead of losing the revision
// check to each other and reading again. Striped: flows that share a
// stripe also wait for each other, which costs a little concurrency, never
// correctness (a worker holds one stripe at a time, and never while it
// waits on NATS). Replicas still meet at the revision check.
type flowLocks struct {
	seed    maphash.Seed
	stripes [flowLockStripes]sync.Mutex
}

// flowLockStripes is well above the default worker count, so that
// unrelated flows seldom wait for each other.
const flowLockStripes = 4096

func newFlowLocks() *flowLocks { return &flowLocks{seed: maphash.MakeSeed()} }

// lock locks flowID's stripe and returns its unlock.
func (l *flowLocks) lock(flowID string) func() {
	m := &l.stripes[maphash.String(l.seed, flowID)%flowLockStripes]
	m.Lock()
	return m.Unlock
}
