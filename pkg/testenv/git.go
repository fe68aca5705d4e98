package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// GitRepo is a real bare repository with a work clone to commit from.
type GitRepo struct {
	Bare string // path of the bare repository
	Work string // path of the work clone
	t    testing.TB
}

// NewGitRepo creates an empty bare repository on branch main and a clone.
func NewGitRepo(t testing.TB) *GitRepo {
	t.Helper()
	dir := t.TempDir()
	g := &GitRepo{Bare: filepath.Join(dir, "repo.git"), Work: filepath.Join(dir, "work"), t: t}
	g.git(dir, "init", "--bare", "--initial-branch=main", g.Bare)
	g.git(dir, "init", "--initial-branch=main", g.Work)
	g.git(g.Work, "remote", "add", "origin", g.Bare)
	return g
}

// URL is the file:// URL agents clone.
func (g *GitRepo) URL() string { return "file://" + g.Bare }

// Commit writes files (mode 0755 when the name ends in .sh), commits them
// on main, pushes, and returns the commit sha.
func (g *GitRepo) Commit(msg string, files map[string]string) string {
	g.t.Helper()
	for name, content := range files {
		p := filepath.Join(g.Work, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			g.t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o755
		}
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			g.t.Fatal(err)
		}
	}
	g.git(g.Work, "add", "-A")
	g.git(g.Work, "commit", "--allow-empty", "-q", "-m", msg)
	g.git(g.Work, "push", "-q", "origin", "main")
	return strings.TrimSpace(g.git(g.Work, "rev-parse", "HEAD"))
}

func (g *GitRepo) git(dir string, args ...string) string {
	g.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"GIT_AUTHOR_NAME=otariinae test", "GIT_AUTHOR_EMAIL=test@example.invalid",
		"GIT_COMMITTER_NAME=otariinae test", "GIT_COMMITTER_EMAIL=test@example.invalid",
		"GIT_CONFIG_NOSYSTEM=1", "GIT_CONFIG_GLOBAL=/dev/null", "GIT_TERMINAL_PROMPT=0",
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		g.t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}
