package hook

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/url"

	"code.dny.dev/ssrf"
)

// Reason says why an attempt failed. Values are stable: they are logged and
// will label metrics and dead-letter records.
type Reason string

// Failure reasons.
const (
	ReasonStatus     Reason = "status"      // the receiver answered with a non-2xx status
	ReasonTimeout    Reason = "timeout"     // the attempt ran out of time
	ReasonProhibited Reason = "prohibited"  // the SSRF guard refused the address
	ReasonRedirect   Reason = "redirect"    // the receiver redirected; not followed
	ReasonConnection Reason = "connection"  // DNS, connect, TLS or protocol error
	ReasonCanceled   Reason = "canceled"    // the attempt was abandoned (shutdown)
	ReasonInvalid    Reason = "invalid"     // the request could not be built (secret, URL)
	ReasonUnknownErr Reason = "unknown_err" // any other error
)

// Result is the classification of one delivery attempt.
//
// Retryable is the input the retry policy will need (retries arrive in a
// later issue): it says whether trying the same request again could succeed,
// not whether to do so now.
type Result struct {
	Delivered bool
	Status    int    // HTTP status, 0 when there was no response
	Reason    Reason // empty when Delivered
	Retryable bool
}

// Outcome classifies one attempt from the response status (0 when none) and
// the error returned by the client (nil when a response arrived).
//
//   - 2xx: delivered.
//   - 408, 429 and 5xx: failed, retryable (the receiver is busy or broken for now).
//   - other statuses (4xx, including 410 Gone, and stray 1xx/3xx): failed, not retryable.
//   - timeouts and connection errors: failed, retryable.
//   - refused by the SSRF guard, a redirect, an invalid request: failed, not retryable.
//   - canceled: failed, retryable (we gave up, not the receiver).
func Outcome(status int, err error) Result {
	if err == nil {
		switch {
		case status >= 200 && status < 300:
			return Result{Delivered: true, Status: status}
		case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests, status >= 500:
			return Result{Status: status, Reason: ReasonStatus, Retryable: true}
		default:
			return Result{Status: status, Reason: ReasonStatus}
		}
	}
	r := Result{Status: status}
	switch {
	case errors.Is(err, ssrf.ErrProhibitedIP), errors.Is(err, ssrf.ErrProhibitedPort),
		errors.Is(err, ssrf.ErrProhibitedNetwork), errors.Is(err, ssrf.ErrInvalidHostPort):
		r.Reason = ReasonProhibited
	case errors.Is(err, ErrRedirect):
		r.Reason = ReasonRedirect
	case errors.Is(err, ErrInvalidSecret), errors.Is(err, ErrInvalidURL):
		r.Reason = ReasonInvalid
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		r.Reason, r.Retryable = ReasonTimeout, true
	case errors.Is(err, context.Canceled):
		r.Reason, r.Retryable = ReasonCanceled, true
	case isNetwork(err):
		r.Reason, r.Retryable = ReasonConnection, true
	default:
		r.Reason, r.Retryable = ReasonUnknownErr, true
	}
	return r
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// isNetwork reports whether err came from the transport (the client wraps
// every transport error in *url.Error; dial, DNS and TLS errors are below it).
func isNetwork(err error) bool {
	var ue *url.Error
	var oe *net.OpError
	var de *net.DNSError
	return errors.As(err, &ue) || errors.As(err, &oe) || errors.As(err, &de)
}

// SafeError returns err without the *url.Error wrapper the HTTP client adds,
// whose text quotes the request URL (which may carry a token). What remains
// names the operation and the address, never the URL, headers or body.
func SafeError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
