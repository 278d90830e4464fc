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
	// expired so it cannot block the queue. A ticket that already holds the
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
