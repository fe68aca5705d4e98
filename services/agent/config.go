package agent

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/shanenoi/otariinae/pkg/wire"
)

// Config is the agent's configuration, read with
// envconfig.Process("otariinae", &cfg): the variables are OTARIINAE_AGENT_ID,
// OTARIINAE_AGENT_LABELS, OTARIINAE_AGENT_WORKDIR,
// OTARIINAE_AGENT_HEARTBEAT_INTERVAL and OTARIINAE_AGENT_SHUTDOWN_GRACE.
type Config struct {
	ID                string        `envconfig:"AGENT_ID" split_words:"true" default:"" desc:"agent id, one subject token [A-Za-z0-9_-]{1,128} (default: the sanitized hostname)"`
	Labels            string        `envconfig:"AGENT_LABELS" split_words:"true" default:"" desc:"labels k=v,k=v used for targeting (agent=<id> and hostname=<host> are implicit)"`
	Workdir           string        `envconfig:"AGENT_WORKDIR" split_words:"true" default:"./agent-work" desc:"directory holding one checkout per service"`
	HeartbeatInterval time.Duration `envconfig:"AGENT_HEARTBEAT_INTERVAL" split_words:"true" default:"10s" desc:"how often the agent announces itself"`
	ShutdownGrace     time.Duration `envconfig:"AGENT_SHUTDOWN_GRACE" split_words:"true" default:"10s" desc:"on shutdown, how long a running deploy may finish on its own; also the wait between SIGTERM and SIGKILL"`
}

// Defaults applied by New when a field is left zero (callers that build a
// Config by hand rather than through envconfig).
const (
	DefaultWorkdir           = "./agent-work"
	DefaultHeartbeatInterval = 10 * time.Second
	DefaultShutdownGrace     = 10 * time.Second
)

// Implicit label keys every agent carries.
const (
	LabelAgent    = "agent"
	LabelHostname = "hostname"
)

var labelRE = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,63}$`)

// ParseLabels parses "k=v,k=v". Keys and values are [A-Za-z0-9._/-]{1,63};
// spaces around pairs and empty pairs (a trailing comma) are ignored; a key
// may appear once.
func ParseLabels(s string) (map[string]string, error) {
	labels := map[string]string{}
	for i, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		k, v, ok := strings.Cut(pair, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok:
			return nil, fmt.Errorf("label pair %d %q: want key=value", i+1, pair)
		case !labelRE.MatchString(k):
			return nil, fmt.Errorf("label pair %d %q: key must match [A-Za-z0-9._/-]{1,63}", i+1, pair)
		case !labelRE.MatchString(v):
			return nil, fmt.Errorf("label pair %d %q: value must match [A-Za-z0-9._/-]{1,63}", i+1, pair)
		}
		if _, dup := labels[k]; dup {
			return nil, fmt.Errorf("label pair %d %q: key %q given twice", i+1, pair, k)
		}
		labels[k] = v
	}
	return labels, nil
}

// sanitizeToken turns s into a valid subject token: every character outside
// [A-Za-z0-9_-] becomes '-', and the result is cut to 128 characters.
func sanitizeToken(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 128 {
		b = b[:128]
	}
	return string(b)
}

// sanitizeLabelValue makes s usable as a label value (hostnames may be up to
// 253 characters and, on odd systems, hold anything).
func sanitizeLabelValue(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '/') {
			b[i] = '-'
		}
	}
	if len(b) > 63 {
		b = b[:63]
	}
	if len(b) == 0 {
		return "unknown"
	}
	return string(b)
}

// resolved is a Config with defaults applied and everything validated.
type resolved struct {
	id        string
	hostname  string
	labels    map[string]string
	workdir   string // absolute
	heartbeat time.Duration
	grace     time.Duration
}

func (c Config) resolve() (resolved, error) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	r := resolved{hostname: host, heartbeat: c.HeartbeatInterval, grace: c.ShutdownGrace}
	r.id = c.ID
	if r.id == "" {
		r.id = sanitizeToken(host)
	}
	if !wire.ValidToken(r.id) {
		return r, fmt.Errorf("agent id %q: must match [A-Za-z0-9_-]{1,128}", r.id)
	}
	explicit, err := ParseLabels(c.Labels)
	if err != nil {
		return r, fmt.Errorf("agent labels: %w", err)
	}
	r.labels = map[string]string{LabelHostname: sanitizeLabelValue(host)}
	for k, v := range explicit {
		r.labels[k] = v
	}
	// agent=<id> always wins: targeting by agent must name exactly one host.
	r.labels[LabelAgent] = r.id
	wd := c.Workdir
	if wd == "" {
		wd = DefaultWorkdir
	}
	if r.workdir, err = absPath(wd); err != nil {
		return r, fmt.Errorf("agent workdir %q: %w", wd, err)
	}
	if r.heartbeat <= 0 {
		r.heartbeat = DefaultHeartbeatInterval
	}
	if r.grace <= 0 {
		r.grace = DefaultShutdownGrace
	}
	return r, nil
}
