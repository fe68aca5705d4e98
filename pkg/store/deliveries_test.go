package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
)

func TestDeliveries(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st := store.New(r.Client, r.Prefix)
	ctx := context.Background()
	keys := store.Keys{Prefix: r.Prefix}

	t.Run("published", func(t *testing.T) {
		seen, err := st.DeliverySeen(ctx, "d1")
		require.NoError(t, err)
		require.False(t, seen)
		require.NoError(t, st.RecordDelivery(ctx, "d1"))
		seen, err = st.DeliverySeen(ctx, "d1")
		require.NoError(t, err)
		require.True(t, seen)
		ttl := r.Client.TTL(ctx, keys.Delivery("d1")).Val()
		require.InDelta(t, store.DeliveryTTL.Seconds(), ttl.Seconds(), 5)
		// An ignored record never downgrades a published one.
		require.NoError(t, st.RecordIgnored(ctx, "d1"))
		state, err := st.DeliveryState(ctx, "d1")
		require.NoError(t, err)
		require.Equal(t, store.DeliveryPublished, state)
	})

	t.Run("ignored then published", func(t *testing.T) {
		require.NoError(t, st.RecordIgnored(ctx, "d2"))
		state, err := st.DeliveryState(ctx, "d2")
		require.NoError(t, err)
		require.Equal(t, store.DeliveryIgnored, state)
		seen, err := st.DeliverySeen(ctx, "d2")
		require.NoError(t, err)
		require.False(t, seen, "an ignored delivery may still be published after a config change")
		require.NoError(t, st.RecordDelivery(ctx, "d2"))
		seen, err = st.DeliverySeen(ctx, "d2")
		require.NoError(t, err)
		require.True(t, seen)
	})

	t.Run("redelivery marks", func(t *testing.T) {
		ok, err := st.MarkRedelivery(ctx, "g1", time.Hour)
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = st.MarkRedelivery(ctx, "g1", time.Hour)
		require.NoError(t, err)
		require.False(t, ok)
		require.NoError(t, st.UnmarkRedelivery(ctx, "g1"))
		ok, err = st.MarkRedelivery(ctx, "g1", time.Hour)
		require.NoError(t, err)
		require.True(t, ok)
	})

	t.Run("scan time", func(t *testing.T) {
		at, err := st.RepairScanTime(ctx, "repo:acme/web:1")
		require.NoError(t, err)
		require.True(t, at.IsZero())
		now := time.UnixMilli(time.Now().UnixMilli()).UTC()
		require.NoError(t, st.SetRepairScanTime(ctx, "repo:acme/web:1", now))
		at, err = st.RepairScanTime(ctx, "repo:acme/web:1")
		require.NoError(t, err)
		require.Equal(t, now, at)
	})

	t.Run("lease", func(t *testing.T) {
		ok, err := st.AcquireLease(ctx, "x", "a", time.Minute)
		require.NoError(t, err)
		require.True(t, ok)
		ok, err = st.AcquireLease(ctx, "x", "b", time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "held by a")
		ok, err = st.RenewLease(ctx, "x", "b", time.Minute)
		require.NoError(t, err)
		require.False(t, ok, "b does not hold it")
		require.NoError(t, st.ReleaseLease(ctx, "x", "b"))
		ok, err = st.RenewLease(ctx, "x", "a", 2*time.Minute)
		require.NoError(t, err)
		require.True(t, ok, "b's release left a's lease alone")
		require.Greater(t, r.Client.PTTL(ctx, keys.Lease("x")).Val(), time.Minute)
		require.NoError(t, st.ReleaseLease(ctx, "x", "a"))
		ok, err = st.AcquireLease(ctx, "x", "b", time.Minute)
		require.NoError(t, err)
		require.True(t, ok)
	})
}

// TestDeliveriesConcurrent drives the coalescer: many concurrent calls
// share pipelines and each gets its own answer.
func TestDeliveriesConcurrent(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st := store.New(r.Client, r.Prefix)
	ctx := context.Background()
	const n = 300
	errs := make(chan error, 2*n)
	for i := range n {
		go func() {
			id := fmt.Sprintf("c%d", i)
			if i%2 == 0 {
				errs <- st.RecordDelivery(ctx, id)
			} else {
				errs <- st.RecordIgnored(ctx, id)
			}
		}()
	}
	for range n {
		require.NoError(t, <-errs)
	}
	type answer struct {
		i    int
		seen bool
		err  error
	}
	answers := make(chan answer, n)
	for i := range n {
		go func() {
			seen, err := st.DeliverySeen(ctx, fmt.Sprintf("c%d", i))
			answers <- answer{i, seen, err}
		}()
	}
	for range n {
		a := <-answers
		require.NoError(t, a.err)
		require.Equal(t, a.i%2 == 0, a.seen, "delivery c%d", a.i)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	_, err := st.DeliverySeen(cancelled, "c0")
	require.ErrorIs(t, err, context.Canceled)
}
