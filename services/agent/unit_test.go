package agent

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kelseyhightower/envconfig"
	"github.com/stretchr/testify/require"

	"github.com/shanenoi/otariinae/pkg/wire"
)

func TestParseLabels(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in string
		want     map[string]string
		err      string
	}{
		{name: "empty", in: "", want: map[string]string{}},
		{name: "one", in: "env=prod", want: map[string]string{"env": "prod"}},
		{name: "many", in: "env=prod,zone=eu-west-1a,team/owner=ops.core", want: map[string]string{
			"env": "prod", "zone": "eu-west-1a", "team/owner": "ops.core"}},
		{name: "spaces and trailing comma", in: " env = prod , zone=a ,", want: map[string]string{"env": "prod", "zone": "a"}},
		{name: "no equals", in: "env=prod,zone", err: `label pair 2 "zone": want key=value`},
		{name: "empty key", in: "=prod", err: `label pair 1 "=prod": key`},
		{name: "empty value", in: "env=", err: `label pair 1 "env=": value`},
		{name: "bad key char", in: "en v=prod", err: `"en v=prod": key`},
		{name: "bad value char", in: "env=pr:od", err: `"env=pr:od": value`},
		{name: "value with equals", in: "env=a=b", err: `"env=a=b": value`},
		{name: "too long", in: "env=" + strings.Repeat("a", 64), err: "value must match"},
		{name: "longest", in: "env=" + strings.Repeat("a", 63), want: map[string]string{"env": strings.Repeat("a", 63)}},
		{name: "duplicate", in: "env=a,env=b", err: `key "env" given twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseLabels(tc.in)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

// TestConfigFromEnv pins the variable names and defaults (a contract). It
// sets process variables, so it is not parallel.
func TestConfigFromEnv(t *testing.T) {
	var cfg Config
	require.NoError(t, envconfig.Process("otariinae", &cfg))
	require.Equal(t, Config{ID: "", Labels: "", Workdir: "./agent-work",
		HeartbeatInterval: 10 * time.Second, ShutdownGrace: 10 * time.Second}, cfg)

	t.Setenv("OTARIINAE_AGENT_ID", "web-1")
	t.Setenv("OTARIINAE_AGENT_LABELS", "env=prod")
	t.Setenv("OTARIINAE_AGENT_WORKDIR", "/srv/otariinae")
	t.Setenv("OTARIINAE_AGENT_HEARTBEAT_INTERVAL", "3s")
	t.Setenv("OTARIINAE_AGENT_SHUTDOWN_GRACE", "1m")
	require.NoError(t, envconfig.Process("otariinae", &cfg))
	require.Equal(t, Config{ID: "web-1", Labels: "env=prod", Workdir: "/srv/otariinae",
		HeartbeatInterval: 3 * time.Second, ShutdownGrace: time.Minute}, cfg)
}

func TestResolveDefaults(t *testing.T) {
	t.Parallel()
	host, err := os.Hostname()
	require.NoError(t, err)
	r, err := Config{}.resolve()
	require.NoError(t, err)
	require.Equal(t, sanitizeToken(host), r.id)
	require.True(t, wire.ValidToken(r.id))
	require.Equal(t, r.id, r.labels[LabelAgent])
	require.NotEmpty(t, r.labels[LabelHostname])
	require.Equal(t, DefaultHeartbeatInterval, r.heartbeat)
	require.Equal(t, DefaultShutdownGrace, r.grace)
	require.True(t, strings.HasSuffix(r.workdir, "/agent-work"), r.workdir)

	_, err = Config{ID: "bad.id"}.resolve()
	require.ErrorContains(t, err, "agent id")
	_, err = Config{ID: "ok", Labels: "x"}.resolve()
	require.ErrorContains(t, err, "agent labels")

	require.Equal(t, "web-01-example-com", sanitizeToken("web-01.example.com"))
	require.Len(t, sanitizeToken(strings.Repeat("h", 300)), 128)
}

func TestLineWriter(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		writes []string
		want   []string
	}{
		{name: "lines", writes: []string{"a\nb\n"}, want: []string{"a", "b"}},
		{name: "split writes", writes: []string{"he", "llo\nwor", "ld\n"}, want: []string{"hello", "world"}},
		{name: "empty lines", writes: []string{"\n\na\n"}, want: []string{"", "", "a"}},
		{name: "crlf", writes: []string{"a\r\nb\r\n"}, want: []string{"a", "b"}},
		{name: "no final newline", writes: []string{"a\nrest"}, want: []string{"a", "rest"}},
		{name: "exactly max", writes: []string{strings.Repeat("x", maxLine) + "\nnext\n"},
			want: []string{strings.Repeat("x", maxLine), "next"}},
		{name: "exactly max in pieces", writes: []string{strings.Repeat("x", maxLine), "\n", "next\n"},
			want: []string{strings.Repeat("x", maxLine), "next"}},
		{name: "long", writes: []string{strings.Repeat("y", 2*maxLine+5) + "\n"},
			want: []string{strings.Repeat("y", maxLine), strings.Repeat("y", maxLine), "yyyyy"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got []string
			w := &lineWriter{out: func(l []byte) { got = append(got, string(l)) }}
			for _, s := range tc.writes {
				n, err := w.Write([]byte(s))
				require.NoError(t, err)
				require.Equal(t, len(s), n)
			}
			w.flush()
			require.Equal(t, tc.want, got)
		})
	}
}

func TestRedactor(t *testing.T) {
	t.Parallel()
	require.Nil(t, newRedactor(nil, nil))
	require.Nil(t, newRedactor([]string{"AGENT_TEST_SURELY_UNSET"}, nil))
	r := newRedactor([]string{testSecretVar, "SHORT", "LONG"}, map[string]string{"SHORT": "abc", "LONG": "abcdef"})
	require.Equal(t, "x [REDACTED] [REDACTED] [REDACTED] y",
		r.Replace("x "+testSecretValue+" abcdef abc y"))
}

func TestValidateJob(t *testing.T) {
	t.Parallel()
	sha1 := strings.Repeat("a", 40)
	valid := wire.Job{ID: "d.a", DeploymentID: "d", AgentID: "a", Service: "web",
		GitURL: "https://example.com/x.git", Commit: sha1, Command: "./deploy.sh"}
	require.NoError(t, validateJob(valid))
	v := valid
	v.Commit = strings.Repeat("0b", 32)
	require.NoError(t, validateJob(v))
	for _, tc := range []struct {
		name   string
		mutate func(*wire.Job)
	}{
		{"empty id", func(j *wire.Job) { j.ID = "" }},
		{"id with newline", func(j *wire.Job) { j.ID = "a\nb" }},
		{"kind", func(j *wire.Job) { j.Kind = "promote" }},
		{"deployment with dot", func(j *wire.Job) { j.DeploymentID = "a.b" }},
		{"commit option", func(j *wire.Job) { j.Commit = "--upload-pack=x" }},
		{"commit HEAD", func(j *wire.Job) { j.Commit = "HEAD" }},
		{"commit 41", func(j *wire.Job) { j.Commit = sha1 + "a" }},
		{"url empty", func(j *wire.Job) { j.GitURL = "" }},
		{"url option", func(j *wire.Job) { j.GitURL = "-u" }},
		{"url newline", func(j *wire.Job) { j.GitURL = "https://x\n" }},
		{"service dots", func(j *wire.Job) { j.Service = ".." }},
		{"service slash", func(j *wire.Job) { j.Service = "a/b" }},
		{"command blank", func(j *wire.Job) { j.Command = "\t" }},
		{"timeout", func(j *wire.Job) { j.Timeout = -time.Second }},
		{"env key", func(j *wire.Job) { j.Env = map[string]string{"": "x"} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			j := valid
			tc.mutate(&j)
			require.ErrorIs(t, validateJob(j), ErrInvalidJob)
		})
	}
}

func TestCheckoutDir(t *testing.T) {
	t.Parallel()
	d, err := checkoutDir("/w", "web")
	require.NoError(t, err)
	require.Equal(t, "/w/web", d)
	for _, bad := range []string{"", ".", "..", "../x", "a/../../x"} {
		_, err := checkoutDir("/w", bad)
		require.Error(t, err, bad)
	}
	require.Equal(t, "https://user:xxxxx@example.com/r.git", redactURL("https://user:pw@example.com/r.git"))
	require.Equal(t, "file:///srv/r.git", redactURL("file:///srv/r.git"))
}
