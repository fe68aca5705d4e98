package hook

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"code.dny.dev/ssrf"
)

// ErrRedirect is returned (wrapped in a *url.Error) when a receiver answers
// with a redirect. Redirects are never followed: a receiver that moves is a
// configuration problem, and following one could lead the signed body (and
// any configured auth headers) somewhere nobody configured.
var ErrRedirect = errors.New("webhook receiver redirected; redirects are not followed")

// ParseAllow parses a comma-separated list of CIDR prefixes (e.g.
// "127.0.0.0/8, ::1/128") that outbound hooks may reach even though the
// SSRF guard denies them by default. A bare address is taken as a single
// host (/32 or /128). The empty string is an empty list.
func ParseAllow(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("allowed network %d %q: want a CIDR prefix such as 10.0.0.0/8 or ::1/128", i+1, f)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("allowed network %d %q: want a CIDR prefix such as 10.0.0.0/8 or ::1/128", i+1, f)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// NewGuard returns the SSRF guard NewClient dials through: any port (hook
// receivers often listen on non-standard ones; the guard is about addresses),
// TCP only, IANA special-purpose ranges denied unless listed in allow.
func NewGuard(allow []netip.Prefix) *ssrf.Guardian {
	var v4, v6 []netip.Prefix
	for _, p := range allow {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return ssrf.New(
		ssrf.WithAnyPort(),
		ssrf.WithAllowedV4Prefixes(v4...),
		ssrf.WithAllowedV6Prefixes(v6...),
	)
}

// Client timeouts. The whole attempt is bounded by the request context (the
// webhook's configured timeout); these bound the phases that must never take
// long whatever that timeout is.
const (
	dialTimeout         = 10 * time.Second
	tlsHandshakeTimeout = 10 * time.Second
	idleConnTimeout     = 90 * time.Second
)

// NewClient returns the HTTP client for hook deliveries. The guard runs in
// the dialer's Control hook, so it checks the address actually connected to,
// after DNS resolution: DNS rebinding cannot slip past it. There is no
// proxy (the proxy's address is all the guard would see) and redirects are
// refused with ErrRedirect.
//
// The client has no overall Timeout: each request carries the webhook's own
// timeout in its context. Call CloseIdleConnections on the transport (or
// client) when done with it.
func NewClient(allow []netip.Prefix) *http.Client {
	dialer := &net.Dialer{
		Timeout:   dialTimeout,
		KeepAlive: 30 * time.Second,
		Control:   NewGuard(allow).Safe,
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		TLSHandshakeTimeout:   tlsHandshakeTimeout,
		IdleConnTimeout:       idleConnTimeout,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   16,
		ExpectContinueTimeout: time.Second,
	}
	return &http.Client{
		Transport: tr,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return ErrRedirect
		},
	}
}
