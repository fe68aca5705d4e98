package agent

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// gitTimeout bounds each git command: the job's timeout is the deploy
// command's, and a hung fetch must not hold the agent forever.
const gitTimeout = 10 * time.Minute

// errGitTimeout is the cause of a git command's context when gitTimeout passes.
var errGitTimeout = errors.New("git timed out")

// checkoutDir is <workdir>/<service>, refusing anything that would leave
// workdir (service is already a validated token; this is the second lock).
func checkoutDir(workdir, service string) (string, error) {
	dir := filepath.Join(workdir, service)
	rel, err := filepath.Rel(workdir, dir)
	if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
		return "", fmt.Errorf("checkout dir for service %q leaves the workdir", service)
	}
	return dir, nil
}

// redactURL hides credentials in a git URL before it is logged.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	return u.Redacted()
}

// gitRunner runs git for one job, its output going to the job's log.
type gitRunner struct {
	sink  *logSink
	env   []string
	grace time.Duration
}

// run runs git with args, logging "$ git ..." (with display, the same args
// fit to be shown) and git's own output as system lines.
func (g *gitRunner) run(ctx context.Context, display string, args ...string) error {
	g.sink.system("$ git %s", display)
	ctx, cancel := context.WithTimeoutCause(ctx, gitTimeout, errGitTimeout)
	defer cancel()
	path, err := exec.LookPath("git")
	if err != nil {
		return fmt.Errorf("find git: %w", err)
	}
	out := g.sink.writer(streamSystem)
	cmd := &exec.Cmd{Path: path, Args: append([]string{"git"}, args...), Env: g.env}
	res := runGroup(ctx, cmd, g.grace, out, nil)
	out.flush()
	if res.stopped {
		if errors.Is(context.Cause(ctx), errGitTimeout) {
			return fmt.Errorf("git %s: timed out after %s", args[0], gitTimeout)
		}
		return fmt.Errorf("git %s: %w", gitVerb(args), context.Cause(ctx))
	}
	if res.err != nil {
		return fmt.Errorf("git %s: %w", gitVerb(args), res.err)
	}
	return nil
}

// gitVerb names the git subcommand in args (after any -C <dir>).
func gitVerb(args []string) string {
	if len(args) > 2 && args[0] == "-C" {
		return args[2]
	}
	if len(args) > 0 {
		return args[0]
	}
	return ""
}

// checkout leaves dir holding exactly commit of gitURL, detached, with no
// untracked or ignored files: a fresh clone the first time, a fetch after.
func (g *gitRunner) checkout(ctx context.Context, dir, gitURL, commit string) error {
	shown := redactURL(gitURL)
	if _, err := os.Stat(filepath.Join(dir, ".git")); err != nil {
		// No repository (first job, or a clone that died half way): start
		// over, since git clone refuses a non-empty directory.
		if err := os.RemoveAll(dir); err != nil {
			return fmt.Errorf("remove stale checkout: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return fmt.Errorf("create workdir: %w", err)
		}
		if err := g.run(ctx, "clone --no-checkout -- "+shown+" "+dir,
			"clone", "--no-checkout", "--", gitURL, dir); err != nil {
			return err
		}
	} else {
		// The service's git_url may have changed since the last clone.
		if err := g.run(ctx, "-C "+dir+" remote set-url -- origin "+shown,
			"-C", dir, "remote", "set-url", "--", "origin", gitURL); err != nil {
			return err
		}
		if err := g.run(ctx, "-C "+dir+" fetch --prune --tags --force origin",
			"-C", dir, "fetch", "--prune", "--tags", "--force", "origin"); err != nil {
			return err
		}
	}
	if !g.hasCommit(ctx, dir, commit) {
		// Not on any branch or tag (a pull request head, a force-pushed
		// branch): ask for the commit itself.
		if err := g.run(ctx, "-C "+dir+" fetch origin "+commit,
			"-C", dir, "fetch", "origin", commit); err != nil {
			return err
		}
	}
	g.sink.system("checking out %s", commit)
	if err := g.run(ctx, "-C "+dir+" checkout --detach --force "+commit,
		"-C", dir, "checkout", "--detach", "--force", commit); err != nil {
		return err
	}
	return g.run(ctx, "-C "+dir+" clean -ffdx", "-C", dir, "clean", "-ffdx")
}

// hasCommit reports whether commit is in dir's object store. Its failure is
// the expected answer "no", so its output is not logged.
func (g *gitRunner) hasCommit(ctx context.Context, dir, commit string) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "git", "-C", dir, "cat-file", "-e", commit+"^{commit}")
	cmd.Env = g.env
	return cmd.Run() == nil
}
