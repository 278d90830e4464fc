package control

// Server-run rollouts (issue 11): the API the server's handlers call. A
// release created here is rolled out by a runner (runner.go, on any
// replica) with the strategy code of push mode (internal/rollout) over
// agent targets (agenttarget.go), from the plan CreateRelease stored
// (plan.go).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/source"
	"github.com/drover/drover/internal/store"
)

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
//
// The release's drover.yml (req.Config) gives the rollout its strategy
// (req.Strategy replaces the type), load balancer and run_once hooks; what
// the server refuses is a *ConfigError, and then nothing is recorded.
// With Supersede, older queued rollouts of the environment are superseded
// (never a running one).
func (c *Control) CreateRelease(ctx context.Context, req NewRelease) (store.Release, *api.Rollout, error) {
	if err := checkRelease(&req); err != nil {
		return store.Release{}, nil, err
	}
	doc, err := newPlanDoc(req, c.allowCommands.Load())
	if err != nil {
		return store.Release{}, nil, err
	}
	planJSON, err := doc.marshal()
	if err != nil {
		return store.Release{}, nil, err
	}
	if req.NoWait {
		if err := c.checkIdle(ctx, req.App, req.Env, 0); err != nil {
			return store.Release{}, nil, err
		}
	}
	holder := fmt.Sprintf("release %s of %s/%s by %s", req.Spec, req.App, req.Env, req.By)
	t, err := c.Enqueue(ctx, req.App, req.Env, holder, EnqueueOptions{Supersede: req.Supersede, Resumable: true})
	if err != nil {
		return store.Release{}, nil, err
	}
	// Undo the ticket when what follows fails, so it blocks nobody.
	undo := func() {
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = c.Cancel(bg, t.ID)
	}
	if req.NoWait {
		// Another --no-wait caller, or any other deploy, may have queued
		// between the check and the ticket: the first in line goes on.
		if err := c.checkIdle(ctx, req.App, req.Env, t.ID); err != nil {
			undo()
			return store.Release{}, nil, err
		}
	}
	rel, err := c.st.CreateRelease(ctx, store.Release{App: req.App, Env: req.Env, Spec: req.Spec, Commit: req.Commit, CreatedBy: req.By, Note: req.Note})
	if err != nil {
		undo()
		return store.Release{}, nil, fmt.Errorf("control: %w", err)
	}
	typ := doc.App.Environments[req.Env].Strategy.Type
	ro, err := c.st.CreateRollout(ctx, store.Rollout{App: req.App, Env: req.Env, Kind: store.RolloutServer, ReleaseID: rel.ID, Release: engineID(rel),
		TicketID: t.ID, Strategy: typ, Plan: planJSON, State: store.RolloutQueued, CreatedBy: req.By, CreatedAt: c.clock.Now()})
	if err != nil {
		undo()
		return rel, nil, fmt.Errorf("control: release %d was recorded but its rollout was not: %w", rel.ID, err)
	}
	if req.Supersede {
		c.settleSuperseded(ctx, req.App, req.Env, ro.ID)
	}
	c.kickRunner()
	out, err := c.Rollout(ctx, ro.ID)
	if err != nil {
		return rel, nil, err
	}
	return rel, out, nil
}

// checkRelease validates the names, the spec and the commit of req, and
// normalises them.
func checkRelease(req *NewRelease) error {
	for _, f := range []struct{ kind, v string }{{"app", req.App}, {"env", req.Env}} {
		if !config.ValidName(f.v) || strings.Contains(f.v, "..") {
			return &ConfigError{Msg: fmt.Sprintf("%s %q: use 1-63 lowercase letters, digits, '-', '_' or '.'", f.kind, f.v)}
		}
	}
	spec, err := source.ParseSpec(req.Spec)
	if err != nil {
		return &ConfigError{Msg: err.Error()}
	}
	req.Spec = spec.String()
	req.Commit = strings.ToLower(req.Commit)
	if req.Commit != "" && (len(req.Commit) < 40 || len(req.Commit) > 64 || strings.Trim(req.Commit, "0123456789abcdef") != "") {
		return &ConfigError{Msg: fmt.Sprintf("commit %q: give the full hex SHA the spec resolved to", req.Commit)}
	}
	return nil
}

// checkIdle returns ErrBusy, naming who holds or waits, when app/env has a
// deploy running, or queued ahead of ticket mine (0: none of ours yet).
func (c *Control) checkIdle(ctx context.Context, app, env string, mine int64) error {
	st, err := c.Status(ctx, app, env)
	if err != nil {
		return err
	}
	var who []string
	if st.Holder != nil && st.Expired {
		// A crashed push deployer's lapsed lease passes to the next in
		// line; a server rollout's waits for a takeover, so it is busy.
		if t, err := c.st.GetTicket(ctx, st.Holder.TicketID); err == nil && !t.Resumable {
			st.Holder = nil
		}
	}
	if st.Holder != nil && st.Holder.TicketID != mine {
		who = append(who, fmt.Sprintf("%s holds the lease (token %d) since %s", st.Holder.Holder, st.Holder.Token, st.Holder.Since.Format(time.RFC3339)))
	}
	for _, t := range st.Queue {
		if t.ID == mine {
			break // those behind it came later: it goes first
		}
		who = append(who, fmt.Sprintf("%s waits (position %d)", t.Holder, t.Position))
	}
	if len(who) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s/%s: %s; nothing was recorded (leave out --no-wait to queue behind it)", ErrBusy, app, env, strings.Join(who, "; "))
}

// settleSuperseded marks the live queued rollouts of app/env whose ticket
// a newer one superseded (newer is the superseding rollout).
func (c *Control) settleSuperseded(ctx context.Context, app, env string, newer int64) {
	queued, err := c.st.ListRollouts(ctx, store.RolloutFilter{App: app, Env: env, States: []store.RolloutState{store.RolloutQueued}, BeforeID: newer})
	if err != nil {
		return
	}
	for _, ro := range queued {
		t, err := c.st.GetTicket(ctx, ro.TicketID)
		if err != nil || t.State != store.TicketSuperseded {
			continue
		}
		ro.State, ro.EndedAt, ro.Error = store.RolloutSuperseded, c.clock.Now(), fmt.Sprintf("superseded while queued by rollout %d", newer)
		_ = c.st.UpdateRollout(ctx, ro)
	}
}

// Rollouts lists app's rollouts (env "" for every environment), newest
// first, queued ones with their position, each with its nodes' progress.
func (c *Control) Rollouts(ctx context.Context, app, env string, limit int) ([]api.Rollout, error) {
	c.reapPushes(ctx, app, env) // push deploys whose deployer went away show as ended
	rs, err := c.st.ListRollouts(ctx, store.RolloutFilter{App: app, Env: env, Limit: limit})
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	out := make([]api.Rollout, 0, len(rs))
	for _, ro := range rs {
		a, err := c.rolloutAPI(ctx, ro)
		if err != nil {
			return nil, err
		}
		out = append(out, *a)
	}
	return out, nil
}

// rolloutAPI is ro as the API shows it, with its nodes, its position while
// queued and its token while it holds the lease.
func (c *Control) rolloutAPI(ctx context.Context, ro store.Rollout) (*api.Rollout, error) {
	a := &api.Rollout{ID: ro.ID, App: ro.App, Env: ro.Env, Kind: ro.Kind, ReleaseID: ro.ReleaseID, Release: ro.Release, Strategy: ro.Strategy,
		State: string(ro.State), Phase: ro.Phase, Error: ro.Error, Runner: ro.Runner, CreatedBy: ro.CreatedBy, CreatedAt: ro.CreatedAt,
		StartedAt: ro.StartedAt, EndedAt: ro.EndedAt}
	if !ro.State.Done() && ro.TicketID != 0 {
		if t, err := c.st.GetTicket(ctx, ro.TicketID); err == nil {
			switch t.State {
			case store.TicketQueued:
				a.Position = t.Position
			case store.TicketRunning:
				a.Token = t.Token
			}
		}
	}
	nodes, err := c.st.ListRolloutNodes(ctx, ro.ID)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	for _, n := range nodes {
		a.Nodes = append(a.Nodes, api.RolloutNode{Node: n.Node, Action: n.Action, Task: n.Task, State: n.State, Step: n.Step, Error: n.Error, Serving: n.Serving, UpdatedAt: n.UpdatedAt})
	}
	return a, nil
}

// Rollout returns one rollout with its nodes' progress.
func (c *Control) Rollout(ctx context.Context, id int64) (*api.Rollout, error) {
	ro, err := c.st.GetRollout(ctx, id)
	if err == nil && ro.Kind == store.RolloutPush && !ro.State.Done() {
		c.reapPushes(ctx, ro.App, ro.Env)
		ro, err = c.st.GetRollout(ctx, id)
	}
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	return c.rolloutAPI(ctx, ro)
}

// CancelRollout cancels a queued rollout (ErrNotQueued when it runs or ended).
func (c *Control) CancelRollout(ctx context.Context, id int64, by string) (*api.Rollout, error) {
	ro, err := c.st.GetRollout(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	if ro.State != store.RolloutQueued {
		return nil, fmt.Errorf("%w: rollout %d is %s; only a queued rollout can be cancelled (abort a paused canary with drover abort --rollout %d)", ErrNotQueued, id, ro.State, id)
	}
	if err := c.Cancel(ctx, ro.TicketID); err != nil {
		if errors.Is(err, ErrNotQueued) {
			return nil, fmt.Errorf("%w: rollout %d started meanwhile; only a queued rollout can be cancelled", ErrNotQueued, id)
		}
		return nil, err
	}
	ro.State, ro.EndedAt, ro.Error = store.RolloutCancelled, c.clock.Now(), "cancelled by "+by
	if err := c.st.UpdateRollout(ctx, ro); err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	return c.rolloutAPI(ctx, ro)
}

// Decide promotes or aborts (decision "promote" or "abort") rollout id, a
// canary: when paused, at once; when still before its pause, the decision
// waits for it.
//
// The decision is recorded on the rollout (store.DecideRollout) and read by
// its runner, on whichever replica; who decided goes to the audit log.
func (c *Control) Decide(ctx context.Context, id int64, decision, by string) (*api.Rollout, error) {
	if decision != release.CanaryPromote && decision != release.CanaryAbort {
		return nil, fmt.Errorf("%w: decision %q: use promote or abort", store.ErrInvalid, decision)
	}
	ro, err := c.st.GetRollout(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	switch {
	case ro.Kind != store.RolloutServer:
		return nil, fmt.Errorf("%w: rollout %d is a push deploy; decide its canary where it runs, with drover %s %s", store.ErrInvalid, id, decision, ro.Env)
	case ro.Strategy != config.StrategyCanary:
		return nil, fmt.Errorf("%w: rollout %d is not a canary (strategy %s): there is nothing to %s; a queued rollout is cancelled with drover rollout cancel %d", store.ErrInvalid, id, ro.Strategy, decision, id)
	}
	if _, err := c.st.DecideRollout(ctx, id, decision); err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	detail, _ := json.Marshal(map[string]int64{"rollout": id})
	if _, err := c.st.AppendAudit(ctx, store.AuditEvent{Actor: by, Action: "rollout." + decision, Detail: detail}); err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	return c.Rollout(ctx, id)
}

// decidedBy finds who decided rollout id in the audit log ("an operator"
// when it cannot tell).
func (c *Control) decidedBy(ctx context.Context, id int64) string {
	for _, action := range []string{"rollout." + release.CanaryPromote, "rollout." + release.CanaryAbort} {
		evs, err := c.st.ListAudit(ctx, store.AuditFilter{Action: action, Limit: 100})
		if err != nil {
			continue
		}
		for _, e := range evs {
			var d struct{ Rollout int64 }
			if json.Unmarshal(e.Detail, &d) == nil && d.Rollout == id {
				return e.Actor
			}
		}
	}
	return "an operator"
}

// DecideEnv decides app/env's running canary rollout.
func (c *Control) DecideEnv(ctx context.Context, app, env, decision, by string) (*api.Rollout, error) {
	rs, err := c.st.ListRollouts(ctx, store.RolloutFilter{App: app, Env: env, States: []store.RolloutState{store.RolloutPaused, store.RolloutRunning}})
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	for _, ro := range rs {
		if ro.Kind == store.RolloutServer && ro.Strategy == config.StrategyCanary {
			return c.Decide(ctx, ro.ID, decision, by)
		}
	}
	return nil, fmt.Errorf("%w: %s/%s has no running canary rollout (see drover rollouts %s %s)", store.ErrNotFound, app, env, app, env)
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
	// such a rollout is refused at CreateRelease (RunRollouts with it on
	// turns Options.AllowCommands on too), and a runner without it refuses
	// to run one another replica accepted.
	AllowCommands bool
	// Poll is how often a runner re-reads its nodes' progress and the
	// queue (default 250ms).
	Poll   time.Duration
	Logger *slog.Logger
}
