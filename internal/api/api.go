// Package api is the control server's JSON API under /api/v1: the wire
// types the server, the agent and the CLI share, and a client for them.
package api

import (
	"encoding/json"
	"time"
)

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

// CreateRelease is the body of POST /api/v1/releases: it records a release
// and starts a rollout of it (queued behind the environment's running one).
type CreateRelease struct {
	App    string `json:"app"`
	Env    string `json:"env"`
	Spec   string `json:"spec"`
	Commit string `json:"commit,omitempty"`
	Note   string `json:"note,omitempty"`
	// Config is the app's drover.yml at Commit (its text): the rollout
	// takes the environment's strategy, load balancer and hooks from it.
	// Empty: the default strategy, no load balancer, and the run_once
	// hooks run on one node chosen by the server (RunOnceAll).
	Config string `json:"config,omitempty"`
	// Strategy replaces the strategy type drover.yml gives (--strategy).
	Strategy string `json:"strategy,omitempty"`
	// NoWait fails at once (409) when another rollout runs or waits.
	NoWait bool `json:"no_wait,omitempty"`
	// Supersede replaces every older queued rollout of the environment
	// (never a running one).
	Supersede bool     `json:"supersede,omitempty"`
	Hotfix    bool     `json:"hotfix,omitempty"`
	Skip      []string `json:"skip,omitempty"` // run_once hooks not to run
}

// ReleaseCreated answers CreateRelease: the release and its rollout.
type ReleaseCreated struct {
	Release
	Rollout *Rollout `json:"rollout,omitempty"`
}

// Rollout is a rollout as the server shows it: a server-run one across
// agents, or a push deploy holding the environment's lease.
type Rollout struct {
	ID        int64         `json:"id"`
	App       string        `json:"app"`
	Env       string        `json:"env"`
	Kind      string        `json:"kind"` // server or push
	ReleaseID int64         `json:"release_id,omitempty"`
	Release   string        `json:"release,omitempty"` // engine release ID when known
	Strategy  string        `json:"strategy"`
	State     string        `json:"state"`              // queued, running, paused, succeeded, failed, cancelled, superseded, aborted
	Position  int           `json:"position,omitempty"` // place in the queue while queued (1 = next)
	Phase     string        `json:"phase,omitempty"`
	Error     string        `json:"error,omitempty"`
	Token     int64         `json:"token,omitempty"` // its fencing token once it holds the lease
	Runner    string        `json:"runner,omitempty"`
	CreatedBy string        `json:"created_by"`
	CreatedAt time.Time     `json:"created_at"`
	StartedAt time.Time     `json:"started_at,omitzero"`
	EndedAt   time.Time     `json:"ended_at,omitzero"`
	Nodes     []RolloutNode `json:"nodes,omitempty"`
	// HeldBy and HeldSince, while the rollout is queued: who holds the
	// environment's deploy lease now and since when (empty when it is
	// free and a deploy ahead is about to take it).
	HeldBy    string    `json:"held_by,omitempty"`
	HeldSince time.Time `json:"held_since,omitzero"`
	// RenewEvery, for a push rollout that holds the lease: send
	// PushProgress at least this often, or the lease lapses and the next
	// deploy takes the lock.
	RenewEvery time.Duration `json:"renew_every,omitempty"`
}

// RolloutNode is one node's progress in a rollout.
type RolloutNode struct {
	Node      string    `json:"node"`
	Action    string    `json:"action"`
	Task      int64     `json:"task"`
	State     string    `json:"state"` // assigned, working, done, failed
	Step      string    `json:"step,omitempty"`
	Error     string    `json:"error,omitempty"`
	Serving   string    `json:"serving,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Decision is the body of POST /api/v1/rollouts/{id}/decide and of
// POST /api/v1/rollouts/decide?app=&env= (the environment's paused one).
type Decision struct {
	Decision string `json:"decision"` // promote or abort
}

// BeginPush is the body of POST /api/v1/push: a push deployer asks for a
// place in the environment's queue; the answer is a Rollout of kind push.
type BeginPush struct {
	App       string   `json:"app"`
	Env       string   `json:"env"`
	Holder    string   `json:"holder"` // user@machine
	Release   string   `json:"release"`
	Strategy  string   `json:"strategy"`
	Hosts     []string `json:"hosts"`
	Supersede bool     `json:"supersede,omitempty"`
}

// PushProgress is the body of POST /api/v1/push/{id}/progress: hosts'
// progress (and, with Done, the outcome) of a push deploy that holds the
// lease; it also renews the lease. Answered 409 when the lease was lost.
type PushProgress struct {
	Phase string        `json:"phase,omitempty"`
	Nodes []RolloutNode `json:"nodes,omitempty"`
	Done  bool          `json:"done,omitempty"`
	OK    bool          `json:"ok,omitempty"`
	Error string        `json:"error,omitempty"`
	// Report is the deployer's final rollout report (JSON), with Done.
	Report json.RawMessage `json:"report,omitempty"`
}

// Queue answers GET /api/v1/queue?app=&env=: an environment's deploy
// lock holder and the deploys waiting, next first.
type Queue struct {
	App    string       `json:"app"`
	Env    string       `json:"env"`
	Holder *QueueTicket `json:"holder,omitempty"` // nil when free
	// Expired says the holder's lease lapsed: the next deploy (or, for a
	// server rollout, another server) takes it over.
	Expired   bool          `json:"expired,omitempty"`
	LastToken int64         `json:"last_token"`
	Queue     []QueueTicket `json:"queue"`
}

// QueueTicket is a deploy holding or waiting for an environment's lease:
// the holder's lease (TicketID, Since, ExpiresAt) or a queued ticket (ID,
// Position, CreatedAt).
type QueueTicket struct {
	ID        int64     `json:"id,omitempty"`
	TicketID  int64     `json:"ticket_id,omitempty"`
	Holder    string    `json:"holder"`
	Token     int64     `json:"token,omitempty"`
	Position  int       `json:"position,omitempty"`
	Since     time.Time `json:"since,omitzero"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	CreatedAt time.Time `json:"created_at,omitzero"`
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
	ActionActivate = "activate" // prepare (if not yet) and activate the release (default)
	ActionPrepare  = "prepare"  // only prepare it; a coordinated rollout activates later
	ActionHooks    = "hooks"    // run the run_once hooks RunOnce of Stage for the release
	ActionRollback = "rollback" // switch back to the engine release To
)

// RunOnceAll in DesiredApp.RunOnce asks the node to run every run_once
// hook of the stage whose role it has (the server did not get drover.yml).
const RunOnceAll = "*"

// DesiredApp is the release one app of a node should run, and, inside a
// server-run rollout, the task the rollout asks of the node now.
type DesiredApp struct {
	App     string   `json:"app"`
	Env     string   `json:"env"`
	Release *Release `json:"release,omitempty"` // nil: no release yet
	Action  string   `json:"action"`
	// Token is the fencing token of the environment's deploy lease this
	// state was handed out under: an agent refuses a state with a lower
	// token than one it acted on for this app/env.
	Token int64 `json:"token,omitempty"`
	// Rollout is the server rollout this task is part of; 0 outside one
	// (the node converges to the environment's last completed release,
	// running no run_once hook).
	Rollout int64 `json:"rollout,omitempty"`
	// Task numbers the rollout's requests of this node: the same task is
	// the same work, done once; the agent reports on it (StartUpgrade).
	Task int64 `json:"task,omitempty"`
	// Stage and RunOnce: the run_once hooks this task runs on this node
	// (prepare: of the prepare stage; hooks: of Stage).
	Stage   string   `json:"stage,omitempty"`
	RunOnce []string `json:"run_once,omitempty"`
	To      string   `json:"to,omitempty"` // rollback: engine release ID
	Hotfix  bool     `json:"hotfix,omitempty"`
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
	// Rollout and Task: the rollout task this upgrade does (from
	// DesiredApp); 0 outside a rollout.
	Rollout int64 `json:"rollout,omitempty"`
	Task    int64 `json:"task,omitempty"`
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
	// Serving is the engine release ID the node serves after the work
	// ended, as it checked (with the final report).
	Serving string `json:"serving,omitempty"`
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
