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

// TestCommitOfAnExistingFlowAsNew is the engine writing a create without
// reading first, for a flow that exists and has ended: the write is
// refused, and neither the flow, its listings nor its service's
// in-progress set change (a flow that ended must not come back where
// supersede looks).
func TestCommitOfAnExistingFlowAsNew(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st, keys := store.New(r.Client, r.Prefix), store.Keys{Prefix: r.Prefix}
	ctx := context.Background()
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	f := apiFlow("web", "v1", flow.FlowInProgress, at)

	_, err := st.Commit(ctx, f, 0, "gh.d-1", nil)
	require.NoError(t, err)
	require.NoError(t, st.AckOutbox(ctx, f.ID, nil, f)) // indexed once written
	done := st.NewBatch()
	joined := done.JoinActive(ctx, "web", f.ID, f.CreatedAt)
	require.NoError(t, done.Exec(ctx))
	older, newer, err := joined()
	require.NoError(t, err)
	require.Empty(t, older)
	require.Empty(t, newer)
	require.NoError(t, r.Client.ZScore(ctx, keys.ServiceActive("web"), f.ID).Err())

	ended := *f
	ended.State = flow.FlowSucceeded
	_, err = st.Commit(ctx, &ended, 1, "job.x", nil)
	require.NoError(t, err)
	require.NoError(t, st.AckOutbox(ctx, f.ID, nil, &ended))
	endedScore := func() {
		t.Helper()
		score, err := r.Client.ZScore(ctx, keys.ServiceActive("web"), f.ID).Result()
		require.NoError(t, err)
		require.Negative(t, score, "an ended flow is marked ended, out of supersede's sight")
	}
	endedScore()
	// A replay that read the flow before it ended indexes it late: it
	// stays ended.
	require.NoError(t, st.IndexFlow(ctx, f))
	endedScore()

	// Another delivery of the same commit, a day later.
	again := apiFlow("web", "v1", flow.FlowInProgress, at.Add(24*time.Hour))
	again.Commit = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0"
	_, err = st.Commit(ctx, again, 0, "gh.d-2", nil)
	require.ErrorIs(t, err, store.ErrConflict)
	got, err := st.GetFlow(ctx, f.ID)
	require.NoError(t, err)
	require.Equal(t, flow.FlowSucceeded, got.State)
	endedScore()
	// Nothing is listed under the refused create's commit.
	listed, err := st.CommitFlows(ctx, "acme/web", again.Commit)
	require.NoError(t, err)
	require.Empty(t, listed)
	// The listings keep the first delivery's time.
	score, err := r.Client.ZScore(ctx, keys.ServiceFlows("web"), f.ID).Result()
	require.NoError(t, err)
	require.Equal(t, float64(at.UnixMilli()), score)

	// And the same delivery again: already applied.
	_, err = st.Commit(ctx, again, 2, "job.x", nil)
	require.ErrorIs(t, err, store.ErrAlreadyApplied)
}

// TestOutboxWrites: each commit's entries are kept apart by revision,
// listed oldest first after what an earlier version left in the legacy
// list, and removed whole; the legacy list only while its head is what was
// carried out.
func TestOutboxWrites(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st, keys := store.New(r.Client, r.Prefix), store.Keys{Prefix: r.Prefix}
	ctx := context.Background()
	f := apiFlow("web", "v1", flow.FlowInProgress, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC))
	b := func(s ...string) [][]byte {
		out := make([][]byte, len(s))
		for i, v := range s {
			out[i] = []byte(v)
		}
		return out
	}

	c, err := st.Commit(ctx, f, 0, "e1", b("a", "b"))
	require.NoError(t, err)
	require.Equal(t, store.Committed{Rev: 1, Pending: 1}, c)
	c, err = st.Commit(ctx, f, 1, "e2", nil)
	require.NoError(t, err)
	require.Equal(t, store.Committed{Rev: 2, Pending: 1}, c, "rev 1's entries are still there")
	require.NoError(t, r.Client.RPush(ctx, keys.LegacyOutbox(f.ID), "x", "y").Err())
	c, err = st.Commit(ctx, f, 2, "e3", b("c"))
	require.NoError(t, err)
	require.Equal(t, store.Committed{Rev: 3, Pending: 3}, c)

	out, err := st.Outbox(ctx, f.ID)
	require.NoError(t, err)
	require.Equal(t, []store.OutboxWrite{{Rev: 0, Entries: b("x", "y")}, {Rev: 1, Entries: b("a", "b")}, {Rev: 3, Entries: b("c")}}, out)

	require.NoError(t, st.AckOutbox(ctx, f.ID, []store.OutboxWrite{{Rev: 1}}, nil))
	require.NoError(t, st.AckOutbox(ctx, f.ID, []store.OutboxWrite{{Rev: 1}}, nil), "twice is harmless")
	// The legacy list's head is not "y": nothing of it goes.
	require.NoError(t, st.AckOutbox(ctx, f.ID, []store.OutboxWrite{{Entries: b("y")}}, nil))
	out, err = st.Outbox(ctx, f.ID)
	require.NoError(t, err)
	require.Equal(t, []store.OutboxWrite{{Rev: 0, Entries: b("x", "y")}, {Rev: 3, Entries: b("c")}}, out)

	require.NoError(t, st.AckOutbox(ctx, f.ID, out, nil))
	out, err = st.Outbox(ctx, f.ID)
	require.NoError(t, err)
	require.Empty(t, out)
	c, err = st.Commit(ctx, f, 3, "e4", nil)
	require.NoError(t, err)
	require.Equal(t, store.Committed{Rev: 4, Pending: 0}, c)
}
