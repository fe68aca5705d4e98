package hook_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"code.dny.dev/ssrf"
	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/hook"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A fixed secret so that the expected signature below is a true constant.
const fixedSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

func hmacSign(t *testing.T, secret, id string, ts time.Time, body []byte) string {
	t.Helper()
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	require.NoError(t, err)
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "%s.%d.", id, ts.Unix())
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestSign(t *testing.T) {
	t.Parallel()
	ts := time.Unix(1_700_000_000, 123)
	cases := []struct {
		name   string
		secret string
		id     string
		body   []byte
	}{
		{"fixed secret", fixedSecret, "msg_1", []byte(`{"type":"flow.created"}`)},
		{"generated secret", config.NewSecret(), "hook.abc-123", []byte(`{"a": [1, 2,  3]}` + "\n")},
		{"empty body", config.NewSecret(), "x", nil},
		{"binary body", config.NewSecret(), "y", []byte{0, 1, 2, 0xff, '.', '.'}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sig, err := hook.Sign(tc.secret, tc.id, ts, tc.body)
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(sig, "v1,"), sig)

			// Independently: HMAC-SHA256 over "id.ts.body", std base64.
			require.Equal(t, hmacSign(t, tc.secret, tc.id, ts, tc.body), sig)

			// And with the library's own verifier.
			wh, err := standardwebhooks.NewWebhook(tc.secret)
			require.NoError(t, err)
			h := http.Header{}
			h.Set(hook.HeaderID, tc.id)
			h.Set(hook.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
			h.Set(hook.HeaderSignature, sig)
			require.NoError(t, wh.VerifyIgnoringTimestamp(tc.body, h))

			// A changed body must not verify.
			require.Error(t, wh.VerifyIgnoringTimestamp(append([]byte("x"), tc.body...), h))
		})
	}
}

func TestSignKnownVector(t *testing.T) {
	t.Parallel()
	// The Standard Webhooks spec's example vector.
	sig, err := hook.Sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek",
		time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	require.NoError(t, err)
	require.Equal(t, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", sig)
}

func TestSignInvalidSecret(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "whsec_", "nope", "whsec_!!!not-base64!!!"} {
		_, err := hook.Sign(s, "id", time.Now(), []byte("{}"))
		require.ErrorIs(t, err, hook.ErrInvalidSecret, "secret %q", s)
		if strings.TrimPrefix(s, "whsec_") != "" {
			require.NotContains(t, err.Error(), strings.TrimPrefix(s, "whsec_"))
		}
	}
}

func TestNewRequest(t *testing.T) {
	t.Parallel()
	secret := config.NewSecret()
	ts := time.Now()
	body := []byte(`{"type":"deployment.succeeded",  "data":{}}`)
	extra := map[string]string{
		"X-Team":            "ops",
		"Authorization":     "Bearer abc",
		"content-type":      "text/plain",
		"Webhook-Id":        "forged",
		"webhook-signature": "v1,forged",
		"Webhook-Timestamp": "1",
		"webhook-extra":     "nope",
		"User-Agent":        "evil/1",
	}
	req, err := hook.NewRequest(context.Background(), "http://127.0.0.1:1/hook", "msg_1", ts, body, secret, extra)
	require.NoError(t, err)
	require.Equal(t, http.MethodPost, req.Method)
	require.Equal(t, "application/json", req.Header.Get("Content-Type"))
	require.Equal(t, hook.UserAgent, req.Header.Get("User-Agent"))
	require.Equal(t, "msg_1", req.Header.Get("webhook-id"))
	require.Equal(t, strconv.FormatInt(ts.Unix(), 10), req.Header.Get("webhook-timestamp"))
	require.Equal(t, hmacSign(t, secret, "msg_1", ts, body), req.Header.Get("webhook-signature"))
	require.Empty(t, req.Header.Get("webhook-extra"))
	require.Len(t, req.Header.Values("webhook-id"), 1)
	require.Equal(t, "ops", req.Header.Get("X-Team"))
	require.Equal(t, "Bearer abc", req.Header.Get("Authorization"))
	got, err := io.ReadAll(req.Body)
	require.NoError(t, err)
	require.Equal(t, body, got)

	// The official verifier accepts the request as built.
	wh, err := standardwebhooks.NewWebhook(secret)
	require.NoError(t, err)
	require.NoError(t, wh.Verify(got, req.Header))
}

func TestNewRequestErrorsHideInputs(t *testing.T) {
	t.Parallel()
	_, err := hook.NewRequest(context.Background(), "http://tok:s3cr3t@[bad/x", "id", time.Now(), nil, config.NewSecret(), nil)
	require.ErrorIs(t, err, hook.ErrInvalidURL)
	require.NotContains(t, err.Error(), "s3cr3t")
}

func TestParseAllow(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		in   string
		want []string
		err  string
	}{
		{name: "empty", in: "", want: nil},
		{name: "blanks", in: " , ", want: nil},
		{name: "loopback both", in: "127.0.0.0/8,::1/128", want: []string{"127.0.0.0/8", "::1/128"}},
		{name: "spaces and masking", in: " 10.1.2.3/8 , fd00::1/8 ", want: []string{"10.0.0.0/8", "fd00::/8"}},
		{name: "bare address", in: "192.168.1.10", want: []string{"192.168.1.10/32"}},
		{name: "bare v6", in: "::1", want: []string{"::1/128"}},
		{name: "garbage", in: "127.0.0.0/8,localhost", err: `allowed network 2 "localhost"`},
		{name: "bad bits", in: "10.0.0.0/33", err: `allowed network 1 "10.0.0.0/33"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := hook.ParseAllow(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				require.ErrorContains(t, err, "CIDR")
				return
			}
			require.NoError(t, err)
			var s []string
			for _, p := range got {
				s = append(s, p.String())
			}
			require.Equal(t, tc.want, s)
		})
	}
}

// TestGuardDecision checks what the guard decides without dialing anything:
// Safe is the dialer's Control hook, called with the resolved address.
func TestGuardDecision(t *testing.T) {
	t.Parallel()
	allowLoop, err := hook.ParseAllow("127.0.0.0/8,::1/128")
	require.NoError(t, err)
	allowTen, err := hook.ParseAllow("10.0.0.0/8")
	require.NoError(t, err)
	cases := []struct {
		name    string
		allow   []netip.Prefix
		network string
		addr    string
		want    error
	}{
		{"private v4 refused", nil, "tcp4", "10.0.0.1:80", ssrf.ErrProhibitedIP},
		{"private v4 odd port refused", nil, "tcp4", "192.168.1.1:8443", ssrf.ErrProhibitedIP},
		{"metadata refused", nil, "tcp4", "169.254.169.254:80", ssrf.ErrProhibitedIP},
		{"loopback refused by default", nil, "tcp4", "127.0.0.1:8080", ssrf.ErrProhibitedIP},
		{"v6 loopback refused by default", nil, "tcp6", "[::1]:8080", ssrf.ErrProhibitedIP},
		{"v6 ula refused", nil, "tcp6", "[fd00::1]:443", ssrf.ErrProhibitedIP},
		{"mapped v4 refused", nil, "tcp6", "[::ffff:10.0.0.1]:80", ssrf.ErrProhibitedIP},
		{"udp refused", nil, "udp4", "8.8.8.8:53", ssrf.ErrProhibitedNetwork},
		{"public any port", nil, "tcp4", "8.8.8.8:8080", nil},
		{"public v6", nil, "tcp6", "[2001:4860:4860::8888]:443", nil},
		{"loopback allowed", allowLoop, "tcp4", "127.0.0.1:8080", nil},
		{"v6 loopback allowed", allowLoop, "tcp6", "[::1]:8080", nil},
		{"allow list is narrow", allowLoop, "tcp4", "10.0.0.1:80", ssrf.ErrProhibitedIP},
		{"private allowed", allowTen, "tcp4", "10.0.0.1:80", nil},
		{"private allow is narrow", allowTen, "tcp4", "10.255.255.255:80", nil},
		{"other private still refused", allowTen, "tcp4", "172.16.0.1:80", ssrf.ErrProhibitedIP},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := hook.NewGuard(tc.allow).Safe(tc.network, tc.addr, nil)
			if tc.want == nil {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, tc.want)
			require.Equal(t, hook.ReasonProhibited, hook.Outcome(0, err).Reason)
		})
	}
}

func receiver(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h) // listens on 127.0.0.1
	t.Cleanup(srv.Close)
	return srv
}

func closeIdle(t *testing.T, c *http.Client) {
	t.Cleanup(c.CloseIdleConnections)
}

func TestClientLoopback(t *testing.T) {
	t.Parallel()
	var hits atomic.Int64
	srv := receiver(t, func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(http.StatusNoContent)
	})

	t.Run("refused by default", func(t *testing.T) {
		t.Parallel()
		c := hook.NewClient(nil)
		closeIdle(t, c)
		req, err := http.NewRequest(http.MethodPost, srv.URL, nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		if resp != nil {
			resp.Body.Close()
		}
		require.ErrorIs(t, err, ssrf.ErrProhibitedIP)
		res := hook.Outcome(0, err)
		require.Equal(t, hook.ReasonProhibited, res.Reason)
		require.False(t, res.Delivered)
		require.False(t, res.Retryable)
		require.NotContains(t, hook.SafeError(err).Error(), srv.URL)
	})

	t.Run("allowed with the allow list", func(t *testing.T) {
		t.Parallel()
		allow, err := hook.ParseAllow("127.0.0.0/8")
		require.NoError(t, err)
		c := hook.NewClient(allow)
		closeIdle(t, c)
		req, err := http.NewRequest(http.MethodPost, srv.URL, nil)
		require.NoError(t, err)
		resp, err := c.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusNoContent, resp.StatusCode)
		require.True(t, hook.Outcome(resp.StatusCode, nil).Delivered)
	})
}

func TestClientRefusesRedirects(t *testing.T) {
	t.Parallel()
	var targetHits atomic.Int64
	target := receiver(t, func(w http.ResponseWriter, _ *http.Request) {
		targetHits.Add(1)
		w.WriteHeader(http.StatusOK)
	})
	for _, code := range []int{http.StatusMovedPermanently, http.StatusFound, http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		t.Run(strconv.Itoa(code), func(t *testing.T) {
			t.Parallel()
			srv := receiver(t, func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/moved", code)
			})
			allow, err := hook.ParseAllow("127.0.0.0/8")
			require.NoError(t, err)
			c := hook.NewClient(allow)
			closeIdle(t, c)
			req, err := hook.NewRequest(context.Background(), srv.URL, "msg", time.Now(), []byte(`{}`), config.NewSecret(), nil)
			require.NoError(t, err)
			resp, err := c.Do(req)
			if resp != nil {
				resp.Body.Close()
			}
			require.ErrorIs(t, err, hook.ErrRedirect)
			res := hook.Outcome(0, err)
			require.Equal(t, hook.ReasonRedirect, res.Reason)
			require.False(t, res.Retryable)
		})
	}
	t.Cleanup(func() {
		if targetHits.Load() != 0 {
			t.Errorf("redirect target was requested %d times", targetHits.Load())
		}
	})
}

func TestClientTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	srv := receiver(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(release) })
	allow, err := hook.ParseAllow("127.0.0.0/8")
	require.NoError(t, err)
	c := hook.NewClient(allow)
	closeIdle(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, err := hook.NewRequest(ctx, srv.URL, "msg", time.Now(), []byte(`{}`), config.NewSecret(), nil)
	require.NoError(t, err)
	resp, err := c.Do(req)
	if resp != nil {
		resp.Body.Close()
	}
	require.Error(t, err)
	res := hook.Outcome(0, err)
	require.Equal(t, hook.ReasonTimeout, res.Reason)
	require.True(t, res.Retryable)
}

func TestOutcome(t *testing.T) {
	t.Parallel()
	dialErr := &url.Error{Op: "Post", URL: "http://x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}}
	cases := []struct {
		name      string
		status    int
		err       error
		delivered bool
		reason    hook.Reason
		retryable bool
	}{
		{"200", 200, nil, true, "", false},
		{"204", 204, nil, true, "", false},
		{"299", 299, nil, true, "", false},
		{"301 without follow", 301, nil, false, hook.ReasonStatus, false},
		{"400", 400, nil, false, hook.ReasonStatus, false},
		{"401", 401, nil, false, hook.ReasonStatus, false},
		{"404", 404, nil, false, hook.ReasonStatus, false},
		{"408", 408, nil, false, hook.ReasonStatus, true},
		{"410 gone", 410, nil, false, hook.ReasonStatus, false},
		{"429", 429, nil, false, hook.ReasonStatus, true},
		{"500", 500, nil, false, hook.ReasonStatus, true},
		{"502", 502, nil, false, hook.ReasonStatus, true},
		{"503", 503, nil, false, hook.ReasonStatus, true},
		{"deadline", 0, fmt.Errorf("post: %w", context.DeadlineExceeded), false, hook.ReasonTimeout, true},
		{"canceled", 0, context.Canceled, false, hook.ReasonCanceled, true},
		{"ssrf ip", 0, fmt.Errorf("dial: %w", ssrf.ErrProhibitedIP), false, hook.ReasonProhibited, false},
		{"ssrf port", 0, ssrf.ErrProhibitedPort, false, hook.ReasonProhibited, false},
		{"ssrf network", 0, ssrf.ErrProhibitedNetwork, false, hook.ReasonProhibited, false},
		{"redirect", 0, &url.Error{Op: "Post", URL: "x", Err: hook.ErrRedirect}, false, hook.ReasonRedirect, false},
		{"invalid secret", 0, hook.ErrInvalidSecret, false, hook.ReasonInvalid, false},
		{"invalid url", 0, hook.ErrInvalidURL, false, hook.ReasonInvalid, false},
		{"connection refused", 0, dialErr, false, hook.ReasonConnection, true},
		{"other", 0, errors.New("boom"), false, hook.ReasonUnknownErr, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := hook.Outcome(tc.status, tc.err)
			require.Equal(t, hook.Result{Delivered: tc.delivered, Status: tc.status, Reason: tc.reason, Retryable: tc.retryable}, got)
		})
	}
}

func TestClientHasNoProxy(t *testing.T) {
	t.Parallel()
	// No proxy from the environment: the guard would only see the proxy's address.
	tr, ok := hook.NewClient(nil).Transport.(*http.Transport)
	require.True(t, ok)
	require.Nil(t, tr.Proxy)
}
