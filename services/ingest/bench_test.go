package ingest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/go-github/v92/github"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shanenoi/otariinae/pkg/config"
	"github.com/shanenoi/otariinae/pkg/store"
	"github.com/shanenoi/otariinae/pkg/testenv"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// benchConns is how many connections deliver concurrently.
const benchConns = 64

// benchPayload returns a push to acme/web main of exactly size bytes.
func benchPayload(size int) []byte {
	var p map[string]any
	_ = json.Unmarshal(testenv.PushPayload("acme/web", "refs/heads/main", strings.Repeat("d4", 20)), &p)
	pad := func(n int) []byte {
		p["commits"] = []map[string]any{{"id": strings.Repeat("d4", 20), "message": strings.Repeat("x", n)}}
		b, _ := json.Marshal(p)
		return b
	}
	base := len(pad(0))
	return pad(max(size-base, 0))
}

// ceilingHandler is the least a webhook receiver can do: verify the HMAC
// and publish with a PubAck, nothing else.
func ceilingHandler(js jetstream.JetStream, secret []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody))
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if err := github.ValidateSignature(r.Header.Get(github.SHA256SignatureHeader), body, secret); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		msg := &nats.Msg{Subject: wire.GitHubSubject("push"), Data: body, Header: nats.Header{}}
		if _, err := js.PublishMsg(r.Context(), msg, jetstream.WithMsgID(r.Header.Get("X-GitHub-Delivery"))); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

type benchResult struct {
	rate float64 // deliveries per second
	p99  time.Duration
}

// drive sends n signed deliveries of body to url over benchConns
// keep-alive connections and measures throughput and latency.
func drive(b *testing.B, url string, n int, body []byte, prefix string) benchResult {
	b.Helper()
	sig := testenv.SignGitHub(ghSecret, body)
	tr := &http.Transport{MaxIdleConnsPerHost: benchConns, MaxConnsPerHost: benchConns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var next atomic.Int64
	var failed atomic.Int64
	lat := make([][]time.Duration, benchConns)
	var wg sync.WaitGroup
	start := time.Now()
	for c := range benchConns {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-GitHub-Event", "push")
				req.Header.Set("X-GitHub-Delivery", prefix+strconv.FormatInt(i, 10))
				req.Header.Set("X-Hub-Signature-256", sig)
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				lat[c] = append(lat[c], time.Since(t0))
				if resp.StatusCode != http.StatusAccepted {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if f := failed.Load(); f > 0 {
		b.Fatalf("%d of %d deliveries to %s failed", f, n, url)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	return benchResult{rate: float64(n) / elapsed.Seconds(), p99: all[len(all)*99/100]}
}

// procStatusMB reads a memory figure (VmRSS, VmHWM) of this process.
func procStatusMB(field string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}

// BenchmarkIngest measures signed 8 KB push deliveries through the real
// ingest handler (real HTTP, embedded JetStream, redis-server) against the
// ceiling measured in the same run: a handler that only verifies the HMAC
// and publishes with a PubAck to the same JetStream.
func BenchmarkIngest(b *testing.B) {
	n := testenv.StartNATS(b)
	js := n.JetStream(b)
	rd := testenv.StartRedis(b)
	conf, err := config.Parse(strings.NewReader(ghConfYAML))
	if err != nil {
		b.Fatal(err)
	}
	in, err := New(Config{GitHubWebhookSecret: ghSecret}, n.Conn(b), store.New(rd.Client, rd.Prefix), config.Static(conf),
		slog.New(slog.DiscardHandler), prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	r := chi.NewRouter()
	in.Mount(r)
	ours := httptest.NewServer(r)
	defer ours.Close()
	ceiling := httptest.NewServer(ceilingHandler(js, []byte(ghSecret)))
	defer ceiling.Close()
	body := benchPayload(8 << 10)
	run := fmt.Sprintf("b%d-", time.Now().UnixNano())

	// Warm both paths (connections, JetStream, scripts) before measuring.
	drive(b, ceiling.URL+"/acme/web/", benchConns*4, body, run+"wc-")
	drive(b, ours.URL+"/acme/web/", benchConns*4, body, run+"wo-")

	b.ReportAllocs()
	b.ResetTimer()
	// Alternate halves so neither side always runs on a warmer system.
	half := max(b.N/2, benchConns)
	c1 := drive(b, ceiling.URL+"/acme/web/", half, body, run+"c1-")
	o1 := drive(b, ours.URL+"/acme/web/", half, body, run+"o1-")
	o2 := drive(b, ours.URL+"/acme/web/", half, body, run+"o2-")
	c2 := drive(b, ceiling.URL+"/acme/web/", half, body, run+"c2-")
	b.StopTimer()

	oursRate, ceilRate := (o1.rate+o2.rate)/2, (c1.rate+c2.rate)/2
	b.ReportMetric(oursRate, "deliveries/s")
	b.ReportMetric(float64(max(o1.p99, o2.p99).Microseconds())/1000, "p99_ms")
	b.ReportMetric(ceilRate, "ceiling_deliveries/s")
	b.ReportMetric(float64(max(c1.p99, c2.p99).Microseconds())/1000, "ceiling_p99_ms")
	b.ReportMetric(oursRate/ceilRate, "ratio")
	b.ReportMetric(procStatusMB("VmRSS"), "rss_MB")
	b.ReportMetric(procStatusMB("VmHWM"), "peak_rss_MB")
}
