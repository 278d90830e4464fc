package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/source"
)

// upgrade does what want asks of app: outside a rollout it moves app to the
// desired release (an app already at it does nothing); inside one it does
// the rollout's task, always reporting on it. It returns whether work ran.
func (a *Agent) upgrade(ctx context.Context, app *config.AgentApp, want api.DesiredApp) (bool, error) {
	rel := want.Release
	layout := release.Layout{Root: app.DeployTo}
	mirror := &source.Mirror{Dir: layout.Repo(), URL: app.Repo}
	commit := rel.Commit
	if commit == "" {
		// Nobody resolved the spec yet: resolve it here and let the
		// server keep the first answer, so every node uses one commit.
		spec, err := source.ParseSpec(rel.Spec)
		if err != nil {
			return false, err
		}
		if err := mirror.Fetch(ctx); err != nil {
			return false, err
		}
		mine, err := mirror.Resolve(ctx, spec)
		if err != nil {
			return false, err
		}
		if commit, err = a.client.Resolve(ctx, rel.ID, mine); err != nil {
			return false, fmt.Errorf("record resolved commit: %w", err)
		}
	}
	id := release.NewID(rel.CreatedAt, commit)
	if active, _ := layout.ActiveID(); active == id && want.Rollout == 0 {
		return false, nil
	}
	up, err := a.client.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: rel.ID, App: app.App, Env: app.Env, Rollout: want.Rollout, Task: want.Task})
	if err != nil {
		return false, fmt.Errorf("record upgrade: %w", err)
	}
	rep := &reporter{agent: a, client: a.client, id: up.ID}
	// The work goes on when ctx ends (see apply); retrying the final report
	// does not.
	work := context.WithoutCancel(ctx)
	stop := rep.heartbeat(work, a.heartbeat())
	err = a.run(work, app, rel, commit, id, want, rep)
	stop()
	rep.end(err)
	// What this node serves now, as the layout says: also after an
	// activation that failed and switched back.
	serving, serr := layout.ActiveID()
	if serr != nil {
		a.log().Warn("cannot tell which release this node serves", "app", app.App, "env", app.Env, "err", serr)
	}
	rep.serve(serving)
	if want.Rollout != 0 {
		o := taskOutcome{Rollout: want.Rollout, Task: want.Task, ReleaseID: rel.ID, Action: want.Action, OK: err == nil, Serving: serving, Ended: time.Now().UTC()}
		if err != nil {
			o.Error = rep.errText()
		}
		if rerr := a.recordFinished(app.App, app.Env, o); rerr != nil {
			a.log().Error("the task is done but could not be recorded: after a restart it would run again", "app", app.App, "env", app.Env, "rollout", want.Rollout, "task", want.Task, "err", rerr)
		}
		a.markReported(want)
	}
	a.deliver(ctx, app.App+"/"+app.Env, rep)
	_ = a.hello(ctx)
	return true, err
}

// replay reports again a rollout task this node finished (after a restart,
// or when the server asks again): a new upgrade record with the recorded
// outcome, and nothing run.
func (a *Agent) replay(ctx context.Context, app *config.AgentApp, want api.DesiredApp, o *taskOutcome) error {
	up, err := a.client.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: want.Release.ID, App: app.App, Env: app.Env, Rollout: want.Rollout, Task: want.Task})
	if err != nil {
		return fmt.Errorf("report finished task %d of rollout %d again: %w", want.Task, want.Rollout, err)
	}
	a.log().Info("rollout task already done here: reporting its outcome again, running nothing", "app", app.App, "env", app.Env, "rollout", want.Rollout, "task", want.Task, "ok", o.OK, "serving", o.Serving)
	rep := &reporter{agent: a, client: a.client, id: up.ID}
	rep.endWith(o.OK, o.Error)
	rep.serve(o.Serving)
	a.markReported(want)
	a.deliver(ctx, app.App+"/"+app.Env, rep)
	return nil
}

func (a *Agent) heartbeat() time.Duration {
	if a.Heartbeat > 0 {
		return a.Heartbeat
	}
	return 5 * time.Second
}

// run does the work of want for release id of app, reporting its steps.
func (a *Agent) run(ctx context.Context, app *config.AgentApp, rel *api.Release, commit, id string, want api.DesiredApp, rep *reporter) error {
	rep.status(ctx, api.StatusPreparing)
	cfg, err := a.config(ctx, app, rel, commit)
	if err != nil {
		return err
	}
	eng := release.New(cfg, app.Env, a.Config.Node, app.Roles)
	eng.Emit = rep.event
	eng.Logger = a.log()
	prepare := func(once []string) error {
		_, err := eng.Prepare(ctx, release.PrepareOptions{ID: id, Commit: commit, Spec: rel.Spec, By: "agent " + a.Config.Node, RunOnce: once, Hotfix: want.Hotfix})
		return err
	}
	activate := func() error {
		rep.status(ctx, api.StatusActivating)
		if err := eng.Activate(ctx, id); err != nil {
			return err
		}
		// A hotfix keeps every release (as push mode does).
		if !want.Hotfix {
			if _, err := eng.Cleanup(ctx, cfg.KeepReleases); err != nil {
				a.log().Warn("cleanup", "err", err)
			}
		}
		return nil
	}
	// Outside a rollout the node converges to the environment's current
	// release and runs no run_once hook: they ran, on one node, in the
	// rollout that made it current.
	action := want.Action
	if want.Rollout == 0 && action != api.ActionPrepare {
		action = api.ActionActivate
	}
	switch action {
	case api.ActionPrepare:
		return prepare(runOnce(cfg, app, config.StagePrepare, want.RunOnce))
	case api.ActionActivate, "":
		if err := prepare(nil); err != nil {
			return err
		}
		return activate()
	case api.ActionHooks:
		if err := prepare(nil); err != nil {
			return err
		}
		if want.Stage != config.StagePrepare {
			rep.status(ctx, api.StatusActivating)
		}
		return eng.RunHooks(ctx, id, want.Stage, runOnce(cfg, app, want.Stage, want.RunOnce))
	case api.ActionRollback:
		rep.status(ctx, api.StatusActivating)
		_, err := eng.Rollback(ctx, want.To)
		return err
	default:
		return fmt.Errorf("rollout %d task %d: unknown action %q (this agent knows %s, %s, %s, %s); upgrade the agent", want.Rollout, want.Task, want.Action,
			api.ActionPrepare, api.ActionActivate, api.ActionHooks, api.ActionRollback)
	}
}

// config checks commit against the release's spec and reads the app's
// drover.yml at it, placed where this node keeps the app.
func (a *Agent) config(ctx context.Context, app *config.AgentApp, rel *api.Release, commit string) (*config.File, error) {
	layout := release.Layout{Root: app.DeployTo}
	mirror := &source.Mirror{Dir: layout.Repo(), URL: app.Repo}
	if err := verifyCommit(ctx, mirror, rel.Spec, commit); err != nil {
		return nil, err
	}
	if err := mirror.Ensure(ctx, commit); err != nil {
		return nil, fmt.Errorf("fetch %s: %w", commit, err)
	}
	data, err := mirror.ReadFile(ctx, commit, config.DefaultFile)
	if err != nil {
		return nil, fmt.Errorf("%w (%s at %s)", ErrNoConfig, app.Repo, commit)
	}
	// As the server reads it: an environment of agents may list no hosts.
	cfg, err := config.ParsePull(filepath.Join(app.Repo, config.DefaultFile)+"@"+commit[:min(12, len(commit))], data)
	if err != nil {
		return nil, err
	}
	// The agent's configuration says where this node keeps the app.
	cfg.DeployTo, cfg.Repo = app.DeployTo, app.Repo
	return cfg, nil
}

// runOnce is the list of run_once hooks of stage a task asks this node to
// run: the names the server chose, or, for RunOnceAll, every run_once hook
// of the stage whose role this node has.
func runOnce(cfg *config.File, app *config.AgentApp, stage string, asked []string) []string {
	if !contains(asked, api.RunOnceAll) {
		return asked
	}
	var once []string
	for _, h := range cfg.HooksFor(stage) {
		if h.RunOnce && (h.Role == "" || contains(app.Roles, h.Role)) {
			once = append(once, h.Name)
		}
	}
	return once
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

// deliver sends rep's final report. The daemon does it in the background,
// so a server that is away or refuses the report never stops the poll
// loop; a newer upgrade of the same app replaces a report still pending.
// Once waits for it, at most ReportWait.
func (a *Agent) deliver(ctx context.Context, key string, rep *reporter) {
	if !a.background {
		wait := a.ReportWait
		if wait == 0 {
			wait = 30 * time.Second
		}
		rep.finish(ctx, time.Now().Add(wait))
		return
	}
	rctx, cancel := context.WithCancel(ctx)
	p := &pendingReport{cancel: cancel}
	a.mu.Lock()
	if old := a.pending[key]; old != nil {
		old.cancel()
	}
	if a.pending == nil {
		a.pending = map[string]*pendingReport{}
	}
	a.pending[key] = p
	a.mu.Unlock()
	a.reports.Add(1)
	go func() {
		defer a.reports.Done()
		defer cancel()
		rep.finish(rctx, time.Time{})
		a.mu.Lock()
		if a.pending[key] == p {
			delete(a.pending, key)
		}
		a.mu.Unlock()
	}()
}

// pendingReport is a final report the daemon is still sending.
type pendingReport struct{ cancel context.CancelFunc }
