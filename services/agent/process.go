package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// envPrefix marks the agent's own configuration, which deploy scripts and
// git never inherit (it may hold NATS credentials).
const envPrefix = "OTARIINAE_"

// baseEnv is the agent's environment without any OTARIINAE_* variable.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return env
}

// runGroup runs cmd in a process group of its own until it exits or ctx is
// done. When ctx is done it sends SIGTERM to the whole group, waits grace,
// then sends SIGKILL to the group. It reports whether the process was
// stopped that way.
//
// cmd.WaitDelay is set to grace too: a deploy script that leaves a daemon
// holding its stdout open must not hold the job forever, so Wait stops
// reading the pipes grace after the script itself exits.
func runGroup(ctx context.Context, cmd *exec.Cmd, grace time.Duration) (stopped bool, err error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.WaitDelay = grace
	if err := ctx.Err(); err != nil {
		return true, err
	}
	if err := cmd.Start(); err != nil {
		return false, err
	}
	pgid := cmd.Process.Pid // Setpgid with Pgid 0: the group id is the leader's pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return false, err
	case <-ctx.Done():
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case err = <-done:
	case <-timer.C:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-done
	}
	// The leader is gone; whatever is left of its group dies with it. The
	// group id cannot be reused while any member is alive, so this cannot
	// hit an unrelated process group.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	return true, err
}

// exitCode returns the exit code of a command that ran, and whether err is
// about the command's exit rather than a failure to run or read it.
func exitCode(cmd *exec.Cmd, err error) (int, bool) {
	var ee *exec.ExitError
	switch {
	case err == nil, errors.Is(err, exec.ErrWaitDelay):
		if cmd.ProcessState != nil {
			return cmd.ProcessState.ExitCode(), true
		}
		return 0, true
	case errors.As(err, &ee):
		return ee.ExitCode(), true
	}
	return -1, false
}

// commandArgv turns a job's command into argv: split on white space and run
// without a shell, or, when the job asks for it, given to /bin/sh -c as one
// argument. Nothing is ever interpolated into a shell string.
func commandArgv(command string, shell bool) []string {
	if shell {
		return []string{"/bin/sh", "-c", command}
	}
	return strings.Fields(command)
}

// resolveProgram finds argv[0] the way a user expects of a deploy command
// run in the checkout: a path with a slash is relative to the checkout (so
// ./deploy.sh is the repository's script, not one near the agent's working
// directory), a bare name is looked up in PATH.
func resolveProgram(name, dir string) (string, error) {
	if strings.Contains(name, "/") {
		if !filepath.IsAbs(name) {
			name = filepath.Join(dir, name)
		}
		fi, err := os.Stat(name)
		if err != nil {
			return "", err
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s: %w", name, os.ErrPermission)
		}
		return name, nil
	}
	// LookPath refuses a match through a relative PATH entry (exec.ErrDot):
	// it would name a file relative to the agent's directory, not the
	// checkout.
	return exec.LookPath(name)
}

func absPath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", err
	}
	return filepath.Clean(abs), nil
}
