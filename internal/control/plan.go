package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lb/lbopen"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/store"
)

// planDoc is a server rollout's plan as its row stores it (store.Rollout's
// Plan): what CreateRelease took from the drover.yml the CLI sent, so the
// runner, on any replica and after a takeover, runs the same rollout.
type planDoc struct {
	// App is the release's drover.yml reduced to what the rollout needs:
	// the app's name, its hooks, keep_releases and the one environment,
	// with its strategy (after --strategy) and load balancer; no hosts
	// (the environment's agents are its hosts).
	App *config.File `json:"app"`
	Env string       `json:"env"`
	// NoConfig says the release came without drover.yml: the default
	// strategy, no load balancer, and each stage's run_once hooks run on
	// one node through api.RunOnceAll.
	NoConfig bool `json:"no_config,omitempty"`
	// Hotfix is read by Desired too (key "hotfix"): agents skip the hooks
	// marked hotfix: skip.
	Hotfix bool     `json:"hotfix,omitempty"`
	Skip   []string `json:"skip,omitempty"`
}

// configName names the drover.yml of a release in error messages.
func configName(commit string) string {
	if commit == "" {
		return config.DefaultFile
	}
	return config.DefaultFile + "@" + commit[:min(12, len(commit))]
}

// newPlanDoc builds the plan of req's rollout from its drover.yml (or the
// defaults without one). Whatever the server refuses is a *ConfigError.
func newPlanDoc(req NewRelease, allowCommands bool) (*planDoc, error) {
	d := &planDoc{Env: req.Env, Hotfix: req.Hotfix, Skip: req.Skip}
	var env *config.Environment
	if len(req.Config) == 0 {
		if len(req.Skip) > 0 {
			return nil, &ConfigError{Msg: fmt.Sprintf("--skip %s: the release came without drover.yml, so the server does not know its run_once hooks; send drover.yml (drover release create reads it at the commit) or leave out --skip", strings.Join(req.Skip, ", "))}
		}
		env = &config.Environment{Name: req.Env, Branch: req.Env, Strategy: config.Strategy{Type: config.StrategyAllAtOnce}}
		d.App = &config.File{App: req.App, Environments: map[string]*config.Environment{req.Env: env}}
		d.NoConfig = true
	} else {
		name := configName(req.Commit)
		f, err := config.ParsePull(name, req.Config)
		if err != nil {
			return nil, &ConfigError{Msg: err.Error()}
		}
		if f.App != req.App {
			return nil, &ConfigError{Msg: fmt.Sprintf("%s: app is %q, not %q: this drover.yml belongs to another app", name, f.App, req.App)}
		}
		env = f.Environments[req.Env]
		if env == nil {
			return nil, &ConfigError{Msg: fmt.Sprintf("%s has no environment %q (it has: %s); add it under environments", name, req.Env, strings.Join(f.EnvironmentNames(), ", "))}
		}
		// The agents read services, shared paths and the other
		// environments from the commit themselves.
		f.Services, f.Shared = nil, config.Shared{}
		f.Environments = map[string]*config.Environment{req.Env: env}
		env.Hosts = nil
		d.App = f
	}
	if err := overrideStrategy(&env.Strategy, req.Strategy); err != nil {
		return nil, err
	}
	if err := d.checkCommands(allowCommands); err != nil {
		return nil, err
	}
	if len(req.Skip) > 0 {
		err := rollout.CheckRunOnce(&rollout.Plan{App: d.App, Env: env, Skip: req.Skip}, nil)
		var none *rollout.NoRunOnceHostError
		if err != nil && !errors.As(err, &none) {
			return nil, &ConfigError{Msg: err.Error()}
		}
	}
	return d, nil
}

// overrideStrategy replaces s's type with name (--strategy), as drover
// deploy --strategy does: the environment's other settings still hold.
func overrideStrategy(s *config.Strategy, name string) error {
	switch name {
	case "":
	case config.StrategyAllAtOnce, config.StrategyTwoPhase:
		s.Type = config.StrategyAllAtOnce
	case config.StrategySerial, config.StrategyRolling, config.StrategyCanary:
		s.Type = name
	default:
		return &ConfigError{Msg: fmt.Sprintf("unknown strategy %q; use all-at-once (or two-phase), rolling, serial or canary", name)}
	}
	return nil
}

// checkCommands refuses a plan that would run shell commands on the server
// (a command load balancer, a canary check command) unless allowed.
func (d *planDoc) checkCommands(allow bool) error {
	if allow {
		return nil
	}
	env := d.App.Environments[d.Env]
	var what []string
	if lb := env.LoadBalancer; lb != nil && lb.Type == config.LBCommand {
		what = append(what, "load_balancer type command")
	}
	if c := env.Strategy.Canary; env.Strategy.Type == config.StrategyCanary && c != nil && c.Command != "" {
		what = append(what, "strategy.canary.command")
	}
	if len(what) == 0 {
		return nil
	}
	return &ConfigError{Msg: fmt.Sprintf("environment %s of %s uses %s, which would run shell commands on the control server; the server refuses them unless started with --allow-commands (use a haproxy or elbv2 load balancer and a canary url instead)",
		d.Env, configName(""), strings.Join(what, " and "))}
}

func (d *planDoc) marshal() ([]byte, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("control: rollout plan: %w", err)
	}
	return b, nil
}

func decodePlan(b []byte) (*planDoc, error) {
	var d planDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("the rollout's stored plan cannot be read: %w", err)
	}
	if d.App == nil || d.App.Environments[d.Env] == nil {
		return nil, fmt.Errorf("the rollout's stored plan has no environment %q", d.Env)
	}
	return &d, nil
}

// The run_once hooks a rollout without drover.yml asks for, one per stage:
// the strategy code picks one node for each (the first in name order, since
// every node has the empty role) and the agent target sends them as
// api.RunOnceAll.
var runOnceAllHooks = []*config.Hook{
	{Name: "run_once:" + config.StagePrepare, When: config.StagePrepare, RunOnce: true},
	{Name: "run_once:" + config.StageBeforeActivate, When: config.StageBeforeActivate, RunOnce: true},
	{Name: "run_once:" + config.StageAfterActivate, When: config.StageAfterActivate, RunOnce: true},
}

// runOnceNames is what a task sends the agent for the run_once hooks hooks
// of the strategy code.
func (d *planDoc) runOnceNames(hooks []string) []string {
	if len(hooks) == 0 {
		return nil
	}
	if d.NoConfig {
		return []string{api.RunOnceAll}
	}
	return slices.Clone(hooks)
}

// engineID is the engine's release ID of rel, the one every agent computes
// (release.NewID of its creation time and commit); "" until the commit is
// known.
func engineID(rel store.Release) string {
	if rel.Commit == "" {
		return ""
	}
	return release.NewID(rel.CreatedAt, rel.Commit)
}

// rolloutPlan is the rollout.Plan of d for release rel over hosts, with its
// load balancer and canary gate. allowCommands is the runner's
// --allow-commands: a plan recorded by a replica that allowed commands does
// not run them here unless this one does too.
func (d *planDoc) rolloutPlan(ctx context.Context, rel store.Release, by string, hosts []*config.Host, allowCommands bool) (*rollout.Plan, error) {
	if err := d.checkCommands(allowCommands); err != nil {
		return nil, err
	}
	app := *d.App
	env := *app.Environments[d.Env]
	env.Hosts = hosts
	app.Environments = map[string]*config.Environment{d.Env: &env}
	if d.NoConfig {
		app.Hooks, app.HookOrder = map[string]*config.Hook{}, nil
		for _, h := range runOnceAllHooks {
			app.Hooks[h.Name], app.HookOrder = h, append(app.HookOrder, h.Name)
		}
	}
	b, err := lbopen.Open(ctx, env.LoadBalancer)
	if err != nil {
		return nil, fmt.Errorf("load balancer of %s: %w", d.Env, err)
	}
	p := &rollout.Plan{
		App: &app, Env: &env, ID: engineID(rel), Commit: rel.Commit, Spec: rel.Spec, By: by,
		Strategy: env.Strategy, Balancer: b, Fleet: len(hosts), Parallel: env.Strategy.Parallel,
		Hotfix: d.Hotfix, Skip: d.Skip,
	}
	if c := env.Strategy.Canary; env.Strategy.Type == config.StrategyCanary && c != nil && (c.Command != "" || c.URL != "") {
		p.Gate = rollout.NewCheckGate(c, nil)
	}
	return p, nil
}
