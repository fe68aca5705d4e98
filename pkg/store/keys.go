package store

import "strconv"

// Keys builds every Redis key. A flow's keys put the flow id in {} so they
// share one Redis Cluster slot and one Lua script may touch them all; a
// repository's index keys do the same with the repository.
type Keys struct{ Prefix string }

// Flow is a hash: "state" (flow JSON) and "rev" (write version).
func (k Keys) Flow(flowID string) string { return k.Prefix + "flow:{" + flowID + "}" }

// Applied is a set of event ids already applied to a flow.
func (k Keys) Applied(flowID string) string { return k.Prefix + "flow:{" + flowID + "}:applied" }

// OutboxRevs is a sorted set of the revisions of a flow whose outbox
// entries are not all carried out yet (member and score: the revision).
func (k Keys) OutboxRevs(flowID string) string {
	return k.Prefix + "flow:{" + flowID + "}:outbox:revs"
}

// OutboxAt is the list of the outbox entries written with revision rev of
// a flow, in order.
func (k Keys) OutboxAt(flowID string, rev int64) string {
	return k.Prefix + "flow:{" + flowID + "}:outbox:" + strconv.FormatInt(rev, 10)
}

// LegacyOutbox is the one outbox list per flow that versions before
// per-revision outboxes wrote. It is read and trimmed, never written, so
// that entries left there by an upgrade are still carried out.
func (k Keys) LegacyOutbox(flowID string) string { return k.Prefix + "flow:{" + flowID + "}:outbox" }

// RepoFlows is a sorted set of a repository's flow ids scored by creation time (ms).
func (k Keys) RepoFlows(repo string) string { return k.Prefix + "repo:{" + repo + "}:flows" }

// CommitFlows is a set of the flow ids of one commit of a repository.
func (k Keys) CommitFlows(repo, commit string) string {
	return k.Prefix + "repo:{" + repo + "}:commit:" + commit
}

// Flows is a sorted set of every flow id scored by creation time (ms).
func (k Keys) Flows() string { return k.Prefix + "flows" }

// Agents is a hash of agent id to the agent's last heartbeat JSON.
func (k Keys) Agents() string { return k.Prefix + "agents" }

// WebhookSecret holds the generated secret of a webhook that has none in config.
func (k Keys) WebhookSecret(name string) string { return k.Prefix + "webhook:" + name + ":secret" }

// Delivery marks a GitHub delivery id as published (string, 7-day TTL), so
// a redelivery after the JetStream duplicate window is still recognised.
func (k Keys) Delivery(id string) string { return k.Prefix + "delivery:" + id }

// Idempotency maps an API Idempotency-Key to the answer it got (string, TTL).
func (k Keys) Idempotency(scope, key string) string {
	return k.Prefix + "idempotency:" + scope + ":" + key
}

// Audit is a stream of every write through the API: who, what, when.
func (k Keys) Audit() string { return k.Prefix + "audit" }

// Timers is a sorted set of pending timers ("<flow id>|<timer key>") scored
// by due time (ms).
func (k Keys) Timers() string { return k.Prefix + "timers" }

// EnvSlot holds the deployment id now deploying to (service, environment).
func (k Keys) EnvSlot(service, env string) string {
	return k.Prefix + "env:{" + service + ":" + env + "}:slot"
}

// EnvQueue is the list of deployment ids waiting for (service, environment).
func (k Keys) EnvQueue(service, env string) string {
	return k.Prefix + "env:{" + service + ":" + env + "}:queue"
}

// EnvReleased is a sorted set of the deployment ids that released
// (service, environment), by ms: a stale request of theirs is refused.
func (k Keys) EnvReleased(service, env string) string {
	return k.Prefix + "env:{" + service + ":" + env + "}:released"
}

// ServiceActive is a sorted set of a service's flow ids scored by creation
// time (µs): supersede looks here for older and newer flows. A flow that
// ended keeps the negated score, out of the lookups' range (0 and up), so
// that no late add (always NX) brings it back.
func (k Keys) ServiceActive(service string) string {
	return k.Prefix + "service:{" + service + "}:active"
}

// ServiceFlows is a sorted set of every flow id of a service by creation time (ms).
func (k Keys) ServiceFlows(service string) string {
	return k.Prefix + "service:{" + service + "}:flows"
}

// LastSucceeded is a hash of environment -> JSON of the last version that
// succeeded there (rollback target).
func (k Keys) LastSucceeded(service string) string {
	return k.Prefix + "service:{" + service + "}:last_succeeded"
}

// LastSucceededAt is a hash of environment -> when the version in
// LastSucceeded succeeded there (µs since the epoch): an older success,
// replayed late, does not replace a newer one.
func (k Keys) LastSucceededAt(service string) string {
	return k.Prefix + "service:{" + service + "}:last_succeeded_at"
}

// ArtifactVersions is a sorted set of an artifact's versions by first-seen time (ms).
func (k Keys) ArtifactVersions(artifact string) string {
	return k.Prefix + "artifact:{" + artifact + "}:versions"
}

// RedeliveryRequested marks a GitHub delivery GUID whose redelivery the
// repair loop asked for (string, TTL), so that it asks at most once.
func (k Keys) RedeliveryRequested(guid string) string {
	return k.Prefix + "ghrepair:requested:" + guid
}

// RepairScan holds the time (unix ms) of the last complete repair scan of
// one GitHub hook ("repo:<org>/<repo>:<id>" or "org:<org>:<id>").
func (k Keys) RepairScan(hook string) string { return k.Prefix + "ghrepair:scan:" + hook }

// Lease is a lease held by one replica (string: the holder's random token,
// with a PX time to live).
func (k Keys) Lease(name string) string { return k.Prefix + "lease:" + name }
