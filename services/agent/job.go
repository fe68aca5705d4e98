package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/shanenoi/otariinae/pkg/wire"
)

// Causes of a job's context ending, turned into report reasons.
var (
	errAgentStopped = errors.New("agent stopped")
	errJobTimeout   = errors.New("job timed out")
)

// ErrInvalidJob wraps every reason a job is refused before anything runs.
var ErrInvalidJob = errors.New("invalid job")

var (
	jobIDRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,256}$`)
)

// validateJob checks everything that reaches a command line, a path, a
// subject or a header. Commit is a full sha (so it can never be read as an
// option or a ref name), the URL cannot be read as an option, the service
// is one path element.
func validateJob(j wire.Job) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidJob, fmt.Sprintf(format, args...))
	}
	switch {
	case !jobIDRE.MatchString(j.ID):
		return bad("id %q must match [A-Za-z0-9._-]{1,256}", j.ID)
	case j.Kind != "" && j.Kind != wire.JobDeploy && j.Kind != wire.JobPromotion:
		return bad("kind %q is not supported", j.Kind)
	case j.Kind == wire.JobPromotion && !wire.ValidToken(j.Promotion):
		return bad("promotion %q must match [A-Za-z0-9_-]{1,128}", j.Promotion)
	case !wire.ValidToken(j.DeploymentID):
		return bad("deployment_id %q must match [A-Za-z0-9_-]{1,128}", j.DeploymentID)
	case !wire.ValidCommit(j.Commit):
		return bad("commit %q must be 40 or 64 lowercase hex digits", j.Commit)
	case j.GitURL == "":
		return bad("git_url is empty")
	case strings.HasPrefix(j.GitURL, "-"):
		return bad("git_url %q must not start with '-'", j.GitURL)
	case strings.ContainsFunc(j.GitURL, isControl):
		return bad("git_url contains control characters")
	case !wire.ValidToken(j.Service):
		return bad("service %q must match [A-Za-z0-9_-]{1,128}", j.Service)
	case strings.TrimSpace(j.Command) == "":
		return bad("command is empty")
	case strings.ContainsRune(j.Command, 0):
		return bad("command contains a NUL byte")
	case j.Timeout < 0:
		return bad("timeout %s is negative", j.Timeout)
	}
	for k, v := range j.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.ContainsRune(v, 0) {
			return bad("env variable %q is not a valid name=value", k)
		}
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// handle runs one delivered job to its end: started report, checkout,
// command, logs flushed, finished report, ack. It acknowledges the job only
// once the finished report is stored.
func (a *Agent) handle(ctx context.Context, msg jetstream.Msg) {
	var job wire.Job
	if err := json.Unmarshal(msg.Data(), &job); err != nil {
		a.log.WarnContext(ctx, "drop malformed job", "subject", msg.Subject(), "err", err)
		a.term(msg, "malformed job")
		return
	}
	log := a.log.With("job_id", job.ID, "deployment_id", job.DeploymentID, "flow_id", job.FlowID,
		"service", job.Service, "commit", job.Commit)
	if job.AgentID != a.id {
		log.WarnContext(ctx, "drop job for another agent", "job_agent_id", job.AgentID)
		a.term(msg, "job for another agent")
		return
	}
	if err := validateJob(job); err != nil {
		log.WarnContext(ctx, "reject job", "err", err)
		a.reject(ctx, msg, job, err, log)
		return
	}

	// Tell the server every progressInterval that the job is still ours, so
	// a deploy longer than AckWait (or a started report retried through a
	// NATS outage) is not redelivered meanwhile.
	progressStop := make(chan struct{})
	var progressWG sync.WaitGroup
	progressWG.Add(1)
	go func() {
		defer progressWG.Done()
		t := time.NewTicker(progressInterval)
		defer t.Stop()
		for {
			select {
			case <-progressStop:
				return
			case <-t.C:
				if err := msg.InProgress(); err != nil {
					log.Warn("extend job ack deadline", "err", err)
				}
			}
		}
	}()
	stopProgress := sync.OnceFunc(func() {
		close(progressStop)
		progressWG.Wait()
	})
	defer stopProgress()

	// A job this agent finished before (its ack was lost, or the agent
	// restarted before acking) is reported again, not run again.
	if prev, ok := a.finishedBefore(job.ID); ok {
		log.InfoContext(ctx, "job finished before; reporting it again, not running it")
		rctx, cancelReport := afterDone(ctx, reportGrace, errAgentStopped)
		defer cancelReport()
		if err := a.publishReport(rctx, prev); err != nil {
			log.Error("finished report not stored; the job will be redelivered", "err", err)
			return
		}
		stopProgress()
		if err := a.ack(rctx, msg); err != nil {
			log.Error("ack job", "err", err)
		}
		return
	}

	// A job cancelled while it waited in line is not run at all.
	if why, cancelled := a.cancelled(ctx, job.ID); cancelled {
		log.InfoContext(ctx, "job cancelled before it started", "reason", why)
		code := -1
		rctx, cancelReport := afterDone(ctx, reportGrace, errAgentStopped)
		defer cancelReport()
		reason := (&cancelError{reason: why}).Error()
		sink := &logSink{js: a.js, subject: wire.LogSubject(job.DeploymentID, a.id), jobID: job.ID, redact: newRedactor(job.Secrets, job.Env), log: log}
		sink.system("%s: not run", reason)
		if err := a.publishReport(rctx, a.report(job, wire.JobFinished, &code, reason)); err != nil {
			log.Error("cancelled report not stored; the job will be redelivered", "err", err)
			return
		}
		stopProgress()
		if err := a.ack(rctx, msg); err != nil {
			log.Error("ack job", "err", err)
		}
		return
	}

	startedAt := time.Now()
	if err := a.publishReport(ctx, a.report(job, wire.JobStarted, nil, "")); err != nil {
		// Stopping before anything ran: hand the job back for the next start.
		log.WarnContext(ctx, "job handed back before it started", "err", err)
		_ = msg.Nak()
		return
	}
	log.InfoContext(ctx, "job started")
	a.running.Add(1)
	a.m.running.Inc()
	a.kickHeartbeat()
	defer func() {
		a.running.Add(-1)
		a.m.running.Dec()
		a.kickHeartbeat()
	}()

	sink := &logSink{
		js: a.js, subject: wire.LogSubject(job.DeploymentID, a.id), jobID: job.ID,
		redact: newRedactor(job.Secrets, job.Env), log: log,
	}
	// The job may outlive a shutdown signal by the grace period, then it is
	// stopped.
	jobCtx, cancelJob := afterDone(ctx, a.grace, errAgentStopped)
	// A cancel while the job runs stops it like a timeout would.
	jobCtx, cancelWatch := a.watchCancel(jobCtx, job.ID, log)
	code, reason := a.execute(jobCtx, job, sink, log)
	cancelWatch()
	cancelJob()

	// Every log line is stored before the report says the job is over, so a
	// reader who sees "finished" sees the whole output.
	flushTimer := time.NewTimer(logFlushTimeout)
	select {
	case <-a.js.PublishAsyncComplete():
	case <-flushTimer.C:
		log.Warn("job log not fully stored", "timeout", logFlushTimeout)
	}
	flushTimer.Stop()

	finished := a.report(job, wire.JobFinished, &code, reason)
	rctx, cancelReport := afterDone(ctx, reportGrace, errAgentStopped)
	defer cancelReport()
	// Remember it first: if the report or the ack is lost, a redelivery
	// reports this outcome again instead of running the job twice.
	if err := a.markDone(finished); err != nil {
		log.Error("could not record the finished job; a redelivery would run it again", "err", err)
	}
	if err := a.publishReport(rctx, finished); err != nil {
		// Not acknowledged: the job comes back and is reported then.
		log.Error("finished report not stored; the job will be redelivered", "err", err)
		return
	}
	stopProgress()
	if err := a.ack(rctx, msg); err != nil {
		log.Error("ack job", "err", err)
	}
	elapsed := time.Since(startedAt)
	a.m.duration.Observe(elapsed.Seconds())
	result := resultSucceeded
	if code != 0 {
		result = resultFailed
	}
	a.m.jobs.WithLabelValues(result).Inc()
	log.Info("job finished", "exit_code", code, "reason", reason, "duration", elapsed)
}

// reject reports a job this agent refuses to run as finished with -1 (so its
// deployment fails visibly instead of waiting forever), then terminates it.
func (a *Agent) reject(ctx context.Context, msg jetstream.Msg, job wire.Job, cause error, log *slog.Logger) {
	if jobIDRE.MatchString(job.ID) && wire.ValidToken(job.DeploymentID) {
		code := -1
		rctx, cancel := afterDone(ctx, reportGrace, errAgentStopped)
		defer cancel()
		if err := a.publishReport(rctx, a.report(job, wire.JobFinished, &code, "rejected: "+cause.Error())); err != nil {
			log.Error("report rejected job", "err", err)
			return // redelivered and rejected again
		}
		a.m.jobs.WithLabelValues(resultFailed).Inc()
	}
	a.term(msg, cause.Error())
}

func (a *Agent) term(msg jetstream.Msg, reason string) {
	if err := msg.TermWithReason(reason); err != nil {
		a.log.Warn("terminate job", "err", err)
	}
}

func (a *Agent) report(job wire.Job, state wire.JobState, code *int, reason string) wire.JobReport {
	return wire.JobReport{
		JobID: job.ID, FlowID: job.FlowID, DeploymentID: job.DeploymentID, Promotion: job.Promotion, AgentID: a.id,
		State: state, ExitCode: code, Reason: reason, At: time.Now().UTC(),
	}
}

// publishReport stores r in EVENTS with its deterministic message id,
// retrying with backoff until it succeeds or ctx ends.
func (a *Agent) publishReport(ctx context.Context, r wire.JobReport) error {
	data, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode %s report: %w", r.State, err)
	}
	delay := 100 * time.Millisecond
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := a.js.Publish(pctx, wire.SubjectJobReport, data, jetstream.WithMsgID(r.MsgID()))
		cancel()
		if err == nil {
			return nil
		}
		a.log.Warn("publish job report", "job_id", r.JobID, "state", r.State, "err", err, "retry_in", delay)
		if !sleepCtx(ctx, delay) {
			return fmt.Errorf("publish %s report of job %s: %w", r.State, r.JobID, errors.Join(context.Cause(ctx), err))
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// ack acknowledges msg and waits for the server to confirm, retrying until
// ctx ends.
func (a *Agent) ack(ctx context.Context, msg jetstream.Msg) error {
	delay := 100 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := msg.DoubleAck(actx)
		cancel()
		if err == nil || errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			return nil
		}
		if !sleepCtx(ctx, delay) {
			return err
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// execute checks out the job's commit and runs its command. It returns the
// exit code to report and, unless the command succeeded, why.
func (a *Agent) execute(ctx context.Context, job wire.Job, sink *logSink, log *slog.Logger) (int, string) {
	stoppedBy := func(err error) (int, string) {
		if errors.Is(context.Cause(ctx), errAgentStopped) {
			sink.system("agent stopped")
			return -1, errAgentStopped.Error()
		}
		var ce *cancelError
		if errors.As(context.Cause(ctx), &ce) {
			sink.system("%s", ce.Error())
			return -1, ce.Error()
		}
		sink.system("%s", err.Error())
		return -1, err.Error()
	}

	dir, err := checkoutDir(a.workdir, job.Service)
	if err != nil {
		return stoppedBy(err)
	}
	env := baseEnv()
	git := &gitRunner{sink: sink, env: append(env[:len(env):len(env)], "GIT_TERMINAL_PROMPT=0"), grace: a.grace}
	if err := git.checkout(ctx, dir, job.GitURL, job.Commit); err != nil {
		log.Warn("checkout failed", "err", err)
		return stoppedBy(err)
	}

	argv := commandArgv(job.Command, job.Shell)
	path, err := resolveProgram(argv[0], dir)
	if err != nil {
		return stoppedBy(fmt.Errorf("start deploy command: %w", err))
	}
	timeout := job.Timeout
	if timeout == 0 {
		timeout = defaultJobTimeout
	}
	cmdCtx, cancel := context.WithTimeoutCause(ctx, timeout, errJobTimeout)
	defer cancel()

	stdout, stderr := sink.writer(streamStdout), sink.writer(streamStderr)
	cmd := &exec.Cmd{Path: path, Args: argv, Dir: dir, Env: a.jobEnv(env, job)}
	if job.Shell {
		sink.system("$ /bin/sh -c %s", job.Command)
	} else {
		sink.system("$ %s", job.Command)
	}
	res := runGroup(cmdCtx, cmd, a.grace, stdout, stderr)
	stdout.flush()
	stderr.flush()

	if res.stopped {
		if errors.Is(context.Cause(cmdCtx), errJobTimeout) {
			reason := fmt.Sprintf("timed out after %s", timeout)
			sink.system("%s", reason)
			return -1, reason
		}
		return stoppedBy(context.Cause(cmdCtx))
	}
	code, ran := exitCode(cmd, res.err)
	if !ran {
		return stoppedBy(fmt.Errorf("start deploy command: %w", res.err))
	}
	if res.abandoned {
		sink.system("a background process kept the output open after the command exited; stopped reading it")
	}
	if code == -1 {
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			reason := "killed by signal " + ws.Signal().String()
			sink.system("%s", reason)
			return -1, reason
		}
	}
	status := fmt.Sprintf("exit status %d", code)
	sink.system("%s", status)
	if code == 0 {
		return 0, ""
	}
	return code, status
}

// jobEnv is the deploy command's environment: the agent's own minus its
// OTARIINAE_* configuration, the job's variables, then the documented
// OTARIINAE_* variables, which come last so a job cannot override them.
func (a *Agent) jobEnv(base []string, job wire.Job) []string {
	env := append([]string(nil), base...)
	keys := make([]string, 0, len(job.Env))
	for k := range job.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, k+"="+job.Env[k])
	}
	return append(env,
		"OTARIINAE_ORG="+job.Org,
		"OTARIINAE_REPO="+job.Repo,
		"OTARIINAE_COMMIT="+job.Commit,
		"OTARIINAE_REF="+job.Ref,
		"OTARIINAE_SERVICE="+job.Service,
		"OTARIINAE_ENVIRONMENT="+job.Environment,
		"OTARIINAE_DEPLOYMENT_ID="+job.DeploymentID,
		"OTARIINAE_FLOW_ID="+job.FlowID,
		"OTARIINAE_AGENT_ID="+a.id,
		"OTARIINAE_JOB_ID="+job.ID,
		"OTARIINAE_PROMOTION="+job.Promotion,
	)
}
