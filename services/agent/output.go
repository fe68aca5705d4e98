package agent

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/shanenoi/otariinae/pkg/wire"
)

// maxLine is the longest line published as one message; longer lines are
// split so one runaway line cannot exceed the server's max payload.
const maxLine = 64 << 10

// Values of the wire.HeaderLogStream header.
const (
	streamStdout = "stdout"
	streamStderr = "stderr"
	streamSystem = "system" // lines the agent writes itself, and git's output
)

const redacted = "[REDACTED]"

// newRedactor replaces the value of every agent-side variable named in
// secrets (and of every job env variable with such a name). Longer values
// come first, so a secret containing another is redacted whole. It returns
// nil when there is nothing to redact.
func newRedactor(secrets []string, jobEnv map[string]string) *strings.Replacer {
	seen := map[string]bool{}
	var values []string
	for _, name := range secrets {
		for _, v := range []string{os.Getenv(name), jobEnv[name]} {
			if v != "" && !seen[v] {
				seen[v] = true
				values = append(values, v)
			}
		}
	}
	if len(values) == 0 {
		return nil
	}
	sort.Slice(values, func(i, j int) bool { return len(values[i]) > len(values[j]) })
	pairs := make([]string, 0, 2*len(values))
	for _, v := range values {
		pairs = append(pairs, v, redacted)
	}
	return strings.NewReplacer(pairs...)
}

// logSink publishes one job's output, one message per line, with async
// publishes: the caller waits for all of them with PublishAsyncComplete
// before reporting the job finished.
type logSink struct {
	js      jetstream.JetStream
	subject string
	jobID   string
	redact  *strings.Replacer
	log     *slog.Logger
	failed  atomic.Int64
}

func (s *logSink) publish(stream string, line []byte) {
	text := string(line)
	if s.redact != nil {
		text = s.redact.Replace(text)
	}
	msg := &nats.Msg{Subject: s.subject, Data: []byte(text), Header: nats.Header{}}
	msg.Header.Set(wire.HeaderLogStream, stream)
	msg.Header.Set(wire.HeaderJobID, s.jobID)
	msg.Header.Set(wire.HeaderContentType, wire.ContentTypeTextLog)
	// A command writing faster than JetStream stores is slowed down (its
	// pipe fills while this blocks) rather than losing lines: the default
	// stall wait of 200ms would drop them.
	if _, err := s.js.PublishMsgAsync(msg, jetstream.WithStallWait(logFlushTimeout)); err != nil {
		// Only the first failure is logged: a NATS outage would otherwise
		// turn every output line into a log record.
		if s.failed.Add(1) == 1 {
			s.log.Warn("publish log line", "err", err)
		}
	}
}

// system publishes a line the agent writes itself.
func (s *logSink) system(format string, args ...any) {
	s.publish(streamSystem, []byte(fmt.Sprintf(format, args...)))
}

// writer returns an io.Writer that publishes what it is given line by line.
// Call flush once the writer gets no more input.
func (s *logSink) writer(stream string) *lineWriter {
	return &lineWriter{out: func(line []byte) { s.publish(stream, line) }}
}

// lineWriter splits a byte stream into lines of at most maxLine bytes.
// exec.Cmd calls Write from one goroutine per stream; a lineWriter serves one
// stream, so it needs no lock.
type lineWriter struct {
	out func(line []byte) // gets each line, without its newline
	buf []byte
	// split is set when the last line was cut at maxLine, so the newline
	// that ends the rest of it does not produce an extra empty line.
	split bool
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		room := maxLine - len(w.buf)
		if i := bytes.IndexByte(p, '\n'); i >= 0 && i <= room {
			if i == 0 && len(w.buf) == 0 && w.split {
				w.split = false
				p = p[1:]
				continue
			}
			w.buf = append(w.buf, p[:i]...)
			w.emit(false)
			p = p[i+1:]
			continue
		}
		take := min(room, len(p))
		w.buf = append(w.buf, p[:take]...)
		p = p[take:]
		if len(w.buf) == maxLine {
			w.emit(true)
		}
	}
	return n, nil
}

func (w *lineWriter) emit(split bool) {
	line := bytes.TrimSuffix(w.buf, []byte{'\r'})
	w.out(line)
	w.buf = w.buf[:0]
	w.split = split
}

// flush publishes a last line that had no newline.
func (w *lineWriter) flush() {
	if len(w.buf) > 0 {
		w.emit(false)
	}
}
