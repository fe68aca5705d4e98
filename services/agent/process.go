package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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

// runResult is how a command run by runGroup ended.
type runResult struct {
	// stopped: ctx ended and the process group was signalled.
	stopped bool
	// abandoned: the command exited but something it started kept its
	// output open, so reading stopped after the grace period.
	abandoned bool
	// err is cmd.Wait's error: nil, an *exec.ExitError, or a start error.
	err error
}

// runGroup runs cmd in a process group of its own, copying its stdout to
// stdout and its stderr to stderr (or also to stdout when stderr is nil),
// until it exits or ctx is done. When ctx is done it sends SIGTERM to the
// whole group, waits grace, then sends SIGKILL to the group.
//
// The output pipes are the agent's own rather than exec's: exec's
// WaitDelay would throw away whatever is still buffered in a pipe when a
// command exits faster than its output is published. Here, after the
// command exits, reading goes on for as long as output keeps coming and
// stops only once the pipes stay silent for grace (a daemon the deploy
// script started may hold them open forever).
func runGroup(ctx context.Context, cmd *exec.Cmd, grace time.Duration, stdout, stderr io.Writer) runResult {
	if err := ctx.Err(); err != nil {
		return runResult{stopped: true, err: err}
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true

	var (
		readers  []*os.File
		writers  []*os.File
		copyTo   []io.Writer
		closeAll = func(fs []*os.File) {
			for _, f := range fs {
				_ = f.Close()
			}
		}
	)
	for _, w := range []io.Writer{stdout, stderr} {
		if w == nil {
			continue
		}
		r, pw, err := os.Pipe()
		if err != nil {
			closeAll(readers)
			closeAll(writers)
			return runResult{err: fmt.Errorf("create output pipe: %w", err)}
		}
		readers, writers, copyTo = append(readers, r), append(writers, pw), append(copyTo, w)
	}
	cmd.Stdout, cmd.Stderr = writers[0], writers[0]
	if len(writers) > 1 {
		cmd.Stderr = writers[1]
	}
	err := cmd.Start()
	// The child has its own copies; the agent must not hold the write ends,
	// or the pipes would never reach EOF.
	closeAll(writers)
	if err != nil {
		closeAll(readers)
		return runResult{err: err}
	}
	defer closeAll(readers)

	exited := make(chan struct{})
	var pumps sync.WaitGroup
	var abandoned atomic.Bool
	for i, r := range readers {
		pumps.Add(1)
		go func() {
			defer pumps.Done()
			if pump(r, copyTo[i], exited, grace) {
				abandoned.Store(true)
			}
		}()
	}

	res := runResult{}
	pgid := cmd.Process.Pid // Setpgid with Pgid 0: the group id is the leader's pid
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case res.err = <-done:
	case <-ctx.Done():
		select {
		case res.err = <-done: // it ended on its own just as ctx ended
		default:
			res.stopped = true
			res.err = stopGroup(pgid, grace, done)
		}
	}
	close(exited)
	// Unblock reads waiting on silent pipes; every read after this sets a
	// fresh deadline, so output still flowing is read to the end.
	for _, r := range readers {
		_ = r.SetReadDeadline(time.Now().Add(grace))
	}
	pumps.Wait()
	res.abandoned = abandoned.Load()
	return res
}

// stopGroup sends SIGTERM to the group, waits grace for the leader to exit,
// sends SIGKILL to the group, and returns the leader's Wait error.
func stopGroup(pgid int, grace time.Duration, done <-chan error) error {
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	var err error
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
	return err
}

// pump copies r to w until EOF. Once exited is closed, each read waits at
// most idle; pump reports whether it gave up that way (the pipe was still
// open but silent).
func pump(r *os.File, w io.Writer, exited <-chan struct{}, idle time.Duration) (abandoned bool) {
	buf := make([]byte, 32<<10)
	for {
		select {
		case <-exited:
			_ = r.SetReadDeadline(time.Now().Add(idle))
		default:
		}
		n, err := r.Read(buf)
		if n > 0 {
			_, _ = w.Write(buf[:n])
		}
		if err != nil {
			return errors.Is(err, os.ErrDeadlineExceeded)
		}
	}
}

// exitCode returns the exit code of a command that ran, and whether err is
// about the command's exit rather than a failure to run or read it.
func exitCode(cmd *exec.Cmd, err error) (int, bool) {
	var ee *exec.ExitError
	switch {
	case err == nil:
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
