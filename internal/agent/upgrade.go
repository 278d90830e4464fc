package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
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
	rep.finish(ctx, err)
	_ = a.hello(ctx)
	return true, err
}

func (a *Agent) run(ctx context.Context, app *config.AgentApp, rel *api.Release, commit, id string, want api.DesiredApp, rep *reporter) error {
	layout := release.Layout{Root: app.DeployTo}
	mirror := &source.Mirror{Dir: layout.Repo(), URL: app.Repo}
	rep.status(ctx, api.StatusPreparing)
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

// reporter sends an upgrade's steps to the server as they happen. A send
// that fails is not fatal: the next one carries every step again, and the
// final report is retried until the server takes it.
type reporter struct {
	agent  *Agent
	client *api.Client // the connection the upgrade was recorded on
	id     int64

	mu     sync.Mutex
	state  string
	step   string
	steps  []api.Step
	sendMu sync.Mutex
}

const maxStepLog = 64 << 10

func (r *reporter) event(ev release.Event) {
	r.mu.Lock()
	switch ev.Kind {
	case release.EventStepStart:
		r.step = ev.Step
		r.steps = append(r.steps, api.Step{Name: ev.Step, Status: "running", Started: ev.Time})
	case release.EventStepEnd:
		if s := r.find(ev.Step); s != nil {
			s.Status, s.Elapsed = "ok", ev.Elapsed
			if ev.Error != "" {
				s.Status = "failed"
				s.Log += "error: " + ev.Error + "\n"
			}
		}
	case release.EventOutput, release.EventInfo:
		if s := r.find(ev.Step); s != nil && len(s.Log) < maxStepLog {
			s.Log += ev.Line + "\n"
		}
	}
	end := ev.Kind == release.EventStepEnd || ev.Kind == release.EventStepStart
	r.mu.Unlock()
	if end {
		go r.send(context.Background(), "", 5*time.Second)
	}
}

func (r *reporter) find(step string) *api.Step {
	for i := len(r.steps) - 1; i >= 0; i-- {
		if r.steps[i].Name == step {
			return &r.steps[i]
		}
	}
	return nil
}

func (r *reporter) status(ctx context.Context, s string) {
	r.mu.Lock()
	r.state = s
	r.mu.Unlock()
	r.send(ctx, "", 5*time.Second)
}

func (r *reporter) snapshot(errText string) api.Report {
	r.mu.Lock()
	defer r.mu.Unlock()
	return api.Report{Status: r.state, Step: r.step, Error: errText, Steps: append([]api.Step(nil), r.steps...)}
}

func (r *reporter) send(ctx context.Context, errText string, timeout time.Duration) error {
	r.sendMu.Lock()
	defer r.sendMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return r.client.Report(ctx, r.id, r.snapshot(errText))
}

// finish sends the final status, retrying while the server is away.
func (r *reporter) finish(ctx context.Context, err error) {
	r.mu.Lock()
	r.state = api.StatusSucceeded
	errText := ""
	if err != nil {
		r.state, errText = api.StatusFailed, err.Error()
		errText = strings.TrimSpace(errText)
	}
	r.mu.Unlock()
	for attempt := 1; ; attempt++ {
		// Each attempt gets its own time even when the agent is stopping,
		// so a finished upgrade is reported once more before exiting.
		if e := r.send(context.WithoutCancel(ctx), errText, 10*time.Second); e == nil || ctx.Err() != nil {
			return
		} else if attempt == 1 {
			r.agent.log().Warn("cannot report the upgrade; retrying until the server is back", "upgrade", r.id, "err", e)
		}
		r.agent.sleep(ctx, attempt)
	}
}
