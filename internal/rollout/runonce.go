package rollout

import (
	"fmt"
	"slices"
	"strings"

	"github.com/drover/drover/internal/config"
)

// NoRunOnceHostError is a run_once hook that no host of the rollout may
// run, because none has its role: running the rollout would silently leave
// out a migration or a backup.
type NoRunOnceHostError struct {
	Hook, Role string
	Hosts      []string // the hosts the rollout reaches
}

func (e *NoRunOnceHostError) Error() string {
	return fmt.Sprintf("run_once hook %q needs a host with role %q, and none of the hosts this deploy reaches (%s) has it; nothing was changed. "+
		"Include a host with role %s (check --host and --role), or pass --skip %s to deploy without running it",
		e.Hook, e.Role, strings.Join(e.Hosts, ", "), e.Role, e.Hook)
}

// SkippedHook is a run_once hook the operator chose not to run (--skip).
type SkippedHook struct {
	Hook  string `json:"hook"`
	Stage string `json:"stage"`
	Role  string `json:"role,omitempty"`
}

// stages returns the hook stages a rollout of plan runs.
func (p *Plan) stages() []string {
	switch {
	case p.PrepareOnly:
		return []string{config.StagePrepare}
	case p.ActivateOnly:
		return []string{config.StageBeforeActivate, config.StageAfterActivate}
	}
	return []string{config.StagePrepare, config.StageBeforeActivate, config.StageAfterActivate}
}

// CheckRunOnce says whether every run_once hook the rollout of plan runs has
// a host among hosts to run on, unless plan.Skip names it. A hook without
// one is a *NoRunOnceHostError; a skipped name that is not a run_once hook
// is an error too.
func CheckRunOnce(plan *Plan, hosts []*config.Host) error {
	var runOnce []string
	for _, name := range plan.App.HookOrder {
		if h := plan.App.Hooks[name]; h != nil && h.RunOnce {
			runOnce = append(runOnce, name)
		}
	}
	for _, s := range plan.Skip {
		if !slices.Contains(runOnce, s) {
			list := "it has none"
			if len(runOnce) > 0 {
				list = "it has " + strings.Join(runOnce, ", ")
			}
			return fmt.Errorf("--skip %s: %s has no run_once hook of that name (%s); --skip leaves out run_once hooks only", s, plan.App.Path, list)
		}
	}
	names := make([]string, len(hosts))
	for i, h := range hosts {
		names[i] = h.Name
	}
	for _, stage := range plan.stages() {
		for _, h := range plan.App.HooksFor(stage) {
			if !h.RunOnce || slices.Contains(plan.Skip, h.Name) {
				continue
			}
			if !slices.ContainsFunc(hosts, func(x *config.Host) bool { return x.HasRole(h.Role) }) {
				return &NoRunOnceHostError{Hook: h.Name, Role: h.Role, Hosts: names}
			}
		}
	}
	return nil
}

// skippedHooks lists the run_once hooks of the rollout that plan.Skip
// leaves out, in the order they would have run.
func (p *Plan) skippedHooks() []SkippedHook {
	var out []SkippedHook
	for _, stage := range p.stages() {
		for _, h := range p.App.HooksFor(stage) {
			if h.RunOnce && slices.Contains(p.Skip, h.Name) {
				out = append(out, SkippedHook{Hook: h.Name, Stage: stage, Role: h.Role})
			}
		}
	}
	return out
}

func hostsOf(targets []Target) []*config.Host {
	hosts := make([]*config.Host, len(targets))
	for i, t := range targets {
		hosts[i] = t.Host()
	}
	return hosts
}
