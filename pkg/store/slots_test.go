package store_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

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
