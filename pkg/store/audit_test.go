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

func TestAudit(t *testing.T) {
	t.Parallel()
	r := testenv.StartRedis(t)
	st := store.New(r.Client, r.Prefix)
	ctx := context.Background()
	at := time.Date(2026, 11, 1, 12, 0, 0, 123, time.UTC)
	for i := range 7 {
		require.NoError(t, st.AddAudit(ctx, store.AuditEntry{
			At: at.Add(time.Duration(i) * time.Second), By: "ci", Action: "flow.cancel",
			Target: fmt.Sprintf("f%d", i), Status: 202, RequestID: fmt.Sprintf("r%d", i), EventID: fmt.Sprintf("e%d", i),
		}))
	}
	var targets []string
	cursor := ""
	for {
		items, next, err := st.AuditPage(ctx, cursor, 3)
		require.NoError(t, err)
		for _, it := range items {
			targets = append(targets, it.Target)
			require.NotEmpty(t, it.ID)
			require.Equal(t, "ci", it.By)
			require.Equal(t, 202, it.Status)
			require.Equal(t, "r"+it.Target[1:], it.RequestID)
			require.Equal(t, "e"+it.Target[1:], it.EventID)
		}
		if next == "" {
			break
		}
		cursor = next
	}
	require.Equal(t, []string{"f6", "f5", "f4", "f3", "f2", "f1", "f0"}, targets)

	first, _, err := st.AuditPage(ctx, "", 1)
	require.NoError(t, err)
	require.Equal(t, at.Add(6*time.Second), first[0].At)

	for _, c := range []string{"x", "1-", "-1", "1-a"} {
		_, _, err := st.AuditPage(ctx, c, 1)
		require.ErrorIs(t, err, store.ErrBadCursor, c)
	}
	// The stream is capped (approximately) at AuditMaxLen.
	info, err := r.Client.XInfoStream(ctx, store.Keys{Prefix: r.Prefix}.Audit()).Result()
	require.NoError(t, err)
	require.EqualValues(t, 7, info.Length)
}
