package store

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shanenoi/otariinae/pkg/flow"
)

var (
	//go:embed scripts/commit.lua
	commitSrc    string
	commitScript = redis.NewScript(commitSrc)

	//go:embed scripts/outbox_ack.lua
	outboxAckSrc    string
	outboxAckScript = redis.NewScript(outboxAckSrc)
)

// statePool holds the buffers flows are encoded into for Commit.
var statePool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// ErrConflict means another writer changed the flow since it was loaded.
var ErrConflict = errors.New("flow changed concurrently")

// ErrAlreadyApplied means the event was applied to the flow before.
var ErrAlreadyApplied = errors.New("event already applied")

// ErrNotFound means no such flow.
var ErrNotFound = errors.New("not found")

// Loaded is a flow with the revision it was read at (0: does not exist).
type Loaded struct {
	Flow    *flow.Flow
	Rev     int64
	Applied bool // the event asked about was already applied
}

// LoadFlow reads a flow, its revision, and whether eventID was applied.
func (s *Store) LoadFlow(ctx context.Context, flowID, eventID string) (Loaded, error) {
	var applied *redis.BoolCmd
	c, err := s.batch.do(ctx, func(pipe redis.Pipeliner) redis.Cmder {
		applied = pipe.SIsMember(ctx, s.keys.Applied(flowID), eventID)
		return pipe.HMGet(ctx, s.keys.Flow(flowID), "state", "rev")
	})
	if err == nil {
		err = applied.Err()
	}
	if err != nil {
		return Loaded{}, fmt.Errorf("load flow %s: %w", flowID, err)
	}
	hget := c.(*redis.SliceCmd)
	out := Loaded{Applied: applied.Val()}
	vals := hget.Val()
	if len(vals) == 2 && vals[0] != nil {
		var f flow.Flow
		if err := json.Unmarshal([]byte(vals[0].(string)), &f); err != nil {
			return Loaded{}, fmt.Errorf("decode flow %s: %w", flowID, err)
		}
		rev, err := strconv.ParseInt(fmt.Sprint(vals[1]), 10, 64)
		if err != nil {
			return Loaded{}, fmt.Errorf("decode rev of flow %s: %w", flowID, err)
		}
		out.Flow, out.Rev = &f, rev
	}
	return out, nil
}

// Committed is the result of a successful Commit.
type Committed struct {
	Rev int64
	// Pending is how many outbox writes are not carried out after this
	// one, itself included (when it wrote entries): more means an earlier
	// writer's entries are still to be carried out.
	Pending int64
}

// Commit writes the flow, marks eventID applied and appends outbox entries,
// atomically, if the flow is still at rev. It returns ErrConflict or
// ErrAlreadyApplied when it wrote nothing. It writes no index: a new flow
// is indexed once its write has landed (AckOutbox, IndexFlow), so that a
// refused create never lists a flow under another commit or ref.
func (s *Store) Commit(ctx context.Context, f *flow.Flow, rev int64, eventID string, outbox [][]byte) (Committed, error) {
	buf := statePool.Get().(*[]byte)
	defer statePool.Put(buf)
	state, err := f.AppendJSON((*buf)[:0])
	if err != nil {
		return Committed{}, fmt.Errorf("encode flow %s: %w", f.ID, err)
	}
	*buf = state // keep the grown buffer; it is written out before Commit returns
	args := make([]any, 0, 3+len(outbox))
	args = append(args, rev, state, eventID)
	for _, o := range outbox {
		args = append(args, o)
	}
	keys := []string{s.keys.Flow(f.ID), s.keys.Applied(f.ID), s.keys.OutboxRevs(f.ID), s.keys.OutboxAt(f.ID, rev+1), s.keys.LegacyOutbox(f.ID)}
	// Concurrent commits of different flows share round trips (group
	// commit); the index commands ride in the same pipeline.
	cmd, err := s.eval(ctx, commitScript, keys, args, nil)
	if err != nil {
		return Committed{}, fmt.Errorf("commit flow %s: %w", f.ID, err)
	}
	res, err := cmd.Int64Slice()
	if err != nil {
		return Committed{}, fmt.Errorf("commit flow %s: %w", f.ID, err)
	}
	if len(res) != 2 {
		return Committed{}, fmt.Errorf("commit flow %s: unexpected answer %v", f.ID, res)
	}
	switch res[0] {
	case -1:
		return Committed{}, ErrConflict
	case -2:
		return Committed{}, ErrAlreadyApplied
	}
	return Committed{Rev: res[0], Pending: res[1]}, nil
}

// OutboxWrite is the outbox entries one commit wrote: Rev is the revision
// it made, 0 for entries an earlier version left in the legacy list.
type OutboxWrite struct {
	Rev     int64
	Entries [][]byte
}

// Outbox returns a flow's outbox writes not carried out yet, oldest first
// (the legacy list's before all).
func (s *Store) Outbox(ctx context.Context, flowID string) ([]OutboxWrite, error) {
	pipe := s.rdb.Pipeline()
	revs := pipe.ZRange(ctx, s.keys.OutboxRevs(flowID), 0, -1)
	legacy := pipe.LRange(ctx, s.keys.LegacyOutbox(flowID), 0, -1)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("read outbox of %s: %w", flowID, err)
	}
	var out []OutboxWrite
	if vals := legacy.Val(); len(vals) > 0 {
		out = append(out, OutboxWrite{Entries: bytesOf(vals)})
	}
	if len(revs.Val()) == 0 {
		return out, nil
	}
	pipe = s.rdb.Pipeline()
	lists := make([]*redis.StringSliceCmd, len(revs.Val()))
	nums := make([]int64, len(revs.Val()))
	for i, r := range revs.Val() {
		n, err := strconv.ParseInt(r, 10, 64)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("outbox of %s: bad revision %q", flowID, r)
		}
		nums[i] = n
		lists[i] = pipe.LRange(ctx, s.keys.OutboxAt(flowID, n), 0, -1)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("read outbox of %s: %w", flowID, err)
	}
	for i, l := range lists {
		// A list carried out meanwhile reads empty: its revision is
		// still returned, so that it leaves the set.
		out = append(out, OutboxWrite{Rev: nums[i], Entries: bytesOf(l.Val())})
	}
	return out, nil
}

func bytesOf(vals []string) [][]byte {
	out := make([][]byte, len(vals))
	for i, v := range vals {
		out[i] = []byte(v)
	}
	return out
}

// AckOutbox removes the outbox writes carried out, and, when f is not nil,
// indexes f in the same round trip. A write of a revision is removed
// whole (plain commands: removing it twice is harmless); entries of the
// legacy list only while they are at its head and equal what was carried
// out.
func (s *Store) AckOutbox(ctx context.Context, flowID string, done []OutboxWrite, f *flow.Flow) error {
	var legacy [][]byte
	var revs []int64
	for _, w := range done {
		if w.Rev == 0 {
			legacy = append(legacy, w.Entries...)
		} else {
			revs = append(revs, w.Rev)
		}
	}
	if len(revs) == 0 && len(legacy) == 0 && f == nil {
		return nil
	}
	with := func(p redis.Pipeliner) []redis.Cmder {
		var cmds []redis.Cmder
		for _, r := range revs {
			cmds = append(cmds, p.Del(ctx, s.keys.OutboxAt(flowID, r)), p.ZRem(ctx, s.keys.OutboxRevs(flowID), r))
		}
		if f != nil {
			cmds = append(cmds, s.indexFlow(ctx, p, f)...)
		}
		return cmds
	}
	var err error
	if len(legacy) > 0 {
		args := make([]any, len(legacy))
		for i, p := range legacy {
			args[i] = p
		}
		_, err = s.eval(ctx, outboxAckScript, []string{s.keys.LegacyOutbox(flowID)}, args, with)
	} else {
		var cmds []redis.Cmder
		_, err = s.batch.do(ctx, func(p redis.Pipeliner) redis.Cmder {
			cmds = with(p)
			return cmds[0]
		})
		for _, c := range cmds {
			if err == nil {
				err = c.Err()
			}
		}
	}
	if err != nil {
		return fmt.Errorf("ack outbox of %s: %w", flowID, err)
	}
	return nil
}

// RepoKey is the canonical (lower-case) form of a GitHub org/repo.
func RepoKey(repo string) string { return strings.ToLower(repo) }

// IndexFlow records a flow in the read indexes and keeps the service's set
// of in-progress flows current. Idempotent: the engine calls it again when
// it replays an event whose state write already landed.
func (s *Store) IndexFlow(ctx context.Context, f *flow.Flow) error {
	pipe := s.rdb.Pipeline()
	s.indexFlow(ctx, pipe, f)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("index flow %s: %w", f.ID, err)
	}
	return nil
}

func (s *Store) indexFlow(ctx context.Context, pipe redis.Pipeliner, f *flow.Flow) []redis.Cmder {
	cmds := s.indexListings(ctx, pipe, f)
	if f.State.Terminal() {
		// An ended flow stays in the set with a negative score: lookups
		// skip it, and no later add (always NX) can bring it back, however
		// late a replay of an older state comes.
		cmds = append(cmds, pipe.ZAdd(ctx, s.keys.ServiceActive(f.Service), redis.Z{Score: -float64(f.CreatedAt.UnixMicro()), Member: f.ID}))
	} else {
		// Microseconds: supersede orders flows of one burst of pushes.
		cmds = append(cmds, pipe.ZAddNX(ctx, s.keys.ServiceActive(f.Service), redis.Z{Score: float64(f.CreatedAt.UnixMicro()), Member: f.ID}))
	}
	return cmds
}

// indexListings writes the listings a flow appears in (all flows, its
// service's, its repository's, its commit's, its artifact's versions):
// entries added only if absent, so writing them again changes nothing.
func (s *Store) indexListings(ctx context.Context, pipe redis.Pipeliner, f *flow.Flow) []redis.Cmder {
	score := float64(f.CreatedAt.UnixMilli())
	repo := RepoKey(f.Repository)
	cmds := []redis.Cmder{
		pipe.ZAddNX(ctx, s.keys.Flows(), redis.Z{Score: score, Member: f.ID}),
		pipe.ZAddNX(ctx, s.keys.ServiceFlows(f.Service), redis.Z{Score: score, Member: f.ID}),
		pipe.ZAddNX(ctx, s.keys.ArtifactVersions(strings.ToLower(f.Artifact)), redis.Z{Score: score, Member: f.Version}),
	}
	if repo != "" {
		cmds = append(cmds,
			pipe.ZAddNX(ctx, s.keys.RepoFlows(repo), redis.Z{Score: score, Member: f.ID}),
			pipe.SAdd(ctx, s.keys.CommitFlows(repo, strings.ToLower(f.Commit)), f.ID))
	}
	return cmds
}

// GetFlow returns a flow, or ErrNotFound.
func (s *Store) GetFlow(ctx context.Context, id string) (*flow.Flow, error) {
	flows, err := s.getFlows(ctx, []string{id})
	if err != nil {
		return nil, err
	}
	if flows[0] == nil {
		return nil, fmt.Errorf("flow %s: %w", id, ErrNotFound)
	}
	return flows[0], nil
}

// getFlows reads flows by id; a missing one is nil at its index.
func (s *Store) getFlows(ctx context.Context, ids []string) ([]*flow.Flow, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = pipe.HGet(ctx, s.keys.Flow(id), "state")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read flows: %w", err)
	}
	out := make([]*flow.Flow, len(ids))
	for i, c := range cmds {
		b, err := c.Bytes()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read flow %s: %w", ids[i], err)
		}
		var f flow.Flow
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("decode flow %s: %w", ids[i], err)
		}
		out[i] = &f
	}
	return out, nil
}

// CommitFlows returns the flows of one commit of a repository, oldest first.
func (s *Store) CommitFlows(ctx context.Context, repo, commit string) ([]*flow.Flow, error) {
	ids, err := s.rdb.SMembers(ctx, s.keys.CommitFlows(RepoKey(repo), strings.ToLower(commit))).Result()
	if err != nil {
		return nil, fmt.Errorf("read flows of %s@%s: %w", repo, commit, err)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	flows, err := s.getFlows(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := flows[:0]
	for _, f := range flows {
		if f != nil {
			out = append(out, f)
		}
	}
	sortFlows(out)
	return out, nil
}

func sortFlows(fs []*flow.Flow) {
	// Oldest first, then by service name: a stable order for one commit.
	slices.SortFunc(fs, func(a, b *flow.Flow) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Service, b.Service)
	})
}

// Page is one page of a newest-first listing.
type Page struct {
	Flows      []*flow.Flow
	NextCursor string
}

// RepoFlows lists a repository's flows newest first. cursor is the
// NextCursor of the previous page ("" for the first).
func (s *Store) RepoFlows(ctx context.Context, repo, cursor string, limit int) (Page, error) {
	return s.FlowsPage(ctx, FlowQuery{Repo: repo, Cursor: cursor, Limit: limit})
}

// ErrBadCursor means the cursor was not produced by a listing.
var ErrBadCursor = errors.New("invalid cursor")

// AgentRecord is an agent's last heartbeat, as stored.
type AgentRecord struct {
	ID         string            `json:"id"`
	Hostname   string            `json:"hostname"`
	Labels     map[string]string `json:"labels"`
	Version    string            `json:"version"`
	State      string            `json:"state"`
	LastSeenAt time.Time         `json:"last_seen_at"`
	Jobs       int               `json:"jobs"`
}

// DefaultAgentLostAfter is how long after its last heartbeat an agent is
// lost (OTARIINAE_AGENT_LOST_AFTER overrides it in the engine).
const DefaultAgentLostAfter = 30 * time.Second

// Eligible reports whether the agent may be given new jobs: seen recently
// and not draining.
func (a AgentRecord) Eligible() bool { return a.State != "lost" && a.State != "draining" }

// PutAgent records an agent's heartbeat.
func (s *Store) PutAgent(ctx context.Context, a AgentRecord) error {
	b, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode agent %s: %w", a.ID, err)
	}
	if err := s.rdb.HSet(ctx, s.keys.Agents(), a.ID, b).Err(); err != nil {
		return fmt.Errorf("record agent %s: %w", a.ID, err)
	}
	return nil
}

// Agents returns every agent ever seen, with state "lost" for those whose
// last heartbeat is older than lostAfter at now.
func (s *Store) Agents(ctx context.Context, now time.Time, lostAfter time.Duration) ([]AgentRecord, error) {
	vals, err := s.rdb.HGetAll(ctx, s.keys.Agents()).Result()
	if err != nil {
		return nil, fmt.Errorf("read agents: %w", err)
	}
	out := make([]AgentRecord, 0, len(vals))
	for id, v := range vals {
		var a AgentRecord
		if err := json.Unmarshal([]byte(v), &a); err != nil {
			return nil, fmt.Errorf("decode agent %s: %w", id, err)
		}
		if now.Sub(a.LastSeenAt) > lostAfter {
			a.State = "lost"
		}
		out = append(out, a)
	}
	return out, nil
}
