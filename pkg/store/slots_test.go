package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
)

func TestSlots(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st := store.New(r.Client, r.Prefix)
	ctx := context.Background()
	got := func(dep string) bool {
		ok, err := st.RequestSlot(ctx, "web", "staging", dep)
		require.NoError(t, err)
		return ok
	}
	require.True(t, got("a"))
	require.True(t, got("a"), "asking twice keeps it")
	require.False(t, got("b"))
	require.False(t, got("c"))
	require.False(t, got("b"), "waiting twice queues once")
	holder, queue, err := st.SlotHolder(ctx, "web", "staging")
	require.NoError(t, err)
	require.Equal(t, "a", holder)
	require.Equal(t, []string{"b", "c"}, queue)

	next, err := st.ReleaseSlot(ctx, "web", "staging", "a")
	require.NoError(t, err)
	require.Equal(t, "b", next)
	// A replayed release names the holder again (its flow ignores a grant
	// it already had), and never hands the environment on twice.
	next, err = st.ReleaseSlot(ctx, "web", "staging", "a")
	require.NoError(t, err)
	require.Equal(t, "b", next)
	// A stale request of a deployment that already released is refused.
	require.False(t, got("a"))
	holder, queue, err = st.SlotHolder(ctx, "web", "staging")
	require.NoError(t, err)
	require.Equal(t, "b", holder)
	require.Equal(t, []string{"c"}, queue)

	// A waiting deployment that gives up leaves the line.
	next, err = st.ReleaseSlot(ctx, "web", "staging", "c")
	require.NoError(t, err)
	require.Equal(t, "b", next)
	next, err = st.ReleaseSlot(ctx, "web", "staging", "b")
	require.NoError(t, err)
	require.Empty(t, next)
	holder, queue, err = st.SlotHolder(ctx, "web", "staging")
	require.NoError(t, err)
	require.Empty(t, holder)
	require.Empty(t, queue)
}

// TestLastSucceededKeepsTheLater: a success replayed late (an outbox
// carried out again after a crash) does not replace a later one; the same
// success again is harmless; records from before success times were kept
// are replaced.
func TestLastSucceededKeepsTheLater(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st := store.New(r.Client, r.Prefix)
	ctx := context.Background()
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	record := func(v flow.LastSuccess) {
		t.Helper()
		b := st.NewBatch()
		done := b.SetLastSucceeded(ctx, "web", "staging", v)
		require.NoError(t, b.Exec(ctx))
		require.NoError(t, done())
	}
	stored := func() flow.LastSuccess {
		t.Helper()
		last, err := st.LastSucceeded(ctx, "web")
		require.NoError(t, err)
		return last["staging"]
	}
	// A record an older engine wrote: no time.
	keys := store.Keys{Prefix: r.Prefix}
	require.NoError(t, r.Client.HSet(ctx, keys.LastSucceeded("web"), "staging", `{"artifact":"acme:web","version":"v0","commit":"c0","ref":"r","flow_id":"f0"}`).Err())
	older := flow.LastSuccess{Artifact: "acme:web", Version: "v1", Commit: "c1", Ref: "r", FlowID: "f1", SucceededAt: t0}
	newer := flow.LastSuccess{Artifact: "acme:web", Version: "v2", Commit: "c2", Ref: "r", FlowID: "f2", SucceededAt: t0.Add(time.Minute)}
	record(older)
	require.Equal(t, older, stored(), "a record without a time is replaced")
	record(newer)
	require.Equal(t, newer, stored())
	record(older)
	require.Equal(t, newer, stored(), "an older success replayed late is not recorded")
	record(newer)
	require.Equal(t, newer, stored(), "the same success again changes nothing")
	// Another environment is its own.
	b := st.NewBatch()
	done := b.SetLastSucceeded(ctx, "web", "production", older)
	require.NoError(t, b.Exec(ctx))
	require.NoError(t, done())
	last, err := st.LastSucceeded(ctx, "web")
	require.NoError(t, err)
	require.Equal(t, map[string]flow.LastSuccess{"staging": newer, "production": older}, last)
}
