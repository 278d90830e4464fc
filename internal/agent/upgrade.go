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

// upgrade moves app to the desired release. It returns whether an upgrade
// ran; an app already at the release does nothing.
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
	if active, _ := layout.ActiveID(); active == id {
		return false, nil
	}
	up, err := a.client.StartUpgrade(ctx, api.StartUpgrade{ReleaseID: rel.ID, App: app.App, Env: app.Env})
	if err != nil {
		return false, fmt.Errorf("record upgrade: %w", err)
	}
	rep := &reporter{agent: a, client: a.client, id: up.ID}
	// The work goes on when ctx ends (see apply); retrying the final report
	// does not.
	err = a.run(context.WithoutCancel(ctx), app, rel, commit, id, want, rep)
	rep.end(err)
	a.deliver(ctx, app.App+"/"+app.Env, rep)
	_ = a.hello(ctx)
	return true, err
}

func (a *Agent) run(ctx context.Context, app *config.AgentApp, rel *api.Release, commit, id string, want api.DesiredApp, rep *reporter) error {
	layout := release.Layout{Root: app.DeployTo}
	mirror := &source.Mirror{Dir: layout.Repo(), URL: app.Repo}
	rep.status(ctx, api.StatusPreparing)
	if err := verifyCommit(ctx, mirror, rel.Spec, commit); err != nil {
		return err
	}
	if err := mirror.Ensure(ctx, commit); err != nil {
		return fmt.Errorf("fetch %s: %w", commit, err)
	}
	data, err := mirror.ReadFile(ctx, commit, config.DefaultFile)
	if err != nil {
		return fmt.Errorf("%w (%s at %s)", ErrNoConfig, app.Repo, commit)
	}
	cfg, err := config.Parse(filepath.Join(app.Repo, config.DefaultFile)+"@"+commit[:min(12, len(commit))], data)
	if err != nil {
		return err
	}
	// The agent's configuration says where this node keeps the app.
	cfg.DeployTo, cfg.Repo = app.DeployTo, app.Repo
	eng := release.New(cfg, app.Env, a.Config.Node, app.Roles)
	eng.Emit = rep.event
	eng.Logger = a.log()
	// Without a coordinated rollout, each node runs the run_once hooks
	// whose role it has (seed 000's behaviour); coordinated rollouts pick
	// one node.
	var once []string
	for _, stage := range []string{config.StagePrepare, config.StageBeforeActivate} {
		for _, h := range cfg.HooksFor(stage) {
			if h.RunOnce && (h.Role == "" || contains(app.Roles, h.Role)) {
				once = append(once, h.Name)
			}
		}
	}
	if _, err := eng.Prepare(ctx, release.PrepareOptions{ID: id, Commit: commit, Spec: rel.Spec, By: "agent " + a.Config.Node, RunOnce: once}); err != nil {
		return err
	}
	if want.Action == api.ActionPrepare {
		return nil
	}
	rep.status(ctx, api.StatusActivating)
	if err := eng.RunHooks(ctx, id, config.StageBeforeActivate, once); err != nil {
		return err
	}
	if err := eng.Activate(ctx, id); err != nil {
		return err
	}
	if _, err := eng.Cleanup(ctx, cfg.KeepReleases); err != nil {
		a.log().Warn("cleanup", "err", err)
	}
	return nil
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
