// Package hook is how otariinae delivers a webhook: signing a body per the
// Standard Webhooks spec, building the request, the SSRF-guarded HTTP client
// that sends it, and the decision about what one attempt's outcome means.
//
// It does no I/O of its own: the dispatcher owns the loop, the clock and the
// message acks; this package only answers "what to send" and "what happened".
package hook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

// UserAgent is sent with every delivery.
const UserAgent = "otariinae-hooks/1"

// Standard Webhooks header names (lower case, as the spec writes them;
// http.Header canonicalises them on the wire).
const (
	HeaderID        = standardwebhooks.HeaderWebhookID
	HeaderTimestamp = standardwebhooks.HeaderWebhookTimestamp
	HeaderSignature = standardwebhooks.HeaderWebhookSignature
)

// ErrInvalidSecret means a webhook secret is not "whsec_" + standard base64
// of a non-empty key. It never carries the secret or decoder text.
var ErrInvalidSecret = errors.New("invalid webhook secret: want whsec_ followed by standard base64")

// Sign returns the webhook-signature header value ("v1,<base64>") of body
// sent with message id at ts: HMAC-SHA256 over "id.unix(ts).body" keyed with
// the base64-decoded part of secret after "whsec_".
func Sign(secret, id string, ts time.Time, body []byte) (string, error) {
	wh, err := newWebhook(secret)
	if err != nil {
		return "", err
	}
	sig, err := wh.Sign(id, ts, body)
	if err != nil {
		return "", fmt.Errorf("sign webhook %s: %w", id, err)
	}
	return sig, nil
}

func newWebhook(secret string) (*standardwebhooks.Webhook, error) {
	// The library accepts a secret without the prefix and an empty key; both
	// are configuration mistakes here, so refuse them before signing.
	raw, ok := strings.CutPrefix(secret, "whsec_")
	if !ok || raw == "" {
		return nil, ErrInvalidSecret
	}
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		// Drop the library's text: keep errors free of anything secret-derived.
		return nil, ErrInvalidSecret
	}
	return wh, nil
}

// reserved reports whether a configured extra header would clash with one
// this package owns. The webhook-* namespace belongs to the spec.
func reserved(name string) bool {
	k := strings.ToLower(name)
	return k == "content-type" || k == "user-agent" || strings.HasPrefix(k, "webhook-")
}

// NewRequest builds the signed POST of body to url. ts is the time of this
// attempt (webhook-timestamp, unix seconds); id is the webhook-id, stable
// across attempts. extra are the webhook's configured headers: they are
// added, but never replace Content-Type, User-Agent or any webhook-* header.
func NewRequest(ctx context.Context, url, id string, ts time.Time, body []byte, secret string, extra map[string]string) (*http.Request, error) {
	sig, err := Sign(secret, id, ts, body)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		// url.Parse errors quote the URL, which may hold a token: keep it out.
		return nil, ErrInvalidURL
	}
	for k, v := range extra {
		if !reserved(k) {
			req.Header.Set(k, v)
		}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", UserAgent)
	req.Header.Set(HeaderID, id)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set(HeaderSignature, sig)
	return req, nil
}

// ErrInvalidURL means a webhook URL could not be parsed into a request.
var ErrInvalidURL = errors.New("invalid webhook url")
