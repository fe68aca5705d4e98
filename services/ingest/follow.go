package ingest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shanenoi/otariinae/pkg/api"
	"github.com/shanenoi/otariinae/pkg/flow"
	"github.com/shanenoi/otariinae/pkg/wire"
)

// pingEvery is how often an idle SSE log stream sends a comment, so that
// proxies and clients see the connection alive.
const pingEvery = 15 * time.Second

// logFilter is the ?environment= and ?agent= of a log request.
type logFilter struct {
	environment string
	agent       string
}

func parseLogFilter(r *http.Request) (logFilter, error) {
	q := r.URL.Query()
	f := logFilter{environment: q.Get("environment"), agent: q.Get("agent")}
	if f.environment != "" && !wire.ValidToken(f.environment) {
		return f, errors.New("environment must be an environment name")
	}
	if f.agent != "" && !wire.ValidToken(f.agent) {
		return f, errors.New("agent must be an agent id")
	}
	return f, nil
}

// matchesAny reports whether some flow has a deployment the filter keeps.
func (f logFilter) matchesAny(flows []*flow.Flow) bool {
	if f.environment == "" {
		return true
	}
	for _, fl := range flows {
		for _, d := range fl.Deployments {
			if d.Environment == f.environment {
				return true
			}
		}
	}
	return false
}

// logSource is one deployment's output in the LOGS stream.
type logSource struct {
	subject string // a deployment's subjects, or one agent's
	prefix  string // "environment" or "service/environment"
}

// logSources lists, in pipeline order, the output the filter wants of the
// deployments that have started (a not_started one has none yet).
func logSources(flows []*flow.Flow, f logFilter) []logSource {
	var out []logSource
	multi := len(flows) > 1
	for _, fl := range flows {
		for _, d := range fl.Deployments {
			if d.State == flow.NotStarted || (f.environment != "" && d.Environment != f.environment) {
				continue
			}
			src := logSource{subject: wire.LogSubjectDeployment(d.ID), prefix: d.Environment}
			if f.agent != "" {
				src.subject = wire.LogSubject(d.ID, f.agent)
			}
			if multi {
				src.prefix = fl.Service + "/" + d.Environment
			}
			out = append(out, src)
		}
	}
	return out
}

// formatLogLine renders one LOGS message as "[prefix agent] text\n".
func formatLogLine(prefix, subject string, data []byte) string {
	_, agent, _ := wire.LogSubjectParts(subject)
	return "[" + prefix + " " + agent + "] " + strings.TrimRight(string(data), "\r\n") + "\n"
}

// prefixOf finds the prefix of the deployment a LOGS subject belongs to.
func prefixOf(srcs []logSource, subject string) string {
	dep, _, ok := wire.LogSubjectParts(subject)
	if !ok {
		return "?"
	}
	for _, s := range srcs {
		if d, _, _ := wire.LogSubjectParts(s.subject); d == dep {
			return s.prefix
		}
	}
	return "?"
}

// followLog streams a commit's output as it is published, until every flow
// of the commit is terminal and all of its output was sent, the client goes
// away, or LogFollowMax passes. It reads LOGS through one ordered consumer
// over the subjects of the deployments started so far; when the flows'
// state (polled from Redis) shows new deployments, it replaces the consumer
// with one over the larger set, starting after the last stream sequence
// sent, so lines arrive in stream order, none twice, none missed.
//
// With Accept: text/event-stream it speaks SSE: each line is an event whose
// id is its stream sequence, so a reconnecting EventSource resumes after
// Last-Event-ID; otherwise chunked text/plain.
func (in *Ingest) followLog(w http.ResponseWriter, r *http.Request, repo, commit string, flows []*flow.Flow, filter logFilter) {
	sse := strings.Contains(r.Header.Get("Accept"), "text/event-stream")
	var after uint64 // last stream sequence the client has
	if v := r.Header.Get("Last-Event-ID"); sse && v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			api.Error(w, api.CodeBadRequest, "Last-Event-ID must be an id this stream sent")
			return
		}
		after = n
	}
	ctx, cancel := context.WithTimeout(r.Context(), in.cfg.LogFollowMax)
	defer cancel()
	stream, err := in.js.Stream(ctx, wire.StreamLogs)
	if err != nil {
		in.unavailable(w, "read logs", err)
		return
	}
	in.m.follows.Inc()
	defer in.m.follows.Dec()

	rc := http.NewResponseController(w)
	// A server WriteTimeout would cut the stream: this response lives as
	// long as the deployment.
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	if sse {
		h.Set("Content-Type", "text/event-stream")
	} else {
		h.Set("Content-Type", "text/plain; charset=utf-8")
	}
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_ = rc.Flush()

	f := &follower{in: in, stream: stream, after: after, sse: sse, w: w, rc: rc, lastWrite: time.Now()}
	defer f.close()
	srcs := logSources(flows, filter)
	terminal := allTerminal(flows)
	nextPoll := time.Now().Add(in.followPoll)
	for ctx.Err() == nil {
		if !time.Now().Before(nextPoll) {
			nextPoll = time.Now().Add(in.followPoll)
			fresh, err := in.st.CommitFlows(ctx, repo, commit)
			switch {
			case err == nil:
				srcs, terminal = logSources(fresh, filter), allTerminal(fresh)
			case ctx.Err() == nil:
				// A Redis hiccup: keep streaming what we have, poll again.
				in.log.Warn("follow logs: read flows", "repo", repo, "commit", commit, "err", err)
			}
		}
		if err := f.watch(ctx, srcs); err != nil {
			if ctx.Err() == nil {
				in.log.Warn("follow logs", "repo", repo, "commit", commit, "err", err)
			}
			return
		}
		if f.cons == nil {
			if terminal {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(nextPoll)):
			}
			continue
		}
		n, err := f.fetch(srcs, max(time.Until(nextPoll), 50*time.Millisecond))
		if err != nil {
			if ctx.Err() == nil {
				in.log.Debug("follow logs ended", "repo", repo, "commit", commit, "err", err)
			}
			return
		}
		// The flows were terminal before this fetch began, and agents
		// publish all of a job's output before they report it finished: an
		// empty fetch now means everything was sent.
		if n == 0 && terminal {
			return
		}
		if err := f.ping(); err != nil {
			return
		}
	}
}

func allTerminal(flows []*flow.Flow) bool {
	for _, f := range flows {
		if !f.State.Terminal() {
			return false
		}
	}
	return true
}

// follower is the state of one log stream.
type follower struct {
	in        *Ingest
	stream    jetstream.Stream
	cons      jetstream.Consumer
	subjects  []string
	after     uint64
	sse       bool
	w         http.ResponseWriter
	rc        *http.ResponseController
	lastWrite time.Time
}

// watch makes the consumer cover exactly the subjects of srcs.
func (f *follower) watch(ctx context.Context, srcs []logSource) error {
	subjects := make([]string, 0, len(srcs))
	for _, s := range srcs {
		subjects = append(subjects, s.subject)
	}
	slices.Sort(subjects)
	subjects = slices.Compact(subjects)
	if slices.Equal(subjects, f.subjects) && (f.cons != nil || len(subjects) == 0) {
		return nil
	}
	f.close()
	f.subjects = subjects
	if len(subjects) == 0 {
		return nil
	}
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: subjects, InactiveThreshold: time.Minute}
	if f.after > 0 {
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = f.after + 1
	}
	cons, err := f.stream.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("consume logs: %w", err)
	}
	f.cons = cons
	return nil
}

// close drops the current consumer (best effort: the server also removes
// it after InactiveThreshold).
func (f *follower) close() {
	if f.cons == nil {
		return
	}
	name := f.cons.CachedInfo().Name
	f.cons = nil
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = f.stream.DeleteConsumer(ctx, name)
}

// fetch sends what arrives within wait, and returns how many lines it sent.
func (f *follower) fetch(srcs []logSource, wait time.Duration) (int, error) {
	batch, err := f.cons.Fetch(256, jetstream.FetchMaxWait(wait))
	if err != nil {
		return 0, fmt.Errorf("fetch logs: %w", err)
	}
	n := 0
	var b strings.Builder
	for msg := range batch.Messages() {
		meta, err := msg.Metadata()
		if err != nil {
			continue
		}
		seq := meta.Sequence.Stream
		if seq <= f.after {
			continue
		}
		f.after = seq
		line := formatLogLine(prefixOf(srcs, msg.Subject()), msg.Subject(), msg.Data())
		if f.sse {
			fmt.Fprintf(&b, "id: %d\n", seq)
			for l := range strings.SplitSeq(strings.TrimSuffix(line, "\n"), "\n") {
				b.WriteString("data: ")
				b.WriteString(strings.ReplaceAll(l, "\r", ""))
				b.WriteString("\n")
			}
			b.WriteString("\n")
		} else {
			b.WriteString(line)
		}
		n++
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
		return n, fmt.Errorf("fetch logs: %w", err)
	}
	if n > 0 {
		if _, err := f.w.Write([]byte(b.String())); err != nil {
			return n, err
		}
		if err := f.rc.Flush(); err != nil {
			return n, err
		}
		f.lastWrite = time.Now()
	}
	return n, nil
}

// ping keeps an idle SSE stream alive.
func (f *follower) ping() error {
	if !f.sse || time.Since(f.lastWrite) < f.in.followPing {
		return nil
	}
	if _, err := f.w.Write([]byte(": ping\n\n")); err != nil {
		return err
	}
	f.lastWrite = time.Now()
	return f.rc.Flush()
}
