// Package agent is the deploy agent that runs on every target host.
//
// An agent needs only NATS. It announces itself with heartbeats over core
// NATS (presence, not history), pulls its jobs one at a time from its own
// durable consumer on the JOBS stream, and for each job:
//
//  1. reports "started" to EVENTS (with a deterministic Nats-Msg-Id, so a
//     retried publish is de-duplicated),
//  2. clones or fetches the repository into <workdir>/<service>, checks out
//     the exact commit detached and cleans the tree,
//  3. runs the deploy command in its own process group, without a shell
//     unless the job asks for one, streaming every output line (secrets
//     redacted) to the LOGS stream,
//  4. waits for every log line to be stored, reports "finished" with the exit
//     code, and only then acknowledges the job.
//
// The job is acknowledged last on purpose: if the agent dies before the
// finished report is stored, the job is redelivered rather than lost, and the
// report ids make the repeated reports idempotent.
//
// Cancellation (timeout or agent shutdown) sends SIGTERM to the whole process
// group, waits the shutdown grace, then sends SIGKILL to the group, so a
// deploy script's children cannot outlive it.
package agent
