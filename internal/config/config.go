// Package config loads and validates drover.yml, the file that describes one
// app: its repository, where it lives on a host, its hooks, services and
// environments. Decoding is strict: an unknown key, a wrong type or a missing
// required field is an *Error naming the file, line and key.
package config

import (
	"time"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
)

// DefaultFile is the name drover looks for in the directory you stand in.
const DefaultFile = "drover.yml"

// File is a decoded, validated drover.yml.
type File struct {
	// Path is where the file was read from; it is not part of the YAML.
	Path string `yaml:"-" json:"path,omitempty"`

	App          string                  `yaml:"app" json:"app"`
	Repo         string                  `yaml:"repo" json:"repo"`
	DeployTo     string                  `yaml:"deploy_to" json:"deploy_to"`
	KeepReleases int                     `yaml:"keep_releases" json:"keep_releases"`
	Shared       Shared                  `yaml:"shared" json:"shared"`
	Hooks        map[string]*Hook        `yaml:"hooks" json:"hooks,omitempty"`
	Services     map[string]*Service     `yaml:"services" json:"services,omitempty"`
	Environments map[string]*Environment `yaml:"environments" json:"environments,omitempty"`

	// HookOrder lists hook names in the order the file declares them;
	// hooks of one stage run in this order.
	HookOrder []string `yaml:"-" json:"hook_order,omitempty"`
}

// Shared lists the paths that survive releases. Each is created under
// shared/ when missing and linked into every release.
type Shared struct {
	Dirs  []string `yaml:"dirs" json:"dirs,omitempty"`
	Files []string `yaml:"files" json:"files,omitempty"`
}

// Hook stages: when a hook runs during an upgrade.
const (
	StagePrepare        = "prepare"         // in the new release dir, before anything switches
	StageBeforeActivate = "before_activate" // after every host prepared, before `current` switches
	StageAfterActivate  = "after_activate"  // after the switch and the restart
)

// DefaultHookTimeout is how long a hook may run when drover.yml does not
// give it a timeout.
const DefaultHookTimeout = 30 * time.Minute

// Values of a hook's hotfix key: whether `drover deploy --hotfix` runs it.
const (
	HotfixRun  = "run"  // the hook runs in a hotfix deploy too (the default)
	HotfixSkip = "skip" // a hotfix deploy leaves the hook out
)

// Hook is a list of shell commands run in the new release directory.
// In YAML a hook is either a plain list of commands or a mapping with
// commands, when, run_once, role, timeout and hotfix.
type Hook struct {
	Name     string   `yaml:"-" json:"name"`
	When     string   `yaml:"when" json:"when"`
	RunOnce  bool     `yaml:"run_once" json:"run_once,omitempty"`
	Role     string   `yaml:"role" json:"role,omitempty"`
	Commands []string `yaml:"commands" json:"commands"`
	// Timeout bounds the whole hook, every command of it; when it passes,
	// the hook's process group is killed and its step fails.
	Timeout Duration `yaml:"timeout" json:"timeout,omitempty"`
	// Hotfix is HotfixSkip for a hook a code-only deploy (deploy
	// --hotfix) leaves out, like a migration or collectstatic; HotfixRun
	// or empty runs it.
	Hotfix string `yaml:"hotfix" json:"hotfix,omitempty"`
}

// SkipsOnHotfix reports whether a hotfix deploy leaves the hook out.
func (h *Hook) SkipsOnHotfix() bool { return h.Hotfix == HotfixSkip }

// TimeoutOrDefault returns the hook's timeout, or DefaultHookTimeout.
func (h *Hook) TimeoutOrDefault() time.Duration {
	if h.Timeout > 0 {
		return h.Timeout.D()
	}
	return DefaultHookTimeout
}

// UnmarshalYAML accepts a list of commands or the full mapping.
func (h *Hook) UnmarshalYAML(n ast.Node) error {
	if n.Type() == ast.SequenceType {
		return yaml.NodeToValue(n, &h.Commands, yaml.DisallowUnknownField())
	}
	if n.Type() != ast.MappingType && n.Type() != ast.MappingValueType {
		return &nodeError{node: n, msg: "a hook is a list of commands or a mapping with commands, when, run_once, role, timeout and hotfix"}
	}
	type plain Hook
	return yaml.NodeToValue(n, (*plain)(h), yaml.DisallowUnknownField())
}

// Service is one long-running process of the app, managed by drover or by
// systemd.
type Service struct {
	Name      string   `yaml:"-" json:"name"`
	Start     string   `yaml:"start" json:"start,omitempty"`
	Ports     []int    `yaml:"ports" json:"ports,omitempty"`
	Systemd   string   `yaml:"systemd" json:"systemd,omitempty"`
	Health    *Health  `yaml:"health" json:"health,omitempty"`
	StopGrace Duration `yaml:"stop_grace" json:"stop_grace,omitempty"`
}

// Health says how to tell that a service is up: an HTTP URL answering 2xx,
// or a command exiting 0, retried until Timeout.
type Health struct {
	HTTP     string   `yaml:"http" json:"http,omitempty"`
	Command  string   `yaml:"command" json:"command,omitempty"`
	Timeout  Duration `yaml:"timeout" json:"timeout,omitempty"`
	Interval Duration `yaml:"interval" json:"interval,omitempty"`
}

// Environment is a named target of the app: hosts with roles, a branch and
// a strategy.
type Environment struct {
	Name     string   `yaml:"-" json:"name"`
	Branch   string   `yaml:"branch" json:"branch"`
	Strategy Strategy `yaml:"strategy" json:"strategy"`
	// LoadBalancer is decoded so that Parse can refuse it by line: drover
	// does not drain hosts from a balancer yet.
	LoadBalancer *LoadBalancer `yaml:"load_balancer" json:"load_balancer,omitempty"`
	Hosts        []*Host       `yaml:"hosts" json:"hosts"`
}

// Strategy types.
const (
	StrategyTwoPhase = "two-phase" // prepare everywhere, then activate everywhere at once (default)
	StrategySerial   = "serial"    // prepare everywhere, then activate one host at a time
	StrategyRolling  = "rolling"   // prepare everywhere, then activate in batches
)

// Strategy says how a rollout activates the hosts of an environment.
// Batch applies to rolling (the file's or --strategy rolling's); Parallel
// bounds how many hosts prepare at once.
type Strategy struct {
	Type  string `yaml:"type" json:"type"`
	Batch int    `yaml:"batch" json:"batch,omitempty"`
	// MaxUnavailable is decoded so that Parse can refuse it by line: no
	// strategy honours it yet.
	MaxUnavailable int `yaml:"max_unavailable" json:"max_unavailable,omitempty"`
	Parallel       int `yaml:"parallel" json:"parallel,omitempty"`
}

// LoadBalancer names the balancer that fronts an environment. Not
// supported yet: a drover.yml that names one is refused.
type LoadBalancer struct {
	Type    string `yaml:"type" json:"type"`
	Socket  string `yaml:"socket" json:"socket,omitempty"`
	Backend string `yaml:"backend" json:"backend,omitempty"`
}

// Transports a host can be reached by.
const (
	TransportSSH   = "ssh"
	TransportLocal = "local"
)

// Host is one server of an environment.
type Host struct {
	Name         string   `yaml:"name" json:"name"`
	Host         string   `yaml:"host" json:"host,omitempty"`
	Port         int      `yaml:"port" json:"port,omitempty"`
	User         string   `yaml:"user" json:"user,omitempty"`
	Roles        []string `yaml:"roles" json:"roles,omitempty"`
	IdentityFile string   `yaml:"identity_file" json:"identity_file,omitempty"`
	Transport    string   `yaml:"transport" json:"transport,omitempty"`
}

// HasRole reports whether the host has role r. The empty role matches every host.
func (h *Host) HasRole(r string) bool {
	if r == "" {
		return true
	}
	for _, x := range h.Roles {
		if x == r {
			return true
		}
	}
	return false
}

// Duration is a time.Duration written in YAML as "30s", "2m" or "1h30m".
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// AtCommit returns the app as a deploy of one commit runs it. code is the
// drover.yml in that commit: hooks, services, shared paths and
// keep_releases travel with the code they deploy. f, the deployer's file,
// says where the app goes: app, repo, deploy_to and environments.
func (f *File) AtCommit(code *File) *File {
	out := *f
	out.Hooks, out.HookOrder, out.Services = code.Hooks, code.HookOrder, code.Services
	out.Shared, out.KeepReleases = code.Shared, code.KeepReleases
	return &out
}

// HooksFor returns the hooks of a stage in the order the file declares them.
func (f *File) HooksFor(stage string) []*Hook {
	var out []*Hook
	for _, name := range f.HookOrder {
		if h := f.Hooks[name]; h != nil && h.When == stage {
			out = append(out, h)
		}
	}
	return out
}

// ServiceNames returns the names of the services in a stable order.
func (f *File) ServiceNames() []string {
	return sortedKeys(f.Services)
}

// EnvironmentNames returns the names of the environments in a stable order.
func (f *File) EnvironmentNames() []string {
	return sortedKeys(f.Environments)
}
