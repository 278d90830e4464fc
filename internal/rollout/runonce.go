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

// SkippedHook is a hook the operator chose not to run: a run_once hook
// named by --skip, or one marked hotfix: skip in a --hotfix rollout.
type SkippedHook struct {
	Hook   string `json:"hook"`
	Stage  string `json:"stage"`
	Role   string `json:"role,omitempty"`
	Reason string `json:"reason"` // ReasonSkip or ReasonHotfix
}

// Why a rollout leaves out a hook, or its cleanup.
const (
	ReasonSkip   = "--skip"   // a run_once hook named by --skip
	ReasonHotfix = "--hotfix" // a hook marked hotfix: skip, and cleanup, in a hotfix rollout
)

// skipReason says why the rollout of p leaves hook h out (ReasonSkip,
// ReasonHotfix), or "" when it runs.
func (p *Plan) skipReason(h *config.Hook) string {
	switch {
	case h.RunOnce && slices.Contains(p.Skip, h.Name):
		return ReasonSkip
	case p.Hotfix && h.SkipsOnHotfix():
		return ReasonHotfix
	}
	return ""
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
			if !h.RunOnce || plan.skipReason(h) != "" {
				continue
			}
			if !slices.ContainsFunc(hosts, func(x *config.Host) bool { return x.HasRole(h.Role) }) {
				return &NoRunOnceHostError{Hook: h.Name, Role: h.Role, Hosts: names}
			}
		}
	}
	return nil
}

// skippedHooks lists the hooks of the rollout that p leaves out (--skip,
// --hotfix), in the order they would have run.
func (p *Plan) skippedHooks() []SkippedHook {
	var out []SkippedHook
	for _, stage := range p.stages() {
		for _, h := range p.App.HooksFor(stage) {
			if why := p.skipReason(h); why != "" {
				out = append(out, SkippedHook{Hook: h.Name, Stage: stage, Role: h.Role, Reason: why})
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
