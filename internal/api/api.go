// Package api is the control server's JSON API under /api/v1: the wire
// types the server, the agent and the CLI share, and a client for them.
package api

import "time"

// Prefix is the path of version 1 of the API.
const Prefix = "/api/v1"

// Release is a release as the server records it: the version spec is
// resolved to one commit once, so every node deploys the same commit.
type Release struct {
	ID        int64     `json:"id"`
	App       string    `json:"app"`
	Env       string    `json:"env"`
	Spec      string    `json:"spec"`
	Commit    string    `json:"commit,omitempty"` // empty until resolved (by the CLI or the first agent)
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	Note      string    `json:"note,omitempty"`
}

// CreateRelease is the body of POST /api/v1/releases.
type CreateRelease struct {
	App    string `json:"app"`
	Env    string `json:"env"`
	Spec   string `json:"spec"`
	Commit string `json:"commit,omitempty"`
	Note   string `json:"note,omitempty"`
}

// ResolveRelease is the body of POST /api/v1/releases/{id}/resolve: an
// agent that resolved the spec reports the commit; the first one wins and
// the answer is the commit every node must use.
type ResolveRelease struct {
	Commit string `json:"commit"`
}

// NodeApp is one app an agent keeps deployed.
type NodeApp struct {
	App     string   `json:"app"`
	Env     string   `json:"env"`
	Roles   []string `json:"roles,omitempty"`
	Release string   `json:"release,omitempty"` // the engine's release ID running now
	Commit  string   `json:"commit,omitempty"`
}

// Join is the body of POST /api/v1/agents/join: a one-time join token is
// exchanged for a node token.
type Join struct {
	JoinToken    string    `json:"join_token"`
	Node         string    `json:"node"`
	Hostname     string    `json:"hostname"`
	AgentVersion string    `json:"agent_version"`
	Apps         []NodeApp `json:"apps"`
}

// CreateJoinToken is the body of POST /api/v1/join-tokens. A join token
// is scoped: the node that joins with it, and its agent token, may act only
// on the apps in Apps (or any app with AnyApp) and the environments in Envs
// (any when empty). One of Apps and AnyApp is required.
type CreateJoinToken struct {
	TTL     string   `json:"ttl,omitempty"` // a duration, default 1h, at most 720h
	Note    string   `json:"note,omitempty"`
	Apps    []string `json:"apps,omitempty"`
	Envs    []string `json:"envs,omitempty"`
	AnyApp  bool     `json:"any_app,omitempty"`
	Replace string   `json:"replace,omitempty"` // a node name this token may take over; its old tokens are revoked
}

// JoinToken answers CreateJoinToken: the one-time secret and its scope.
type JoinToken struct {
	Token     string    `json:"token"`
	ID        int64     `json:"id"`
	ExpiresAt time.Time `json:"expires_at"`
	Apps      []string  `json:"apps,omitempty"`
	Envs      []string  `json:"envs,omitempty"`
	Replace   string    `json:"replace,omitempty"`
}

// Joined answers a Join.
type Joined struct {
	Node  string `json:"node"`
	Token string `json:"token"`
}

// Hello is the body of POST /api/v1/agents/hello: what a node runs now.
type Hello struct {
	Hostname     string    `json:"hostname"`
	AgentVersion string    `json:"agent_version"`
	Apps         []NodeApp `json:"apps"`
}

// Actions the server can ask of an agent for one app.
const (
	ActionActivate = "activate" // prepare and activate the release (default)
	ActionPrepare  = "prepare"  // only prepare it; a coordinated rollout activates later
)

// DesiredApp is the release one app of a node should run.
type DesiredApp struct {
	App     string   `json:"app"`
	Env     string   `json:"env"`
	Release *Release `json:"release,omitempty"` // nil: no release yet
	Action  string   `json:"action"`
}

// Desired is the answer to GET /api/v1/agents/desired?wait=30s&version=N:
// it comes back at once when Version differs from N, else when the desired
// state changes or the wait ends.
type Desired struct {
	Version int64        `json:"version"`
	Apps    []DesiredApp `json:"apps"`
}

// Upgrade statuses.
const (
	StatusPending    = "pending"
	StatusPreparing  = "preparing"
	StatusActivating = "activating"
	StatusSucceeded  = "succeeded"
	StatusFailed     = "failed"
)

// StartUpgrade is the body of POST /api/v1/upgrades.
type StartUpgrade struct {
	ReleaseID int64  `json:"release_id"`
	App       string `json:"app"`
	Env       string `json:"env"`
}

// Upgrade is one node moving to one release.
type Upgrade struct {
	ID        int64     `json:"id"`
	Node      string    `json:"node"`
	ReleaseID int64     `json:"release_id"`
	App       string    `json:"app"`
	Env       string    `json:"env"`
	Status    string    `json:"status"`
	Step      string    `json:"step,omitempty"`
	Error     string    `json:"error,omitempty"`
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at,omitzero"`
	Steps     []Step    `json:"steps,omitempty"`
}

// Step is one step of an upgrade with its log.
type Step struct {
	Name    string        `json:"name"`
	Status  string        `json:"status"` // running, ok, failed
	Started time.Time     `json:"started"`
	Elapsed time.Duration `json:"elapsed"`
	Log     string        `json:"log,omitempty"`
}

// Report is the body of POST /api/v1/upgrades/{id}/report: progress of an
// upgrade, sent as it goes and once at the end.
type Report struct {
	Status string `json:"status"`
	Step   string `json:"step,omitempty"`
	Error  string `json:"error,omitempty"`
	Steps  []Step `json:"steps,omitempty"` // steps changed since the last report
}

// NodeStatus is one node's line in `drover status`.
type NodeStatus struct {
	Node     string    `json:"node"`
	Hostname string    `json:"hostname"`
	App      string    `json:"app"`
	Env      string    `json:"env"`
	Roles    []string  `json:"roles,omitempty"`
	Release  string    `json:"release"`           // engine release ID running now
	Commit   string    `json:"commit"`            // its commit
	Status   string    `json:"status"`            // of the latest upgrade: pending|preparing|activating|succeeded|failed
	Step     string    `json:"step"`              // its current or failed step
	Target   int64     `json:"target_release_id"` // the server release the latest upgrade goes to
	Since    time.Time `json:"since,omitzero"`    // when the latest upgrade started
	Error    string    `json:"error,omitempty"`
	LastSeen time.Time `json:"last_seen"`
	Stale    bool      `json:"stale"` // not seen for three long-poll periods
	Agent    string    `json:"agent_version"`
}

// Error is the body of every error answer.
type Error struct {
	Error  string `json:"error"`
	Detail string `json:"detail,omitempty"`
}
