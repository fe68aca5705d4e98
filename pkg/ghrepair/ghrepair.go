// Package ghrepair closes GitHub delivery gaps. GitHub never retries a
// failed webhook delivery by itself, so a delivery that hit an outage (or a
// 503 from ingest while NATS was down) is lost unless someone asks for it
// again. A Repairer lists each configured hook's recent deliveries through
// GitHub's REST API, picks those that ingest never published nor
// consciously ignored (whatever status GitHub recorded), and asks GitHub to
// redeliver each of them, at most once per delivery GUID.
//
// Any number of ingest replicas run a Repairer; a Redis lease makes one of
// them the scanner, the others wait to take over.
package ghrepair

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-github/v92/github"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/store"
)

// LeaseName is the Redis lease the scanning replica holds.
const LeaseName = "ghrepair"

// Limits of one scan. GitHub keeps deliveries for 30 days but redelivers
// only those of the last 3 days.
const (
	Window           = 72 * time.Hour
	perPage          = 100
	maxPagesPerHook  = 50
	maxRedeliveries  = 100 // per hook and scan: GitHub's API is rate limited
	requestedTTL     = 4 * 24 * time.Hour
	defaultLeaseTTL  = 30 * time.Second
	defaultGrace     = 30 * time.Second
	defaultOverlap   = 15 * time.Minute
	httpTimeout      = 30 * time.Second
	storeOpTimeout   = 5 * time.Second
	scanResultOK     = "ok"
	scanResultError  = "error"
	scanResultPartly = "partial"
)

// Options tune a Repairer; the zero value is production's.
type Options struct {
	// LeaseTTL is the lease's time to live; it is renewed every third.
	LeaseTTL time.Duration
	// Grace skips deliveries younger than this: their attempt may still be
	// in flight, and ingest records a delivery just before answering.
	Grace time.Duration
	// Overlap re-reads this much before the previous complete scan, for
	// deliveries GitHub listed late or that were in their grace period.
	Overlap time.Duration
	// HTTPClient talks to GitHub (default: a client with a 30s timeout).
	HTTPClient *http.Client
	// NowFunc is the clock (default time.Now).
	NowFunc func() time.Time
}

// Repairer is the delivery-gap repair loop.
type Repairer struct {
	conf  *config.Live
	st    *store.Store
	log   *slog.Logger
	opts  Options
	token string
	m     metrics
}

type metrics struct {
	redeliveries *prometheus.CounterVec
	scans        *prometheus.CounterVec
	leader       prometheus.Gauge
}

// New returns a Repairer reading the github: section of conf on every scan.
func New(conf *config.Live, st *store.Store, log *slog.Logger, reg prometheus.Registerer, opts ...Options) (*Repairer, error) {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = defaultLeaseTTL
	}
	if o.Grace <= 0 {
		o.Grace = defaultGrace
	}
	if o.Overlap <= 0 {
		o.Overlap = defaultOverlap
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: httpTimeout}
	}
	if o.NowFunc == nil {
		o.NowFunc = time.Now
	}
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	r := &Repairer{conf: conf, st: st, log: log, opts: o, token: hex.EncodeToString(b)}
	r.m = metrics{
		redeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otariinae_ghrepair_redeliveries_total",
			Help: "Redeliveries asked of GitHub, by result (requested, failed).",
		}, []string{"result"}),
		scans: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "otariinae_ghrepair_scans_total",
			Help: "Scans of one GitHub hook's deliveries, by result (ok, partial, error).",
		}, []string{"result"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "otariinae_ghrepair_leader",
			Help: "1 while this replica holds the repair lease.",
		}),
	}
	for _, c := range []prometheus.Collector{r.m.redeliveries, r.m.scans, r.m.leader} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register ghrepair metrics: %w", err)
		}
	}
	return r, nil
}

// Run repairs until ctx ends: it waits for the lease, then scans every
// repair_interval while it holds it. Without a github: section it idles,
// checking again after a config reload.
func (r *Repairer) Run(ctx context.Context) {
	for {
		if r.conf.Get().GitHub != nil {
			ok, err := r.acquire(ctx)
			if err != nil && ctx.Err() == nil {
				r.log.Warn("repair lease", "err", err)
			}
			if ok {
				r.lead(ctx)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(r.opts.LeaseTTL / 3):
		}
	}
}

func (r *Repairer) acquire(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, storeOpTimeout)
	defer cancel()
	return r.st.AcquireLease(ctx, LeaseName, r.token, r.opts.LeaseTTL)
}

// lead scans while this replica holds the lease, renewing it in the
// background; it returns when the lease is lost, the github: section is
// removed, or ctx ends, and gives the lease up.
func (r *Repairer) lead(ctx context.Context) {
	r.m.leader.Set(1)
	defer r.m.leader.Set(0)
	r.log.Info("repair lease taken")
	lctx, cancel := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		defer cancel()
		for {
			select {
			case <-lctx.Done():
				return
			case <-time.After(r.opts.LeaseTTL / 3):
			}
			rctx, rcancel := context.WithTimeout(lctx, storeOpTimeout)
			ok, err := r.st.RenewLease(rctx, LeaseName, r.token, r.opts.LeaseTTL)
			rcancel()
			if !ok || err != nil {
				if lctx.Err() == nil {
					r.log.Warn("repair lease lost", "err", err)
				}
				return
			}
		}
	}()
	defer func() {
		cancel()
		<-renewed
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), storeOpTimeout)
		defer rcancel()
		if err := r.st.ReleaseLease(rctx, LeaseName, r.token); err != nil {
			r.log.Warn("release repair lease", "err", err)
		}
	}()
	for {
		g := r.conf.Get().GitHub
		if g == nil {
			return
		}
		sctx, scancel := context.WithTimeout(lctx, max(g.RepairInterval.D(), time.Minute))
		r.Scan(sctx)
		scancel()
		select {
		case <-lctx.Done():
			return
		case <-time.After(g.RepairInterval.D()):
		}
	}
}

// Report is what one scan did.
type Report struct {
	Hooks       int
	Failed      int      // hooks whose scan failed or was cut short
	Listed      int      // deliveries listed, every attempt counted
	Redelivered []string // GUIDs whose redelivery GitHub accepted
}

// Scan checks every configured hook once. It returns what it did; errors
// are logged and counted per hook, so one broken hook never blocks the
// others.
func (r *Repairer) Scan(ctx context.Context) Report {
	var rep Report
	g := r.conf.Get().GitHub
	if g == nil {
		return rep
	}
	client, err := r.client(g)
	if err != nil {
		r.log.Error("github client", "err", err)
		rep.Failed = len(g.Hooks)
		r.m.scans.WithLabelValues(scanResultError).Add(float64(len(g.Hooks)))
		return rep
	}
	for _, h := range g.Hooks {
		rep.Hooks++
		if err := r.scanHook(ctx, client, h, &rep); err != nil {
			rep.Failed++
			result := scanResultError
			if errors.Is(err, errPartial) {
				result = scanResultPartly
			}
			r.m.scans.WithLabelValues(result).Inc()
			r.log.Warn("repair scan", "hook", hookName(h), "err", err)
			continue
		}
		r.m.scans.WithLabelValues(scanResultOK).Inc()
	}
	return rep
}

func (r *Repairer) client(g *config.GitHub) (*github.Client, error) {
	base := g.APIURL
	if !strings.HasSuffix(base, "/") {
		base += "/"
	}
	return github.NewClient(
		github.WithHTTPClient(r.opts.HTTPClient),
		github.WithAuthToken(g.Token),
		github.WithURLs(&base, nil),
		github.WithUserAgent("otariinae-ghrepair"),
	)
}

// hookName is a hook's stable name in Redis keys and logs.
func hookName(h config.RepoHook) string {
	if h.Repository != "" {
		return fmt.Sprintf("repo:%s:%d", strings.ToLower(h.Repository), h.HookID)
	}
	return fmt.Sprintf("org:%s:%d", strings.ToLower(h.Organization), h.HookID)
}

var errPartial = errors.New("scan cut short")

// hookAPI is one hook's two endpoints, repository or organization.
type hookAPI struct {
	list      func(ctx context.Context, opts *github.ListCursorOptions) ([]*github.HookDelivery, *github.Response, error)
	redeliver func(ctx context.Context, deliveryID int64) (*github.HookDelivery, *github.Response, error)
}

func apiFor(c *github.Client, h config.RepoHook) hookAPI {
	if h.Repository != "" {
		owner, repo, _ := strings.Cut(h.Repository, "/")
		return hookAPI{
			list: func(ctx context.Context, o *github.ListCursorOptions) ([]*github.HookDelivery, *github.Response, error) {
				return c.Repositories.ListHookDeliveries(ctx, owner, repo, h.HookID, o)
			},
			redeliver: func(ctx context.Context, id int64) (*github.HookDelivery, *github.Response, error) {
				return c.Repositories.RedeliverHookDelivery(ctx, owner, repo, h.HookID, id)
			},
		}
	}
	return hookAPI{
		list: func(ctx context.Context, o *github.ListCursorOptions) ([]*github.HookDelivery, *github.Response, error) {
			return c.Organizations.ListHookDeliveries(ctx, h.Organization, h.HookID, o)
		},
		redeliver: func(ctx context.Context, id int64) (*github.HookDelivery, *github.Response, error) {
			return c.Organizations.RedeliverHookDelivery(ctx, h.Organization, h.HookID, id)
		},
	}
}

// scanHook pages through one hook's deliveries, newest first, back to the
// cutoff, and asks for the redelivery of each GUID that never reached
// ingest. The scan time advances only when the whole window was read.
func (r *Repairer) scanHook(ctx context.Context, c *github.Client, h config.RepoHook, rep *Report) error {
	name := hookName(h)
	now := r.opts.NowFunc()
	cutoff := now.Add(-Window)
	last, err := r.st.RepairScanTime(ctx, name)
	if err != nil {
		return err
	}
	if !last.IsZero() && last.Add(-r.opts.Overlap).After(cutoff) {
		cutoff = last.Add(-r.opts.Overlap)
	}
	hapi := apiFor(c, h)
	checked := map[string]bool{} // GUIDs decided in this scan (attempts share a GUID)
	opts := &github.ListCursorOptions{PerPage: perPage}
	redelivered := 0
	for page := 0; ; page++ {
		if page == maxPagesPerHook {
			return fmt.Errorf("%w: more than %d pages of deliveries", errPartial, maxPagesPerHook)
		}
		ds, resp, err := hapi.list(ctx, opts)
		if err != nil {
			return fmt.Errorf("list deliveries of %s: %w", name, err)
		}
		rep.Listed += len(ds)
		done := resp.Cursor == ""
		for _, d := range ds {
			at := d.GetDeliveredAt().Time
			if !at.IsZero() && at.Before(cutoff) {
				done = true // newest first: the rest is older still
				break
			}
			guid := d.GetGUID()
			if guid == "" || d.GetID() == 0 || checked[guid] || at.After(now.Add(-r.opts.Grace)) {
				continue
			}
			checked[guid] = true
			state, err := r.st.DeliveryState(ctx, guid)
			if err != nil {
				return err
			}
			if state != store.DeliveryUnknown {
				continue
			}
			if redelivered == maxRedeliveries {
				return fmt.Errorf("%w: over %d redeliveries, the rest waits for the next scan", errPartial, maxRedeliveries)
			}
			ok, err := r.redeliver(ctx, hapi, name, d)
			if err != nil {
				return err
			}
			if ok {
				redelivered++
				rep.Redelivered = append(rep.Redelivered, guid)
			}
		}
		if done {
			break
		}
		opts.Cursor = resp.Cursor
	}
	return r.st.SetRepairScanTime(ctx, name, now)
}

// redeliver asks GitHub for one delivery again unless this GUID was asked
// for before. A refused request is forgotten, so the next scan retries it.
func (r *Repairer) redeliver(ctx context.Context, hapi hookAPI, hook string, d *github.HookDelivery) (bool, error) {
	guid := d.GetGUID()
	first, err := r.st.MarkRedelivery(ctx, guid, requestedTTL)
	if err != nil || !first {
		return false, err
	}
	_, _, err = hapi.redeliver(ctx, d.GetID())
	var accepted *github.AcceptedError // GitHub answers 202: queued
	if err != nil && !errors.As(err, &accepted) {
		r.m.redeliveries.WithLabelValues("failed").Inc()
		r.log.Warn("redeliver", "hook", hook, "guid", guid, "delivery_id", d.GetID(), "err", err)
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), storeOpTimeout)
		defer cancel()
		if uerr := r.st.UnmarkRedelivery(uctx, guid); uerr != nil {
			return false, uerr
		}
		return false, nil
	}
	r.m.redeliveries.WithLabelValues("requested").Inc()
	r.log.Info("redelivery requested", "hook", hook, "guid", guid, "delivery_id", d.GetID(),
		"event", d.GetEvent(), "status_code", d.GetStatusCode(), "delivered_at", d.GetDeliveredAt().Time)
	return true, nil
}
