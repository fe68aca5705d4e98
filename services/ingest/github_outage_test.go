package ingest

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// TestGitHubNATSOutage stops NATS mid-test: deliveries get 503 with
// Retry-After and leave no record; after the restart they are accepted
// again, and EVENTS holds exactly the deliveries that got a 2xx.
func TestGitHubNATSOutage(t *testing.T) {
	t.Parallel()
	fx := ghSetup(t, ghOptions{})
	ctx := context.Background()
	accepted := map[string]bool{}
	send := func(d string) (*http.Response, []byte) {
		req := testenv.GitHubRequest(t, fx.url+"/acme/web/", "push", d, ghSecret, testenv.PushPayload("acme/web", "refs/heads/main", sha1))
		resp, body := fx.do(t, req)
		if resp.StatusCode/100 == 2 {
			accepted[d] = true
		}
		return resp, body
	}
	for range 5 {
		resp, body := send(testenv.DeliveryID())
		require.Equal(t, http.StatusAccepted, resp.StatusCode, "%s", body)
	}

	fx.nats.Shutdown()
	testenv.Eventually(t, 10*time.Second, "ingest to see NATS gone", func() bool {
		return fx.in.nc.Status() != nats.CONNECTED
	})
	var refused []string
	for range 5 {
		d := testenv.DeliveryID()
		resp, body := send(d)
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "%s", body)
		require.NotEmpty(t, resp.Header.Get("Retry-After"))
		require.Equal(t, "unavailable", testenv.ErrorCode(t, body))
		state, err := fx.st.DeliveryState(ctx, d)
		require.NoError(t, err)
		require.Equal(t, store.DeliveryUnknown, state, "nothing half-written")
		refused = append(refused, d)
	}

	fx.nats.Restart(t)
	testenv.Eventually(t, 30*time.Second, "ingest to accept again", func() bool {
		resp, body := send(refused[0])
		if resp.StatusCode == http.StatusServiceUnavailable {
			return false
		}
		require.Equal(t, http.StatusAccepted, resp.StatusCode, "%s", body)
		return true
	})
	// GitHub (or the repair loop) redelivers the others.
	for _, d := range refused[1:] {
		resp, body := send(d)
		require.Equal(t, http.StatusAccepted, resp.StatusCode, "%s", body)
	}
	for range 3 {
		resp, body := send(testenv.DeliveryID())
		require.Equal(t, http.StatusAccepted, resp.StatusCode, "%s", body)
	}

	// Every delivery that got a 2xx is in EVENTS, once; nothing else is.
	require.Len(t, accepted, 13)
	s, err := fx.js.Stream(ctx, wire.StreamEvents)
	require.NoError(t, err)
	info, err := s.Info(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(len(accepted)), info.State.Msgs)
	inStream := map[string]bool{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		require.NoError(t, err)
		inStream[m.Header.Get(wire.HeaderMsgID)] = true
	}
	require.Equal(t, accepted, inStream)
}
