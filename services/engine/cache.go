package engine

import (
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
