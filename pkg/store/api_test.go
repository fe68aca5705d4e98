package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
)

func apiFlow(service, version string, state flow.FlowState, at time.Time) *flow.Flow {
	id := flow.FlowID("acme:web", version, service)
	return &flow.Flow{
		ID: id, Artifact: "acme:web", Version: version, Commit: "3ee38fa5b53b793881c52f0e1e52a2f342971716",
		Service: service, Repository: "acme/web", State: state, CreatedAt: at, UpdatedAt: at,
		Deployments: []flow.Deployment{},
	}
}

func put(t *testing.T, st *store.Store, f *flow.Flow) {
	t.Helper()
	ctx := context.Background()
	_, err := st.Commit(ctx, f, 0, "create", nil)
	require.NoError(t, err)
	require.NoError(t, st.IndexFlow(ctx, f))
}

// pageAll follows cursors to the end and returns the versions seen.
func pageAll(t *testing.T, st *store.Store, q store.FlowQuery) ([]string, int) {
	t.Helper()
	var out []string
	pages := 0
	for {
		p, err := st.FlowsPage(context.Background(), q)
		require.NoError(t, err)
		pages++
		require.LessOrEqual(t, len(p.Flows), q.Limit)
		for _, f := range p.Flows {
			out = append(out, f.Version)
		}
		if p.NextCursor == "" {
			return out, pages
		}
		q.Cursor = p.NextCursor
		require.Less(t, pages, 1000, "paging does not end")
	}
}

func TestFlowsPage(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st := store.New(r.Client, r.Prefix)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	// 150 flows of web sharing one creation millisecond (more than any
	// fixed look-ahead), then 20 at distinct times, every third failed;
	// 5 flows of api.
	var want, wantFailed []string
	for i := 19; i >= 0; i-- {
		v := fmt.Sprintf("late-%02d", i)
		want = append(want, v)
		if i%3 == 0 {
			wantFailed = append(wantFailed, v)
		}
	}
	same := make([]*flow.Flow, 150)
	for i := range same {
		same[i] = apiFlow("web", fmt.Sprintf("same-%03d", i), flow.FlowSucceeded, base)
		put(t, st, same[i])
	}
	for i := range 20 {
		s := flow.FlowSucceeded
		if i%3 == 0 {
			s = flow.FlowFailed
		}
		put(t, st, apiFlow("web", fmt.Sprintf("late-%02d", i), s, base.Add(time.Duration(i+1)*time.Second)))
	}
	for i := range 5 {
		put(t, st, apiFlow("api", fmt.Sprintf("api-%d", i), flow.FlowSucceeded, base.Add(time.Hour)))
	}
	// Same-score flows come in ZREVRANGE order: id descending.
	ids := map[string]string{}
	for _, f := range same {
		ids[f.ID] = f.Version
	}
	var sameOrder []string
	zs := r.Client.ZRevRange(context.Background(), store.Keys{Prefix: r.Prefix}.ServiceFlows("web"), 20, -1).Val()
	for _, id := range zs {
		sameOrder = append(sameOrder, ids[id])
	}
	require.Len(t, sameOrder, 150)

	cases := []struct {
		name  string
		q     store.FlowQuery
		want  []string
		pages int // 0: not checked
	}{
		{"web by 7", store.FlowQuery{Service: "web", Limit: 7}, append(append([]string{}, want...), sameOrder...), 25},
		{"web by 500", store.FlowQuery{Service: "web", Limit: 500}, append(append([]string{}, want...), sameOrder...), 1},
		{"failed by 2", store.FlowQuery{Service: "web", State: flow.FlowFailed, Limit: 2}, wantFailed, 0},
		{"failed with a small scan budget", store.FlowQuery{Service: "web", State: flow.FlowFailed, Limit: 5, MaxScan: 4}, wantFailed, 0},
		{"api only", store.FlowQuery{Service: "api", Limit: 50}, []string{"api-4", "api-3", "api-2", "api-1", "api-0"}, 1},
		{"nobody", store.FlowQuery{Service: "nobody", Limit: 50}, nil, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, pages := pageAll(t, st, c.q)
			if c.name == "api only" {
				// Same score: id order, not version order.
				require.ElementsMatch(t, c.want, got)
			} else {
				require.Equal(t, c.want, got)
			}
			if c.pages != 0 {
				require.Equal(t, c.pages, pages)
			}
		})
	}
	t.Run("every flow", func(t *testing.T) {
		t.Parallel()
		got, _ := pageAll(t, st, store.FlowQuery{Limit: 13})
		require.Len(t, got, 175)
	})
	t.Run("bad cursor", func(t *testing.T) {
		t.Parallel()
		for _, c := range []string{"x", "1", ":f", "a:b"} {
			_, err := st.FlowsPage(context.Background(), store.FlowQuery{Limit: 1, Cursor: c})
			require.ErrorIs(t, err, store.ErrBadCursor, c)
		}
	})
}

func TestArtifactVersions(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st := store.New(r.Client, r.Prefix)
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for i := range 5 {
		put(t, st, apiFlow("web", fmt.Sprintf("1.%d:rc", i), flow.FlowSucceeded, base.Add(time.Duration(i)*time.Minute)))
	}
	// A second service's flow of a known version keeps the first-seen time.
	put(t, st, apiFlow("api", "1.0:rc", flow.FlowSucceeded, base.Add(time.Hour)))
	var got []string
	cursor := ""
	for {
		vs, next, err := st.ArtifactVersions(context.Background(), "acme:web", cursor, 2)
		require.NoError(t, err)
		for _, v := range vs {
			got = append(got, v.Version)
			if v.Version == "1.0:rc" {
				require.Equal(t, base, v.FirstSeen)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	require.Equal(t, []string{"1.4:rc", "1.3:rc", "1.2:rc", "1.1:rc", "1.0:rc"}, got)
	flows, err := st.Flows(context.Background(), []string{flow.FlowID("acme:web", "1.0:rc", "api"), "fnope"})
	require.NoError(t, err)
	require.Equal(t, "api", flows[0].Service)
	require.Nil(t, flows[1])
}

func TestIdempotency(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st := store.New(r.Client, r.Prefix)
	ctx := context.Background()
	_, found, err := st.GetIdempotency(ctx, "ci", "k")
	require.NoError(t, err)
	require.False(t, found)

	mine := store.Idempotency{Fingerprint: "fp", EventID: "e1"}
	cur, created, err := st.ReserveIdempotency(ctx, "ci", "k", mine)
	require.NoError(t, err)
	require.True(t, created)
	require.Equal(t, mine, cur)

	// A second reservation gets the first one's record.
	cur, created, err = st.ReserveIdempotency(ctx, "ci", "k", store.Idempotency{Fingerprint: "other", EventID: "e2"})
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, mine, cur)
	// Scopes do not share keys.
	_, created, err = st.ReserveIdempotency(ctx, "cd", "k", store.Idempotency{Fingerprint: "x", EventID: "e3"})
	require.NoError(t, err)
	require.True(t, created)

	require.NoError(t, st.MarkIdempotencyPublished(ctx, "ci", "k", cur))
	got, found, err := st.GetIdempotency(ctx, "ci", "k")
	require.NoError(t, err)
	require.True(t, found)
	require.Equal(t, store.Idempotency{Fingerprint: "fp", EventID: "e1", Published: true}, got)
	ttl := r.Client.TTL(ctx, store.Keys{Prefix: r.Prefix}.Idempotency("ci", "k")).Val()
	require.InDelta(t, store.IdempotencyTTL.Seconds(), ttl.Seconds(), 60, "marking keeps the expiry")

	// Marking an expired (absent) key does not resurrect it.
	require.NoError(t, st.MarkIdempotencyPublished(ctx, "ci", "gone", cur))
	_, found, err = st.GetIdempotency(ctx, "ci", "gone")
	require.NoError(t, err)
	require.False(t, found)
}
