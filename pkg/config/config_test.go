package config

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const valid = `
services:
  - name: web
    repository: acme/web
    branches: [main]
    deploy: ./deploy.sh --fast
    secrets: [DB_PASSWORD]
    failure_strategy: rollback
    pipeline:
      - environment: staging
        targets: {env: staging}
        env: {LOG_LEVEL: debug}
        promotions:
          - {name: smoke, type: script, command: ./smoke.sh, timeout: 5m}
          - {name: soak, type: wait, duration: 10m}
          - {name: qa, type: external, timeout: 1h}
          - {name: release, type: manual}
      - environment: production
        targets: {env: production}
        parallel: true
webhooks:
  - name: chat
    url: https://hooks.example.com/x
    events: ["deployment.*", "flow.succeeded"]
    services: [web]
tokens:
  - {name: ci, sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", scopes: [read, write]}
github:
  token: ghp_x
  hooks:
    - {repository: acme/web, hook_id: 123}
    - {organization: acme, hook_id: 456}
`

func TestParseValidAndDefaults(t *testing.T) {
	t.Parallel()
	c, err := Parse(strings.NewReader(valid))
	require.NoError(t, err)
	s := c.Services[0]
	require.Equal(t, "https://github.com/acme/web.git", s.GitURL)
	require.Equal(t, []string{"acme:web"}, s.Artifacts)
	require.True(t, *s.Supersede)
	require.Equal(t, "all_at_once", s.Pipeline[0].Strategy)
	require.Equal(t, DefaultDeployTimeout, s.Pipeline[0].Timeout.D())
	require.Equal(t, 10*time.Minute, s.Pipeline[0].Promotions[1].Duration.D())
	w := c.Webhooks[0]
	require.Equal(t, DefaultWebhookTimeout, w.Timeout.D())
	require.Equal(t, DefaultMaxInFlight, w.MaxInFlight)
	require.Equal(t, "native", w.Format)
	require.Equal(t, "https://api.github.com", c.GitHub.APIURL)
	require.Equal(t, 5*time.Minute, c.GitHub.RepairInterval.D())
	require.True(t, w.Wants("deployment.failed", "web"))
	require.True(t, w.Wants("flow.succeeded", "web"))
	require.False(t, w.Wants("flow.failed", "web"))
	require.False(t, w.Wants("deployment.failed", "api"))
	require.Len(t, c.ServicesForRepository("ACME/Web"), 1)
	require.Len(t, c.ServicesForArtifact("acme:web"), 1)
}

func TestParseErrorsNameFieldAndLine(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, replace, with, want string
	}{
		{"unknown key", "    secrets: [DB_PASSWORD]\n", "    secrets: [DB_PASSWORD]\n    deploi: x\n", "line 8: field deploi not found"},
		{"bad duration", "timeout: 5m}", "timeout: soon}", `invalid duration "soon"`},
		{"bad service name", "name: web\n", "name: Web\n", `line 3: services[0].name: "Web" must match`},
		{"no targets", "targets: {env: staging}", "targets: {}", "line 11: services[0] (web).pipeline[0].targets: name at least one label pair"},
		{"reserved env var", "LOG_LEVEL: debug", "OTARIINAE_X: debug", "line 12: services[0] (web).pipeline[0].env"},
		{"script without command", "type: script, command: ./smoke.sh, timeout: 5m", "type: script", "line 14: services[0] (web).pipeline[0].promotions[0] (smoke).command"},
		{"wait without duration", "type: wait, duration: 10m", "type: wait", "promotions[1] (soak).duration"},
		{"wait with timeout", "type: wait, duration: 10m", "type: wait, duration: 10m, timeout: 1m", "promotions[1] (soak).timeout"},
		{"unknown promotion type", "type: manual}", "type: vote}", `"vote" must be script, manual, external or wait`},
		{"unknown strategy", "failure_strategy: rollback", "failure_strategy: retry", `failure_strategy: "retry" must be stop or rollback`},
		{"rolling not yet", "        parallel: true\n", "        parallel: true\n        strategy: rolling\n", "rolling is not supported"},
		{"bad webhook url", "https://hooks.example.com/x", "ftp://x", "line 23: webhooks[0] (chat).url"},
		{"bad events", `"flow.succeeded"]`, `"flow.exploded"]`, "matches no hook type"},
		{"unknown webhook service", "services: [web]", "services: [api]", `unknown service "api"`},
		{"bad secret", "    events:", "    secret: whsec_short\n    events:", "whsec_"},
		{"bad token hash", `sha256: "9f86`, `sha256: "zz86`, "tokens[0].sha256"},
		{"bad scope", "scopes: [read, write]", "scopes: [read, root]", `tokens[0].scopes[1]: "root"`},
		{"hook without target", "{organization: acme, hook_id: 456}", "{hook_id: 456}", "github.hooks[1]: set exactly one"},
		{"duplicate environment", "environment: production", "environment: staging", `duplicate environment "staging"`},
		{"git url option", "    branches: [main]\n", "    branches: [main]\n    git_url: --upload-pack=x\n", "must not start with -"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			doc := strings.Replace(valid, tt.replace, tt.with, 1)
			require.NotEqual(t, valid, doc, "replacement applied")
			_, err := Parse(strings.NewReader(doc))
			require.Error(t, err)
			require.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestLiveReload(t *testing.T) {
	t.Parallel()
	path := t.TempDir() + "/c.yaml"
	require.NoError(t, writeFile(path, valid))
	l, err := NewLive(path)
	require.NoError(t, err)
	first := l.Get()
	require.NoError(t, writeFile(path, strings.Replace(valid, "name: chat", "name: team", 1)))
	c, err := l.Reload()
	require.NoError(t, err)
	require.Equal(t, "team", c.Webhooks[0].Name)
	require.NotSame(t, first, l.Get())
	require.NoError(t, writeFile(path, "services: [{name: BAD}]\n"))
	_, err = l.Reload()
	require.Error(t, err)
	require.Equal(t, "team", l.Get().Webhooks[0].Name, "an invalid file changes nothing")
	_, err = Static(first).Reload()
	require.ErrorIs(t, err, ErrNoFile)
}

func TestDecodeSecret(t *testing.T) {
	t.Parallel()
	b, err := DecodeSecret(NewSecret())
	require.NoError(t, err)
	require.Len(t, b, 32)
	for _, bad := range []string{"", "whsec_", "secret", "whsec_!!!", "whsec_c2hvcnQ="} {
		_, err := DecodeSecret(bad)
		require.Error(t, err, bad)
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

// TestServicesForArtifactIndex checks the index Parse builds against a
// scan of the services, for an artifact several services deploy, a
// service's default artifact, another spelling and an unknown artifact.
func TestServicesForArtifactIndex(t *testing.T) {
	t.Parallel()
	c, err := Parse(strings.NewReader(`
services:
  - name: web
    repository: acme/web
    branches: [main]
    deploy: ./deploy.sh
    artifacts: ["acme:shared", "acme:web", "ACME:Shared"]
    pipeline: [{environment: staging, targets: {env: staging}}]
  - name: api
    repository: acme/api
    branches: [main]
    deploy: ./deploy.sh
    artifacts: ["acme:shared"]
    pipeline: [{environment: staging, targets: {env: staging}}]
  - name: worker
    repository: acme/worker
    branches: [main]
    deploy: ./deploy.sh
    pipeline: [{environment: staging, targets: {env: staging}}]
`))
	require.NoError(t, err)
	names := func(svcs []*Service) []string {
		var out []string
		for _, s := range svcs {
			out = append(out, s.Name)
		}
		return out
	}
	scan := &Config{Services: c.Services} // built in code: no index
	for artifact, want := range map[string][]string{
		"acme:shared": {"web", "api"}, "Acme:Shared": {"web", "api"},
		"acme:web": {"web"}, "acme:worker": {"worker"}, "acme:nope": nil,
	} {
		require.Equal(t, want, names(c.ServicesForArtifact(artifact)), artifact)
		require.Equal(t, want, names(scan.ServicesForArtifact(artifact)), artifact)
	}
}
