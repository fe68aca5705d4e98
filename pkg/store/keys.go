package store

// Keys builds every Redis key. A flow's keys put the flow id in {} so they
// share one Redis Cluster slot and one Lua script may touch them all; a
// repository's index keys do the same with the repository.
type Keys struct{ Prefix string }

// Flow is a hash: "state" (flow JSON) and "rev" (write version).
func (k Keys) Flow(flowID string) string { return k.Prefix + "flow:{" + flowID + "}" }

// Applied is a set of event ids already applied to a flow.
func (k Keys) Applied(flowID string) string { return k.Prefix + "flow:{" + flowID + "}:applied" }

// Outbox is a list of effects written with the state, not yet published.
func (k Keys) Outbox(flowID string) string { return k.Prefix + "flow:{" + flowID + "}:outbox" }

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
