// Package store is the control server's persistence: releases, nodes,
// upgrades, tokens and audit events behind one interface, Store, with three
// backends — SQLite (the default, embedded, modernc.org/sqlite), PostgreSQL
// (pgx) and MySQL/MariaDB (go-sql-driver/mysql). The schema is migrated by
// embedded goose migrations, one directory per dialect, every time a Store is
// opened.
//
// Every backend passes the same conformance suite (store_test.go +
// suite_test.go), run against real PostgreSQL and MariaDB servers that
// internal/testenv/dbtest starts.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"
)

// Sentinel errors callers branch on. Errors returned by a Store wrap them, so
// test with errors.Is.
var (
	// ErrNotFound means the record asked for (or one it refers to) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrConflict means the write collides with an existing record (a duplicate token hash).
	ErrConflict = errors.New("conflict")
	// ErrTokenUsed means a one-time join token was already consumed.
	ErrTokenUsed = errors.New("token already used")
	// ErrTokenRevoked means the token was revoked.
	ErrTokenRevoked = errors.New("token revoked")
	// ErrTokenExpired means the token is past its expiry time.
	ErrTokenExpired = errors.New("token expired")
	// ErrInvalid means the input was rejected before it reached the database
	// (an unknown status or token kind, an empty name).
	ErrInvalid = errors.New("invalid input")
	// ErrPermission means the database user lacks a right the store needs;
	// the error is a *PermissionError that says which right and what to do.
	ErrPermission = errors.New("database permission denied")
	// ErrClosed is returned by Watch after Close.
	ErrClosed = errors.New("store closed")
	// ErrLeaseLost means the deploy lease is no longer the caller's: it
	// expired and another ticket took it over (or the ticket expired while
	// queued because nobody waited on it any more).
	ErrLeaseLost = errors.New("deploy lease lost")
	// ErrSuperseded means a newer ticket of the same environment, enqueued
	// with supersede, replaced this queued one.
	ErrSuperseded = errors.New("superseded by a newer deploy")
	// ErrCancelled means the queued ticket was cancelled.
	ErrCancelled = errors.New("deploy cancelled")
	// ErrNotQueued means the ticket is no longer waiting (it runs or ended),
	// so it cannot be cancelled.
	ErrNotQueued = errors.New("ticket is not queued")
)

// Store is the control server's persistence. All methods are safe for
// concurrent use by many goroutines and by several Store instances (server
// replicas) on the same database. Times are stored in UTC with microsecond
// precision; a zero time in an input means "now".
type Store interface {
	// Dialect names the backend: "sqlite", "postgres" or "mysql".
	Dialect() string

	// CreateRelease records r (ID and CreatedAt are assigned; Commit may be
	// empty until ResolveRelease), creates its app and environment when they
	// are new, bumps the environment's Version and wakes every Watch, on
	// every replica. It returns the stored release.
	CreateRelease(ctx context.Context, r Release) (Release, error)
	// GetRelease returns one release, or ErrNotFound.
	GetRelease(ctx context.Context, id int64) (Release, error)
	// ListReleases returns releases newest first (by ID), filtered by f.
	ListReleases(ctx context.Context, f ReleaseFilter) ([]Release, error)
	// LatestRelease returns the newest release of app/env, or ErrNotFound.
	LatestRelease(ctx context.Context, app, env string) (Release, error)
	// ResolveRelease sets the release's commit if it is still empty and
	// returns the commit stored afterwards: the first resolver wins and every
	// later caller gets the winner's commit. ErrNotFound for an unknown id.
	ResolveRelease(ctx context.Context, id int64, commit string) (string, error)

	// ListEnvironments returns the environments of app (all apps when app
	// is ""), ordered by app and name, each with its Version.
	ListEnvironments(ctx context.Context, app string) ([]Environment, error)
	// Version returns the desired-state counter of app/env: it grows every
	// time the desired state changes (a new release, BumpVersion). An
	// environment that does not exist yet has version 0, not an error, so an
	// agent can wait on it before the first release.
	Version(ctx context.Context, app, env string) (int64, error)
	// BumpVersion increments app/env's Version (creating the app and
	// environment if needed), wakes every Watch and returns the new value.
	// For desired-state changes that are not a new release (a rollout step).
	BumpVersion(ctx context.Context, app, env string) (int64, error)
	// Watch returns a channel that receives a Change whenever the desired
	// state of any app/env changes, on this or any other replica. When it
	// returns, the subscription is live: a change committed afterwards will
	// be delivered. Changes are hints for long-polls: a receiver that falls
	// behind gets them coalesced (one Change per environment, at the newest
	// version) but never loses an environment, and a Change with empty App
	// means "anything may have changed" (sent after a lost connection, or
	// when very many environments are pending), so receivers re-read
	// Version. The channel is closed when ctx is done or the Store closes.
	Watch(ctx context.Context) (<-chan Change, error)

	// RegisterNode creates the node (Name, App, Env identify it) or updates
	// its Hostname, Roles and AgentVersion, sets LastSeen, creates the app and
	// environment when they are new, and returns the stored node.
	RegisterNode(ctx context.Context, n Node) (Node, error)
	// GetNode returns one node, or ErrNotFound.
	GetNode(ctx context.Context, id int64) (Node, error)
	// FindNode returns the node called name in app/env, or ErrNotFound.
	FindNode(ctx context.Context, name, app, env string) (Node, error)
	// ListNodes returns nodes ordered by app, env and name, filtered by f.
	ListNodes(ctx context.Context, f NodeFilter) ([]Node, error)
	// TouchNode sets the node's LastSeen to at (now if zero).
	TouchNode(ctx context.Context, id int64, at time.Time) error
	// TouchNodes sets the LastSeen of many nodes (ID → time) in a few
	// short transactions; IDs of nodes that are gone are skipped.
	TouchNodes(ctx context.Context, seen map[int64]time.Time) error
	// SetNodeRelease records that the node now runs release releaseID.
	SetNodeRelease(ctx context.Context, nodeID, releaseID int64) error

	// CreateUpgrade records a node's move to a release (Status defaults to
	// pending) and returns it with its ID. ErrNotFound if the node or the
	// release does not exist.
	CreateUpgrade(ctx context.Context, u Upgrade) (Upgrade, error)
	// GetUpgrade returns one upgrade with its Steps in the order they were
	// first saved, or ErrNotFound.
	GetUpgrade(ctx context.Context, id int64) (Upgrade, error)
	// UpdateUpgrade writes u's Status, CurrentStep, StartedAt, EndedAt and
	// Error (other fields are ignored; Steps are saved with SaveStep).
	UpdateUpgrade(ctx context.Context, u Upgrade) error
	// ListUpgrades returns upgrades newest first, without Steps, filtered by f.
	ListUpgrades(ctx context.Context, f UpgradeFilter) ([]Upgrade, error)
	// SaveStep creates or updates the step (UpgradeID, Name) with Status,
	// StartedAt and EndedAt; its Log is left as it is (see AppendStepLog).
	SaveStep(ctx context.Context, s Step) error
	// AppendStepLog appends text to the step's log, creating the step as
	// running if it does not exist yet. ErrNotFound for an unknown upgrade.
	AppendStepLog(ctx context.Context, upgradeID int64, step, text string) error

	// CreateToken stores a token (only its Hash, never the secret) and
	// returns it with its ID. ErrConflict if the hash exists already.
	CreateToken(ctx context.Context, t Token) (Token, error)
	// TokenByHash returns the token with this hash, whatever its state
	// (callers check Valid), or ErrNotFound.
	TokenByHash(ctx context.Context, hash string) (Token, error)
	// ListTokens returns tokens ordered by ID, optionally of one kind ("" for all).
	ListTokens(ctx context.Context, kind TokenKind) ([]Token, error)
	// AgentTokens returns the agent tokens of node, whatever their state,
	// ordered by ID.
	AgentTokens(ctx context.Context, node string) ([]Token, error)
	// RevokeToken revokes a token; revoking twice is not an error.
	RevokeToken(ctx context.Context, id int64) error
	// RevokedTokens counts the revoked tokens. Tokens are never deleted
	// nor unrevoked, so the count only grows: a server that sees it
	// unchanged knows no token was revoked meanwhile.
	RevokedTokens(ctx context.Context) (int64, error)
	// ConsumeJoinToken marks the join token with this hash used at at (now
	// if zero) and returns it. It is atomic: of any number of concurrent
	// callers on any replica exactly one succeeds; the others get
	// ErrTokenUsed. ErrTokenRevoked, ErrTokenExpired or ErrNotFound
	// (also for a hash of a token that is not a join token) otherwise.
	ConsumeJoinToken(ctx context.Context, hash string, at time.Time) (Token, error)

	// AppendAudit records an event and returns it with its ID.
	AppendAudit(ctx context.Context, e AuditEvent) (AuditEvent, error)
	// ListAudit returns events newest first, filtered by f.
	ListAudit(ctx context.Context, f AuditFilter) ([]AuditEvent, error)

	// EnqueueTicket appends t (App, Env and Holder set; CreatedAt zero means
	// now) to its environment's deploy queue and returns it with its ID,
	// State queued and Position. With supersede, every older queued ticket of
	// the environment becomes superseded (never a running one).
	EnqueueTicket(ctx context.Context, t Ticket, supersede bool) (Ticket, error)
	// TryAcquire tries to give ticket id the environment's lease at time at
	// for ttl, atomically across replicas: it succeeds (true) when the ticket
	// is the oldest live queued one and the lease is free or expired (the
	// expired holder's ticket becomes expired); the new lease's Token is one
	// more than any token the environment ever handed out. When it must wait
	// it returns false and the current holder's lease (zero when free). Each
	// call also proves the waiter alive: a queued ticket not tried for ttl is
	// expired so it cannot block the queue (a Resumable one is not: any
	// replica's runner picks it up). A holder whose lease lapsed loses it to
	// the head, unless its ticket is Resumable: then the queue waits for
	// TakeOverLease (or ReleaseLease). A ticket that already holds the
	// lease gets it back. ErrSuperseded, ErrCancelled, ErrLeaseLost (the
	// ticket expired), ErrNotFound.
	TryAcquire(ctx context.Context, id int64, at time.Time, ttl time.Duration) (Lease, bool, error)
	// RenewLease extends l to at+ttl if the environment's lease is still l's
	// (same ticket and token, even if it expired meanwhile and nobody took
	// it); ErrLeaseLost otherwise.
	RenewLease(ctx context.Context, l Lease, at time.Time, ttl time.Duration) (Lease, error)
	// ReleaseLease frees the environment's lease held by l and marks its
	// ticket done at at; ErrLeaseLost if another ticket holds it now.
	ReleaseLease(ctx context.Context, l Lease, at time.Time) error
	// CancelTicket cancels a queued ticket (cancelling twice is not an
	// error); ErrNotQueued when it runs or ended, ErrNotFound.
	CancelTicket(ctx context.Context, id int64, at time.Time) (Ticket, error)
	// GetTicket returns one ticket (Position set while queued), or ErrNotFound.
	GetTicket(ctx context.Context, id int64) (Ticket, error)
	// QueueStatus returns app/env's lease holder (as stored: callers compare
	// ExpiresAt with their clock) and its queued tickets in order.
	QueueStatus(ctx context.Context, app, env string) (QueueStatus, error)

	// TakeOverLease continues ticket id's expired lease for a new runner
	// (another replica, or this server after a restart): when the ticket is
	// running, Resumable, and its lease expired at at, it gets a new
	// fencing token (one more than any handed out) and expires at at+ttl.
	// Of replicas racing, exactly one succeeds; the others get
	// ErrLeaseLost, as does a caller whose ticket's lease has not expired
	// or that is not running.
	TakeOverLease(ctx context.Context, id int64, at time.Time, ttl time.Duration) (Lease, error)

	// GetEnvironment returns app/env with its Version and CurrentRelease,
	// or ErrNotFound.
	GetEnvironment(ctx context.Context, app, env string) (Environment, error)
	// SetCurrentRelease records releaseID as app/env's last completed
	// release (what nodes outside a running rollout converge to), bumps the
	// environment's Version and wakes every Watch. ErrNotFound when the
	// release is not one of app/env's.
	SetCurrentRelease(ctx context.Context, app, env string, releaseID int64) error

	// CreateRollout records r (ID and CreatedAt assigned; State defaults
	// to queued) and returns it.
	CreateRollout(ctx context.Context, r Rollout) (Rollout, error)
	// GetRollout returns one rollout, or ErrNotFound.
	GetRollout(ctx context.Context, id int64) (Rollout, error)
	// RolloutByTicket returns the rollout that owns deploy ticket id, or
	// ErrNotFound.
	RolloutByTicket(ctx context.Context, ticketID int64) (Rollout, error)
	// ListRollouts returns rollouts newest first (by ID), filtered by f.
	ListRollouts(ctx context.Context, f RolloutFilter) ([]Rollout, error)
	// UpdateRollout writes r's State, Phase, Error, StartedAt, EndedAt,
	// Report and Runner (other fields are fixed at creation; Decision is
	// written by DecideRollout).
	UpdateRollout(ctx context.Context, r Rollout) error
	// DecideRollout records an operator's decision ("promote" or "abort")
	// on rollout id and returns the rollout; ErrNotQueued when the rollout
	// ended, ErrInvalid for another decision.
	DecideRollout(ctx context.Context, id int64, decision string) (Rollout, error)

	// AssignRolloutNodes creates or replaces, in one transaction, the
	// requests a rollout makes of nodes (RolloutID, Node identify each; all
	// of one rollout): NodeID, Action, Stage, RunOnce, To, Task, Token,
	// State (default assigned; Step, Error, Serving, UpgradeID cleared) and
	// UpdatedAt (now); ErrInvalid when a node is listed twice. It is fenced: ErrLeaseLost, and nothing written,
	// unless the Token is the fencing token of the environment's lease now
	// held by the rollout's ticket, so a runner that lost its lease can no
	// longer hand out work.
	AssignRolloutNodes(ctx context.Context, nodes []RolloutNode) error
	// ReportRolloutNode records a node's progress on task n.Task of
	// rollout n.RolloutID: State, Step, Error, Serving, UpgradeID, and sets
	// UpdatedAt. It changes nothing (and returns false) when the node's
	// current task is another one (an old report arriving late), or when
	// the task already ended (done or failed) and the report is not final
	// (a progress report overtaken by the result).
	ReportRolloutNode(ctx context.Context, n RolloutNode) (bool, error)
	// GetRolloutNode returns one node's row of a rollout (its current
	// task), or ErrNotFound: the agent's report path reads this, never the
	// whole rollout, so ten thousand reports cost ten thousand row reads.
	GetRolloutNode(ctx context.Context, rolloutID int64, node string) (RolloutNode, error)
	// ListRolloutNodes returns a rollout's nodes ordered by name.
	ListRolloutNodes(ctx context.Context, rolloutID int64) ([]RolloutNode, error)

	// Close stops watchers and closes the database.
	Close() error
}

// Release is an immutable record of what an environment should run.
type Release struct {
	ID        int64     `json:"id"`
	App       string    `json:"app"`
	Env       string    `json:"env"`
	Spec      string    `json:"spec"`   // version spec as given: branch:x, tag:x, commit:x
	Commit    string    `json:"commit"` // resolved commit; empty until resolved
	CreatedBy string    `json:"created_by"`
	CreatedAt time.Time `json:"created_at"`
	Note      string    `json:"note,omitempty"`
}

// ReleaseFilter selects releases; zero fields match everything.
type ReleaseFilter struct {
	App, Env string
	BeforeID int64 // only releases with ID < BeforeID (paging)
	Limit    int   // 0 means no limit
}

// Environment is one app's environment and its desired-state version.
type Environment struct {
	App       string    `json:"app"`
	Name      string    `json:"name"`
	Version   int64     `json:"version"`
	CreatedAt time.Time `json:"created_at"`
	// CurrentRelease is the environment's last completed release: what a
	// node outside a running rollout (joining, coming back) converges to;
	// 0 when none yet.
	CurrentRelease int64 `json:"current_release,omitempty"`
}

// Change says that the desired state of App/Env reached Version. An empty App
// means any environment may have changed.
type Change struct {
	App     string `json:"app"`
	Env     string `json:"env"`
	Version int64  `json:"version"`
}

// Node is one server's membership in one app environment, as registered by
// its agent. An agent that runs several apps has one Node per app/env, all
// with the same Name.
type Node struct {
	ID             int64     `json:"id"`
	Name           string    `json:"name"`
	Hostname       string    `json:"hostname"`
	App            string    `json:"app"`
	Env            string    `json:"env"`
	Roles          []string  `json:"roles"`
	AgentVersion   string    `json:"agent_version"`
	CreatedAt      time.Time `json:"created_at"`
	LastSeen       time.Time `json:"last_seen"`
	CurrentRelease int64     `json:"current_release,omitempty"` // 0 when none yet
}

// NodeFilter selects nodes; zero fields match everything.
type NodeFilter struct {
	App, Env, Name string
}

// UpgradeStatus is where an upgrade stands.
type UpgradeStatus string

// The upgrade statuses, in the order an upgrade goes through them.
const (
	UpgradePending    UpgradeStatus = "pending"
	UpgradePreparing  UpgradeStatus = "preparing"
	UpgradeActivating UpgradeStatus = "activating"
	UpgradeSucceeded  UpgradeStatus = "succeeded"
	UpgradeFailed     UpgradeStatus = "failed"
)

// Valid reports whether s is one of the known statuses.
func (s UpgradeStatus) Valid() bool {
	switch s {
	case UpgradePending, UpgradePreparing, UpgradeActivating, UpgradeSucceeded, UpgradeFailed:
		return true
	}
	return false
}

// Done reports whether s is final.
func (s UpgradeStatus) Done() bool { return s == UpgradeSucceeded || s == UpgradeFailed }

// Upgrade is one node moving to one release.
type Upgrade struct {
	ID          int64         `json:"id"`
	NodeID      int64         `json:"node_id"`
	ReleaseID   int64         `json:"release_id"`
	Status      UpgradeStatus `json:"status"`
	CurrentStep string        `json:"step"`
	CreatedAt   time.Time     `json:"created_at"`
	StartedAt   time.Time     `json:"started_at"` // zero until started
	EndedAt     time.Time     `json:"ended_at"`   // zero until ended
	Error       string        `json:"error,omitempty"`
	Steps       []Step        `json:"steps,omitempty"` // filled by GetUpgrade only
	// RolloutID and Task, set at creation, are the rollout task this
	// upgrade does (0: a node converging outside any rollout).
	RolloutID int64 `json:"rollout_id,omitempty"`
	Task      int64 `json:"task,omitempty"`
}

// UpgradeFilter selects upgrades; zero fields match everything. App and Env
// match the release's app and environment.
type UpgradeFilter struct {
	App, Env  string
	NodeID    int64
	ReleaseID int64
	Limit     int // 0 means no limit
}

// Step is one step of an upgrade with its timings and log.
type Step struct {
	UpgradeID int64     `json:"upgrade_id"`
	Name      string    `json:"name"`
	Status    string    `json:"status"` // free text set by the agent: running, ok, failed, skipped
	StartedAt time.Time `json:"started_at"`
	EndedAt   time.Time `json:"ended_at"`
	Log       string    `json:"log,omitempty"`
}

// TokenKind is what a token allows.
type TokenKind string

// The token kinds.
const (
	TokenAdmin TokenKind = "admin" // people and CI: everything
	TokenAgent TokenKind = "agent" // one node: its own desired state and upgrades
	TokenJoin  TokenKind = "join"  // one-time: exchanged for an agent token
)

// Valid reports whether k is one of the known kinds.
func (k TokenKind) Valid() bool { return k == TokenAdmin || k == TokenAgent || k == TokenJoin }

// Token is a bearer token as stored: its SHA-256 hash, never the secret.
type Token struct {
	ID        int64     `json:"id"`
	Kind      TokenKind `json:"kind"`
	Node      string    `json:"node,omitempty"` // node name an agent token belongs to
	Hash      string    `json:"-"`              // hex SHA-256 of the secret
	Note      string    `json:"note,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at"` // zero: never
	UsedAt    time.Time `json:"used_at"`    // join tokens: when consumed
	Revoked   bool      `json:"revoked"`
	// Apps and Envs scope join and agent tokens: the token may act only on
	// an app in Apps and an environment in Envs; an empty list allows any
	// (tokens made before scopes existed have both empty). An agent token
	// carries the scope of the join token it was minted from.
	Apps []string `json:"apps,omitempty"`
	Envs []string `json:"envs,omitempty"`
	// Replace, on a join token, is the node name it may take over from a
	// live agent token (whose tokens are then revoked); empty: none.
	Replace string `json:"replace,omitempty"`
}

// Allows reports whether the token's scope covers app/env.
func (t Token) Allows(app, env string) bool {
	return (len(t.Apps) == 0 || slices.Contains(t.Apps, app)) && (len(t.Envs) == 0 || slices.Contains(t.Envs, env))
}

// Check returns nil when the token can be used at now, or ErrTokenRevoked,
// ErrTokenExpired or (for a consumed join token) ErrTokenUsed.
func (t Token) Check(now time.Time) error {
	switch {
	case t.Revoked:
		return ErrTokenRevoked
	case !t.ExpiresAt.IsZero() && !now.Before(t.ExpiresAt):
		return ErrTokenExpired
	case t.Kind == TokenJoin && !t.UsedAt.IsZero():
		return ErrTokenUsed
	}
	return nil
}

// AuditEvent is one entry of the audit log.
type AuditEvent struct {
	ID     int64           `json:"id"`
	At     time.Time       `json:"at"`
	Actor  string          `json:"actor"`
	Action string          `json:"action"`
	Detail json.RawMessage `json:"detail"` // a JSON value; "{}" when empty
}

// AuditFilter selects audit events; zero fields match everything.
type AuditFilter struct {
	Actor, Action string
	BeforeID      int64 // only events with ID < BeforeID (paging)
	Limit         int   // 0 means no limit
}

// TicketState is where a deploy ticket stands.
type TicketState string

// The ticket states: queued, then running (holding the lease), then one of
// the final ones.
const (
	TicketQueued     TicketState = "queued"
	TicketRunning    TicketState = "running"
	TicketDone       TicketState = "done"       // released its lease
	TicketCancelled  TicketState = "cancelled"  // cancelled while queued
	TicketSuperseded TicketState = "superseded" // replaced by a newer queued ticket
	TicketExpired    TicketState = "expired"    // its lease (or its wait) lapsed
)

// Ticket is one place in an environment's deploy queue: a rollout or a push
// deploy waiting for, holding or done with the environment's lease.
type Ticket struct {
	ID           int64       `json:"id"`
	App          string      `json:"app"`
	Env          string      `json:"env"`
	Holder       string      `json:"holder"` // who deploys: user@machine, "rollout 12"
	State        TicketState `json:"state"`
	Position     int         `json:"position,omitempty"` // 1 = next; 0 when not queued
	CreatedAt    time.Time   `json:"created_at"`
	Token        int64       `json:"token,omitempty"`      // fencing token once it got the lease
	AcquiredAt   time.Time   `json:"acquired_at,omitzero"` // zero until running
	ExpiresAt    time.Time   `json:"expires_at,omitzero"`  // lease expiry while running
	EndedAt      time.Time   `json:"ended_at,omitzero"`    // zero until final
	SupersededBy int64       `json:"superseded_by,omitempty"`
	// Resumable says the ticket's work can be continued by another runner
	// (a server-run rollout): when its lease lapses the queue waits for a
	// TakeOverLease instead of expiring it for the next ticket, and while
	// queued it is not expired for want of a waiter (any replica's runner
	// tries it).
	Resumable bool `json:"resumable,omitempty"`
}

// Lease is an environment's deploy lease: which ticket holds it, with which
// fencing token, until when. A zero TicketID means nobody holds it.
type Lease struct {
	App       string    `json:"app"`
	Env       string    `json:"env"`
	TicketID  int64     `json:"ticket_id"`
	Holder    string    `json:"holder"`
	Token     int64     `json:"token"`
	Since     time.Time `json:"since"`
	ExpiresAt time.Time `json:"expires_at"`
}

// QueueStatus is an environment's lease and queue.
type QueueStatus struct {
	App       string   `json:"app"`
	Env       string   `json:"env"`
	Lease     *Lease   `json:"lease,omitempty"` // nil when free
	LastToken int64    `json:"last_token"`      // the highest fencing token handed out
	Queue     []Ticket `json:"queue"`           // queued tickets, next first
}

// RolloutState is where a rollout stands.
type RolloutState string

// The rollout states: queued (its ticket waits), running, paused (a canary
// waits for promote or abort), then one of the final ones.
const (
	RolloutQueued     RolloutState = "queued"
	RolloutRunning    RolloutState = "running"
	RolloutPaused     RolloutState = "paused"
	RolloutSucceeded  RolloutState = "succeeded"
	RolloutFailed     RolloutState = "failed"
	RolloutCancelled  RolloutState = "cancelled"  // cancelled while queued
	RolloutSuperseded RolloutState = "superseded" // replaced while queued by a newer one
	RolloutAborted    RolloutState = "aborted"    // a canary an operator aborted
)

// Done reports whether s is final.
func (s RolloutState) Done() bool {
	switch s {
	case RolloutSucceeded, RolloutFailed, RolloutCancelled, RolloutSuperseded, RolloutAborted:
		return true
	}
	return false
}

// Rollout kinds.
const (
	RolloutServer = "server" // run by the control server across agents
	RolloutPush   = "push"   // a drover deploy over SSH, recorded and queued here
)

// Rollout is one release applied to an environment with a strategy, run by
// the control server across agents (Kind server) or by a push deployer that
// holds the environment's lease through the server (Kind push).
type Rollout struct {
	ID        int64        `json:"id"`
	App       string       `json:"app"`
	Env       string       `json:"env"`
	Kind      string       `json:"kind"`
	ReleaseID int64        `json:"release_id,omitempty"` // the server release (Kind server)
	Release   string       `json:"release,omitempty"`    // the engine release ID, when known
	TicketID  int64        `json:"ticket_id"`
	Strategy  string       `json:"strategy"`
	Plan      []byte       `json:"-"` // what the runner needs to run it (control's own JSON)
	State     RolloutState `json:"state"`
	Phase     string       `json:"phase,omitempty"`
	Error     string       `json:"error,omitempty"`
	Decision  string       `json:"decision,omitempty"` // an operator's promote or abort
	Runner    string       `json:"runner,omitempty"`   // which server (or deployer) runs it now
	CreatedBy string       `json:"created_by"`
	CreatedAt time.Time    `json:"created_at"`
	StartedAt time.Time    `json:"started_at,omitzero"`
	EndedAt   time.Time    `json:"ended_at,omitzero"`
	Report    []byte       `json:"-"` // the final rollout report as JSON
}

// RolloutFilter selects rollouts; zero fields match everything.
type RolloutFilter struct {
	App, Env string
	States   []RolloutState
	BeforeID int64 // only rollouts with ID < BeforeID (paging)
	Limit    int   // 0 means no limit
}

// Rollout node states.
const (
	NodeAssigned = "assigned" // asked, not picked up yet
	NodeWorking  = "working"
	NodeDone     = "done"
	NodeFailed   = "failed"
)

// RolloutNode is what a rollout asked of one node and how far the node
// got: the node's current task in that rollout. Each new request gets a
// higher Task; a report for an older task changes nothing.
type RolloutNode struct {
	RolloutID int64     `json:"rollout_id"`
	Node      string    `json:"node"`              // node name (push: host name)
	NodeID    int64     `json:"node_id,omitempty"` // 0 for push hosts
	Task      int64     `json:"task"`
	Action    string    `json:"action"`               // prepare, activate, hooks, rollback (push: the phase)
	Stage     string    `json:"stage,omitempty"`      // hooks: their stage
	RunOnce   []string  `json:"run_once,omitempty"`   // run_once hooks this task runs here
	To        string    `json:"to,omitempty"`         // rollback: the engine release ID to switch back to
	Token     int64     `json:"token"`                // the fencing token it was assigned under
	State     string    `json:"state"`                // NodeAssigned, NodeWorking, NodeDone, NodeFailed
	Step      string    `json:"step,omitempty"`       // the step it is at or failed
	Error     string    `json:"error,omitempty"`      // why it failed
	Serving   string    `json:"serving,omitempty"`    // the engine release ID it serves, as it reported
	UpgradeID int64     `json:"upgrade_id,omitempty"` // the upgrade record of its work
	UpdatedAt time.Time `json:"updated_at"`
}
