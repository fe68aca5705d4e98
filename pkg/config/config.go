// Package config loads and validates the YAML file named by OTARIINAE_CONFIG:
// services, their pipelines, and the webhooks that hear about them.
//
// Unknown keys are rejected with their line; every other error names the
// field path (services[0].pipeline[1].targets). Keys the design reserves for
// capabilities not built yet are parsed, and a value that would need them is
// rejected rather than silently ignored.
package config

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is a time.Duration written as a Go duration string ("90s", "30m").
type Duration time.Duration

// UnmarshalYAML parses a Go duration string.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration such as 90s or 30m", n.Line)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("line %d: invalid duration %q: want a Go duration such as 90s or 30m", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Config is the whole file.
type Config struct {
	Services []Service `yaml:"services"`
	Webhooks []Webhook `yaml:"webhooks"`
	Tokens   []Token   `yaml:"tokens"`
	GitHub   *GitHub   `yaml:"github"`

	// byArtifact maps a lower-case artifact to the indexes of the services
	// that deploy it, built by Parse: routing an event does not scan every
	// service. nil (a Config built in code) means scan.
	byArtifact map[string][]int
}

// Service is one deployable thing and its pipeline.
type Service struct {
	Name            string        `yaml:"name"`
	Repository      string        `yaml:"repository"`
	GitURL          string        `yaml:"git_url"`
	Secret          string        `yaml:"secret"`
	Branches        []string      `yaml:"branches"`
	Tags            bool          `yaml:"tags"`
	PullRequests    bool          `yaml:"pull_requests"`
	Artifacts       []string      `yaml:"artifacts"`
	Deploy          string        `yaml:"deploy"`
	Shell           bool          `yaml:"shell"`
	Secrets         []string      `yaml:"secrets"`
	FailureStrategy string        `yaml:"failure_strategy"`
	Supersede       *bool         `yaml:"supersede"`
	Pipeline        []Environment `yaml:"pipeline"`
}

// Environment is one stage of a pipeline.
type Environment struct {
	Environment string            `yaml:"environment"`
	Targets     map[string]string `yaml:"targets"`
	Strategy    string            `yaml:"strategy"`
	MaxParallel any               `yaml:"max_parallel"`
	MaxFailures int               `yaml:"max_failures"`
	Timeout     Duration          `yaml:"timeout"`
	Env         map[string]string `yaml:"env"`
	Parallel    bool              `yaml:"parallel"`
	Promotions  []Promotion       `yaml:"promotions"`
}

// Promotion gates an environment after its deploy completed.
type Promotion struct {
	Name     string   `yaml:"name"`
	Type     string   `yaml:"type"`
	Command  string   `yaml:"command"`
	Timeout  Duration `yaml:"timeout"`
	Duration Duration `yaml:"duration"`
}

// Webhook is a subscriber to state changes.
type Webhook struct {
	Name          string            `yaml:"name"`
	URL           string            `yaml:"url"`
	Secret        string            `yaml:"secret"`
	Events        []string          `yaml:"events"`
	Services      []string          `yaml:"services"`
	Headers       map[string]string `yaml:"headers"`
	Timeout       Duration          `yaml:"timeout"`
	RateLimit     float64           `yaml:"rate_limit"`
	MaxInFlight   int               `yaml:"max_in_flight"`
	Ordered       bool              `yaml:"ordered"`
	Format        string            `yaml:"format"`
	RetrySchedule []Duration        `yaml:"retry_schedule"`
	DisableAfter  Duration          `yaml:"disable_after"`
	Token         string            `yaml:"token"`
	APIURL        string            `yaml:"api_url"`
}

// Token is an API token, stored as the hex SHA-256 of its value.
type Token struct {
	Name   string   `yaml:"name"`
	SHA256 string   `yaml:"sha256"`
	Scopes []string `yaml:"scopes"`
}

// GitHub configures delivery-gap repair.
type GitHub struct {
	APIURL         string     `yaml:"api_url"`
	Token          string     `yaml:"token"`
	RepairInterval Duration   `yaml:"repair_interval"`
	Hooks          []RepoHook `yaml:"hooks"`
}

// RepoHook names one GitHub webhook to watch.
type RepoHook struct {
	Repository   string `yaml:"repository"`
	Organization string `yaml:"organization"`
	HookID       int64  `yaml:"hook_id"`
}

// Defaults.
const (
	DefaultDeployTimeout  = 30 * time.Minute
	DefaultWebhookTimeout = 15 * time.Second
	DefaultMaxInFlight    = 16
)

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	defer f.Close()
	cfg, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes, defaults and validates a config.
func Parse(r io.Reader) (*Config, error) {
	b, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read: %w", err)
	}
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("parse: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			var root yaml.Node
			if yaml.Unmarshal(b, &root) == nil {
				fe.Line = lineOf(&root, fe.Field)
			}
		}
		return nil, err
	}
	cfg.byArtifact = make(map[string][]int)
	for i := range cfg.Services {
		seen := make(map[string]bool, len(cfg.Services[i].Artifacts))
		for _, a := range cfg.Services[i].Artifacts {
			if k := strings.ToLower(a); !seen[k] {
				seen[k] = true
				cfg.byArtifact[k] = append(cfg.byArtifact[k], i)
			}
		}
	}
	return &cfg, nil
}

var annotationRE = regexp.MustCompile(` \([^)]*\)`)

// lineOf finds the line of a field path such as
// "services[0] (web).pipeline[1].targets" in a parsed document: the line of
// the deepest part of the path that exists (0 when none does).
func lineOf(root *yaml.Node, field string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range strings.Split(annotationRE.ReplaceAllString(field, ""), ".") {
		name, idx, hasIdx := part, 0, false
		if i := strings.IndexByte(part, '['); i > 0 && strings.HasSuffix(part, "]") {
			if v, err := strconv.Atoi(part[i+1 : len(part)-1]); err == nil {
				name, idx, hasIdx = part[:i], v, true
			}
		}
		if n.Kind != yaml.MappingNode {
			return line
		}
		var val *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == name {
				line, val = n.Content[i].Line, n.Content[i+1]
				break
			}
		}
		if val == nil {
			return line
		}
		n = val
		if hasIdx {
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	repoRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,38}/[A-Za-z0-9._-]{1,100}$`)
	labelRE   = regexp.MustCompile(`^[A-Za-z0-9._/-]{1,63}$`)
	envVarRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	sha256RE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	orgRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,38}$`)
	artRE     = regexp.MustCompile(`^[A-Za-z0-9._-]+:[A-Za-z0-9._/-]+$`)
	eventRE   = regexp.MustCompile(`^(\*|[a-z]+\.(\*|[a-z]+))$`)
	hookNames = []string{
		"flow.created", "flow.started", "flow.succeeded", "flow.failed", "flow.cancelled",
		"deployment.created", "deployment.started", "deployment.completed",
		"deployment.succeeded", "deployment.failed", "deployment.cancelled",
		"promotion.started", "promotion.passed", "promotion.failed",
	}
)

// HookTypes lists every hook type the system emits.
func HookTypes() []string { return append([]string(nil), hookNames...) }

func (c *Config) defaults() error {
	for i := range c.Services {
		s := &c.Services[i]
		if s.GitURL == "" && s.Repository != "" {
			s.GitURL = "https://github.com/" + s.Repository + ".git"
		}
		if len(s.Artifacts) == 0 && s.Repository != "" {
			s.Artifacts = []string{ArtifactOf(s.Repository)}
		}
		if s.FailureStrategy == "" {
			s.FailureStrategy = "stop"
		}
		if s.Supersede == nil {
			t := true
			s.Supersede = &t
		}
		for j := range s.Pipeline {
			e := &s.Pipeline[j]
			if e.Strategy == "" {
				e.Strategy = "all_at_once"
			}
			if e.Timeout == 0 {
				e.Timeout = Duration(DefaultDeployTimeout)
			}
		}
	}
	if g := c.GitHub; g != nil {
		if g.APIURL == "" {
			g.APIURL = "https://api.github.com"
		}
		if g.RepairInterval == 0 {
			g.RepairInterval = Duration(5 * time.Minute)
		}
	}
	for i := range c.Webhooks {
		w := &c.Webhooks[i]
		if len(w.Events) == 0 {
			w.Events = []string{"*"}
		}
		if w.Timeout == 0 {
			w.Timeout = Duration(DefaultWebhookTimeout)
		}
		if w.MaxInFlight == 0 {
			w.MaxInFlight = DefaultMaxInFlight
		}
		if w.Format == "" {
			w.Format = "native"
		}
	}
	return nil
}

// FieldError is a validation error naming the offending field, and its
// line when the config was parsed from a file.
type FieldError struct {
	Field   string
	Message string
	Line    int
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %s: %s", e.Line, e.Field, e.Message)
	}
	return e.Field + ": " + e.Message
}

func ferr(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

// uniqueName checks that name is a valid name ([a-z0-9-]) not yet in seen,
// and records it.
func uniqueName(field, kind, name string, seen map[string]bool) error {
	if !nameRE.MatchString(name) {
		return ferr(field, "%q must match [a-z0-9][a-z0-9-]*", name)
	}
	if seen[name] {
		return ferr(field, "duplicate %s %q", kind, name)
	}
	seen[name] = true
	return nil
}

// Validate checks the whole config and returns the first problem found.
func (c *Config) Validate() error {
	names := map[string]bool{}
	for i, s := range c.Services {
		p := fmt.Sprintf("services[%d]", i)
		if err := uniqueName(p+".name", "service", s.Name, names); err != nil {
			return err
		}
		p = fmt.Sprintf("services[%d] (%s)", i, s.Name)
		if !repoRE.MatchString(s.Repository) {
			return ferr(p+".repository", "%q must be a GitHub org/repo", s.Repository)
		}
		if err := validGitURL(s.GitURL); err != nil {
			return ferr(p+".git_url", "%v", err)
		}
		if len(s.Branches) == 0 {
			return ferr(p+".branches", "list at least one branch whose pushes deploy")
		}
		for j, b := range s.Branches {
			if b == "" || strings.HasPrefix(b, "-") || strings.HasPrefix(b, "refs/") {
				return ferr(fmt.Sprintf("%s.branches[%d]", p, j), "%q must be a branch name such as main", b)
			}
		}
		for j, a := range s.Artifacts {
			if !artRE.MatchString(a) {
				return ferr(fmt.Sprintf("%s.artifacts[%d]", p, j), "%q must be group:name", a)
			}
		}
		if len(strings.Fields(s.Deploy)) == 0 {
			return ferr(p+".deploy", "the deploy command is required")
		}
		for j, v := range s.Secrets {
			if !envVarRE.MatchString(v) {
				return ferr(fmt.Sprintf("%s.secrets[%d]", p, j), "%q is not a variable name", v)
			}
		}
		switch s.FailureStrategy {
		case "stop", "rollback":
		default:
			return ferr(p+".failure_strategy", "%q must be stop or rollback", s.FailureStrategy)
		}
		if len(s.Pipeline) == 0 {
			return ferr(p+".pipeline", "list at least one environment")
		}
		envs := map[string]bool{}
		for j, e := range s.Pipeline {
			ep := fmt.Sprintf("%s.pipeline[%d]", p, j)
			if err := uniqueName(ep+".environment", "environment", e.Environment, envs); err != nil {
				return err
			}
			if len(e.Targets) == 0 {
				return ferr(ep+".targets", "name at least one label pair, e.g. {env: %s}", e.Environment)
			}
			for k, v := range e.Targets {
				if !labelRE.MatchString(k) || !labelRE.MatchString(v) {
					return ferr(ep+".targets", "label %q=%q: keys and values must match [A-Za-z0-9._/-]+", k, v)
				}
			}
			switch e.Strategy {
			case "all_at_once":
			case "rolling":
				return ferr(ep+".strategy", "rolling is not supported in this version; use all_at_once")
			default:
				return ferr(ep+".strategy", "%q must be all_at_once or rolling", e.Strategy)
			}
			if e.MaxParallel != nil || e.MaxFailures != 0 {
				return ferr(ep+".max_parallel", "max_parallel and max_failures apply to strategy rolling, not supported in this version")
			}
			if e.Timeout < 0 {
				return ferr(ep+".timeout", "must be positive")
			}
			for k := range e.Env {
				if !envVarRE.MatchString(k) {
					return ferr(ep+".env", "%q is not a variable name", k)
				}
				if strings.HasPrefix(k, "OTARIINAE_") {
					return ferr(ep+".env", "%q: the OTARIINAE_ prefix is reserved for variables the agent sets", k)
				}
			}
			if err := validatePromotions(ep, e.Promotions); err != nil {
				return err
			}
		}
	}
	hooks := map[string]bool{}
	for i, w := range c.Webhooks {
		p := fmt.Sprintf("webhooks[%d]", i)
		if err := uniqueName(p+".name", "webhook", w.Name, hooks); err != nil {
			return err
		}
		p = fmt.Sprintf("webhooks[%d] (%s)", i, w.Name)
		if !strings.HasPrefix(w.URL, "http://") && !strings.HasPrefix(w.URL, "https://") {
			return ferr(p+".url", "%q must be an http:// or https:// URL", w.URL)
		}
		if w.Secret != "" {
			if _, err := DecodeSecret(w.Secret); err != nil {
				return ferr(p+".secret", "%v", err)
			}
		}
		for j, ev := range w.Events {
			if !eventRE.MatchString(ev) || !matchesAny(ev) {
				return ferr(fmt.Sprintf("%s.events[%d]", p, j), "%q matches no hook type; use *, flow.*, deployment.*, promotion.* or a type such as deployment.succeeded", ev)
			}
		}
		for j, sv := range w.Services {
			if !names[sv] {
				return ferr(fmt.Sprintf("%s.services[%d]", p, j), "unknown service %q", sv)
			}
		}
		if w.Timeout < 0 {
			return ferr(p+".timeout", "must be positive")
		}
		if w.Format != "native" {
			return ferr(p+".format", "%q is not supported in this version; use native", w.Format)
		}
		if w.RateLimit != 0 || w.Ordered || len(w.RetrySchedule) > 0 || w.DisableAfter != 0 || w.Token != "" || w.APIURL != "" {
			return ferr(p, "rate_limit, ordered, retry_schedule, disable_after, token and api_url are not supported in this version")
		}
		if w.MaxInFlight < 0 {
			return ferr(p+".max_in_flight", "must be positive")
		}
	}
	tokens := map[string]bool{}
	for i, tk := range c.Tokens {
		p := fmt.Sprintf("tokens[%d]", i)
		if err := uniqueName(p+".name", "token", tk.Name, tokens); err != nil {
			return err
		}
		if !sha256RE.MatchString(tk.SHA256) {
			return ferr(p+".sha256", "must be the 64 hex digits of the token's SHA-256 (printf %%s TOKEN | sha256sum)")
		}
		if len(tk.Scopes) == 0 {
			return ferr(p+".scopes", "list at least one of read, write, admin")
		}
		for j, sc := range tk.Scopes {
			if sc != "read" && sc != "write" && sc != "admin" {
				return ferr(fmt.Sprintf("%s.scopes[%d]", p, j), "%q must be read, write or admin", sc)
			}
		}
	}
	if g := c.GitHub; g != nil {
		if !strings.HasPrefix(g.APIURL, "https://") && !strings.HasPrefix(g.APIURL, "http://") {
			return ferr("github.api_url", "%q must be an http(s) URL", g.APIURL)
		}
		if g.Token == "" {
			return ferr("github.token", "a token that may read and redeliver the hooks' deliveries is required")
		}
		if g.RepairInterval < Duration(time.Minute) {
			return ferr("github.repair_interval", "must be at least 1m")
		}
		if len(g.Hooks) == 0 {
			return ferr("github.hooks", "list the hooks to repair: {repository: org/repo, hook_id: N} or {organization: org, hook_id: N}")
		}
		for i, h := range g.Hooks {
			p := fmt.Sprintf("github.hooks[%d]", i)
			switch {
			case (h.Repository == "") == (h.Organization == ""):
				return ferr(p, "set exactly one of repository and organization")
			case h.Repository != "" && !repoRE.MatchString(h.Repository):
				return ferr(p+".repository", "%q must be a GitHub org/repo", h.Repository)
			case h.Organization != "" && !orgRE.MatchString(h.Organization):
				return ferr(p+".organization", "%q is not a GitHub organization name", h.Organization)
			case h.HookID <= 0:
				return ferr(p+".hook_id", "must be the hook's positive id")
			}
		}
	}
	return nil
}

func validatePromotions(ep string, ps []Promotion) error {
	seen := map[string]bool{}
	for k, pr := range ps {
		pp := fmt.Sprintf("%s.promotions[%d]", ep, k)
		if err := uniqueName(pp+".name", "promotion", pr.Name, seen); err != nil {
			return err
		}
		pp = fmt.Sprintf("%s.promotions[%d] (%s)", ep, k, pr.Name)
		if pr.Timeout < 0 || pr.Duration < 0 {
			return ferr(pp, "durations must be positive")
		}
		switch pr.Type {
		case "script":
			if len(strings.Fields(pr.Command)) == 0 {
				return ferr(pp+".command", "a script promotion needs a command")
			}
		case "wait":
			if pr.Duration <= 0 {
				return ferr(pp+".duration", "a wait promotion needs a duration such as 10m")
			}
		case "manual", "external":
		default:
			return ferr(pp+".type", "%q must be script, manual, external or wait", pr.Type)
		}
		if pr.Type != "script" && pr.Command != "" {
			return ferr(pp+".command", "only script promotions run a command")
		}
		if pr.Type != "wait" && pr.Duration != 0 {
			return ferr(pp+".duration", "only wait promotions have a duration (use timeout)")
		}
		if pr.Type == "wait" && pr.Timeout != 0 {
			return ferr(pp+".timeout", "a wait promotion's duration is its limit; remove timeout")
		}
	}
	return nil
}

func validGitURL(u string) error {
	if strings.HasPrefix(u, "-") {
		return fmt.Errorf("%q must not start with -", u)
	}
	for _, pre := range []string{"https://", "http://", "ssh://", "git://", "file://", "git@"} {
		if strings.HasPrefix(u, pre) {
			return nil
		}
	}
	return fmt.Errorf("%q must be an https://, ssh://, git://, file:// or git@host: URL", u)
}

func matchesAny(pattern string) bool {
	for _, t := range hookNames {
		if MatchEvent(pattern, t) {
			return true
		}
	}
	return false
}

// MatchEvent reports whether a webhook's events pattern selects hook type typ.
// Patterns are "*", "<kind>.*" or an exact type.
func MatchEvent(pattern, typ string) bool {
	if pattern == "*" || pattern == typ {
		return true
	}
	if kind, ok := strings.CutSuffix(pattern, ".*"); ok {
		return strings.HasPrefix(typ, kind+".")
	}
	return false
}

// Wants reports whether webhook w subscribes to hook type typ for service svc.
func (w *Webhook) Wants(typ, svc string) bool {
	if len(w.Services) > 0 {
		found := false
		for _, s := range w.Services {
			found = found || s == svc
		}
		if !found {
			return false
		}
	}
	for _, p := range w.Events {
		if MatchEvent(p, typ) {
			return true
		}
	}
	return false
}

// ArtifactOf is the artifact name a repository's pushes create: "org:repo".
func ArtifactOf(repository string) string {
	return strings.Replace(repository, "/", ":", 1)
}

// ServicesForRepository returns the services whose repository is repo
// (GitHub names compare case-insensitively).
func (c *Config) ServicesForRepository(repo string) []*Service {
	var out []*Service
	for i := range c.Services {
		if strings.EqualFold(c.Services[i].Repository, repo) {
			out = append(out, &c.Services[i])
		}
	}
	return out
}

// ServicesForArtifact returns the services that deploy artifact.
func (c *Config) ServicesForArtifact(artifact string) []*Service {
	var out []*Service
	if c.byArtifact != nil {
		for _, i := range c.byArtifact[strings.ToLower(artifact)] {
			out = append(out, &c.Services[i])
		}
		return out
	}
	for i := range c.Services {
		for _, a := range c.Services[i].Artifacts {
			if strings.EqualFold(a, artifact) {
				out = append(out, &c.Services[i])
				break
			}
		}
	}
	return out
}

// Service returns the service named name, or nil.
func (c *Config) Service(name string) *Service {
	for i := range c.Services {
		if c.Services[i].Name == name {
			return &c.Services[i]
		}
	}
	return nil
}

// Webhook returns the webhook named name, or nil.
func (c *Config) Webhook(name string) *Webhook {
	for i := range c.Webhooks {
		if c.Webhooks[i].Name == name {
			return &c.Webhooks[i]
		}
	}
	return nil
}

// TracksBranch reports whether a push to branch creates an artifact.
func (s *Service) TracksBranch(branch string) bool {
	for _, b := range s.Branches {
		if b == branch {
			return true
		}
	}
	return false
}

// DecodeSecret returns the key bytes of a Standard Webhooks secret
// ("whsec_" + base64 of 24 to 64 bytes).
func DecodeSecret(s string) ([]byte, error) {
	raw, ok := strings.CutPrefix(s, "whsec_")
	if !ok {
		return nil, errors.New("must start with whsec_ (Standard Webhooks secret)")
	}
	b, err := base64.StdEncoding.DecodeString(raw)
	if err != nil {
		return nil, errors.New("the part after whsec_ must be standard base64")
	}
	if len(b) < 24 || len(b) > 64 {
		return nil, fmt.Errorf("the key must be 24 to 64 bytes, got %d", len(b))
	}
	return b, nil
}

// NewSecret returns a fresh Standard Webhooks secret of 32 random bytes.
func NewSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return "whsec_" + base64.StdEncoding.EncodeToString(b)
}

// Live holds the configuration in force and reloads it from its file. The
// services read it through Get on every use, so a reload takes effect for
// the next event or request; a flow in progress keeps the spec frozen into
// it when it was created.
type Live struct {
	path string
	cur  atomic.Pointer[Config]
}

// NewLive loads path and returns a Live holding it.
func NewLive(path string) (*Live, error) {
	c, err := Load(path)
	if err != nil {
		return nil, err
	}
	l := &Live{path: path}
	l.cur.Store(c)
	return l, nil
}

// Static returns a Live that holds c and cannot reload (tests, tools).
func Static(c *Config) *Live {
	l := &Live{}
	l.cur.Store(c)
	return l
}

// Get returns the configuration in force.
func (l *Live) Get() *Config { return l.cur.Load() }

// ErrNoFile means the configuration was not loaded from a file.
var ErrNoFile = errors.New("configuration has no file to reload from")

// Reload reads the file again. An invalid file leaves the configuration in
// force unchanged and returns the error.
func (l *Live) Reload() (*Config, error) {
	if l.path == "" {
		return nil, ErrNoFile
	}
	c, err := Load(l.path)
	if err != nil {
		return nil, err
	}
	l.cur.Store(c)
	return c, nil
}

// Path is the file the configuration is loaded from ("" for Static).
func (l *Live) Path() string { return l.path }

// ReloadOnSignal reloads l whenever one of the signals arrives on sigs,
// until ctx ends, logging the outcome. An invalid file is logged and the
// configuration in force stays.
func (l *Live) ReloadOnSignal(ctx context.Context, sigs <-chan os.Signal, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigs:
			c, err := l.Reload()
			if err != nil {
				log.Error("config reload failed; the previous config stays in force", "path", l.path, "err", err)
				continue
			}
			log.Info("config reloaded", "path", l.path, "services", len(c.Services), "webhooks", len(c.Webhooks))
		}
	}
}
