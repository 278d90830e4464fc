package control

// The contract of server-run rollouts (issue 11). Bodies are being written;
// the signatures are what internal/server and internal/cli build on.

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/store"
)

var errTODO = errors.New("control: not implemented yet")

// ErrBusy: the environment has a running or queued rollout and the caller
// asked not to wait (--no-wait).
var ErrBusy = errors.New("another rollout of this environment runs or waits")

// ConfigError is a release's drover.yml or rollout settings that the server
// refuses (bad strategy, a command load balancer the server does not
// allow): the API answers 400 with its text.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

// NewRelease is a release to record and roll out.
type NewRelease struct {
	App, Env, Spec, Commit, Note string
	By                           string // who asks (the API principal)
	// Config is drover.yml at Commit (text); empty: defaults.
	Config    []byte
	Strategy  string // replaces drover.yml's strategy type
	NoWait    bool
	Supersede bool
	Hotfix    bool
	Skip      []string
}

// CreateRelease records the release and queues its rollout. With NoWait it
// fails with ErrBusy (recording nothing) when the environment is busy.
func (c *Control) CreateRelease(ctx context.Context, req NewRelease) (store.Release, *api.Rollout, error) {
	return store.Release{}, nil, errTODO
}

// Rollouts lists app's rollouts (env "" for every environment), newest
// first, queued ones with their position, each with its nodes' progress.
func (c *Control) Rollouts(ctx context.Context, app, env string, limit int) ([]api.Rollout, error) {
	return nil, errTODO
}

// Rollout returns one rollout with its nodes' progress.
func (c *Control) Rollout(ctx context.Context, id int64) (*api.Rollout, error) {
	return nil, errTODO
}

// CancelRollout cancels a queued rollout (ErrNotQueued when it runs or ended).
func (c *Control) CancelRollout(ctx context.Context, id int64, by string) (*api.Rollout, error) {
	return nil, errTODO
}

// Decide promotes or aborts (decision "promote" or "abort") rollout id, a
// canary: when paused, at once; when still before its pause, the decision
// waits for it.
func (c *Control) Decide(ctx context.Context, id int64, decision, by string) (*api.Rollout, error) {
	return nil, errTODO
}

// DecideEnv decides app/env's running canary rollout.
func (c *Control) DecideEnv(ctx context.Context, app, env, decision, by string) (*api.Rollout, error) {
	return nil, errTODO
}

// RunnerOptions configure RunRollouts.
type RunnerOptions struct {
	// Name says which server runs a rollout (shown in status); default
	// hostname:pid.
	Name string
	// NodeTimeout: a node that does not pick up its task, or stops
	// reporting on it, for this long fails that task (counted against
	// max_fail). Default 2m; agents report at least every 10s while they
	// work.
	NodeTimeout time.Duration
	// AllowCommands lets rollouts run shell commands on the server: a
	// command load balancer and a canary check command. Off by default:
	// such a rollout is refused at CreateRelease.
	AllowCommands bool
	// Poll is how often a runner re-reads its nodes' progress and the
	// queue (default 250ms).
	Poll   time.Duration
	Logger *slog.Logger
}

// RunRollouts runs this server's share of rollouts until ctx ends: it
// starts queued rollouts in FIFO order when their environment's lease is
// free, and takes over a running one whose runner's lease lapsed (another
// replica crashed, or this server restarted), continuing from the recorded
// per-node state.
func (c *Control) RunRollouts(ctx context.Context, opts RunnerOptions) error {
	return errTODO
}

// Desired is the desired state of a node's registrations (one per app/env):
// inside a running rollout the task it asks of the node, else the
// environment's last completed release.
func (c *Control) Desired(ctx context.Context, nodes []store.Node) (*api.Desired, error) {
	return nil, errTODO
}

// Invalidate drops what Desired cached of app/env (app "": everything);
// the server calls it on every store change.
func (c *Control) Invalidate(app, env string) {}

// StartUpgrade records that node n starts the work req names (a release,
// and inside a rollout its task).
func (c *Control) StartUpgrade(ctx context.Context, n store.Node, req api.StartUpgrade) (store.Upgrade, store.Release, error) {
	return store.Upgrade{}, store.Release{}, errTODO
}

// Report records node n's progress on its upgrade u and on the rollout task
// the upgrade does.
func (c *Control) Report(ctx context.Context, n store.Node, u store.Upgrade, req api.Report) error {
	return errTODO
}
