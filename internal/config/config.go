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
	// Server is the URL of the drover control server whose deploy queue
	// push deploys of this app share (DROVER_SERVER overrides it); empty:
	// push deploys take only the hosts' own locks.
	Server string `yaml:"server" json:"server,omitempty"`

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
	// Socket makes drover hold the listening socket of each port and pass
	// it to the process (systemd's LISTEN_FDS protocol), so a restart
	// starts the new process before stopping the old and refuses nothing.
	Socket bool   `yaml:"socket" json:"socket,omitempty"`
	Bind   string `yaml:"bind" json:"bind,omitempty"` // address the held sockets listen on (default: every address)
	// ReusePort says the app binds its port with SO_REUSEPORT, so drover
	// starts the new process before stopping the old one.
	ReusePort bool `yaml:"reuse_port" json:"reuse_port,omitempty"`
}

// Health says how to tell that a service is up: an HTTP URL answering 2xx,
// or a command exiting 0, retried until Timeout.
type Health struct {
	HTTP     string   `yaml:"http" json:"http,omitempty"`
	Command  string   `yaml:"command" json:"command,omitempty"`
	Timeout  Duration `yaml:"timeout" json:"timeout,omitempty"`
	Interval Duration `yaml:"interval" json:"interval,omitempty"`
	// MinHealthyTime is how long a process must stay up once healthy, and
	// pass once more at its end, before drover counts it (and, with socket
	// or reuse_port, stops the old one).
	MinHealthyTime Duration `yaml:"min_healthy_time" json:"min_healthy_time,omitempty"`
}

// Environment is a named target of the app: hosts with roles, a branch and
// a strategy.
type Environment struct {
	Name     string   `yaml:"-" json:"name"`
	Branch   string   `yaml:"branch" json:"branch"`
	Strategy Strategy `yaml:"strategy" json:"strategy"`
	// LoadBalancer, when set, is what a rolling rollout drains hosts from
	// and enables them in again; nil: no load balancer steps.
	LoadBalancer *LoadBalancer `yaml:"load_balancer" json:"load_balancer,omitempty"`
	Hosts        []*Host       `yaml:"hosts" json:"hosts"`
}

// Strategy types.
const (
	StrategyAllAtOnce = "all-at-once" // prepare everywhere, barrier, run_once hooks, activate everywhere at once (default)
	StrategyTwoPhase  = "two-phase"   // the former name of all-at-once, still accepted
	StrategySerial    = "serial"      // rolling one host at a time
	StrategyRolling   = "rolling"     // prepare everywhere, then activate in batches, through the load balancer when there is one
	StrategyCanary    = "canary"      // rolling that pauses after the first batch until its gate passes
)

// Strategy says how a rollout activates the hosts of an environment.
// Parallel bounds how many hosts prepare at once; the other settings apply
// to rolling and serial.
type Strategy struct {
	Type string `yaml:"type" json:"type"`
	// Batch is how many hosts activate at once: a count or a percent of
	// the hosts, rounded up; at least 1. Default 1.
	Batch Amount `yaml:"batch" json:"batch,omitzero"`
	// MinHealthy is how many of the environment's hosts must keep serving,
	// as the load balancer sees them: a count or a percent, rounded up,
	// never less than 1. A host is not taken out when that would leave
	// fewer.
	MinHealthy Amount `yaml:"min_healthy" json:"min_healthy,omitzero"`
	// MaxFail is how many hosts may fail over the whole rollout before it
	// stops: a count or a percent, rounded down. Default 0.
	MaxFail Amount `yaml:"max_fail" json:"max_fail,omitzero"`
	// DrainTimeout bounds the wait for a drained host's connections to
	// finish; then the rollout goes on and says so. Default 30s.
	DrainTimeout Duration `yaml:"drain_timeout" json:"drain_timeout,omitempty"`
	// MinHealthyTime is how long an activated host must stay healthy
	// before the rollout re-enables it and moves on.
	MinHealthyTime Duration `yaml:"min_healthy_time" json:"min_healthy_time,omitempty"`
	// RollbackOnFailure switches every host that moved back when the
	// rollout stops on failures, through the same drain and enable steps.
	RollbackOnFailure bool `yaml:"rollback_on_failure" json:"rollback_on_failure,omitempty"`
	// Canary is the gate of the canary strategy.
	Canary *Canary `yaml:"canary" json:"canary,omitempty"`
	// MaxUnavailable is decoded so that Parse can refuse it by line: no
	// strategy honours it yet.
	MaxUnavailable int `yaml:"max_unavailable" json:"max_unavailable,omitempty"`
	Parallel       int `yaml:"parallel" json:"parallel,omitempty"`
}

// Canary is how a paused canary is promoted: its check (a command that
// exits 0, or a URL that answers 2xx) must keep passing for Wait; a failure
// rolls the canary back.
type Canary struct {
	Wait    Duration `yaml:"wait" json:"wait"`
	Command string   `yaml:"command" json:"command,omitempty"`
	URL     string   `yaml:"url" json:"url,omitempty"`
}

// DefaultDrainTimeout bounds the wait for a drained host when drain_timeout
// is not set.
const DefaultDrainTimeout = 30 * time.Second

// Load balancer types.
const (
	LBHAProxy = "haproxy" // HAProxy's runtime API: socket and backend
	LBCommand = "command" // shell commands: drain, enable and status
	LBELBv2   = "elbv2"   // an AWS ELBv2 target group: target_group_arn
)

// LoadBalancer is the balancer that fronts an environment; internal/lb/lbopen
// builds an lb.Balancer from it. Which keys apply depends on Type.
type LoadBalancer struct {
	Type string `yaml:"type" json:"type"`
	// Socket is HAProxy's admin runtime socket: an absolute unix socket
	// path or tcp:HOST:PORT.
	Socket string `yaml:"socket" json:"socket,omitempty"`
	// Backend is the HAProxy backend whose servers are the hosts.
	Backend string `yaml:"backend" json:"backend,omitempty"`
	// Drain, Enable and Status are the command type's shell commands;
	// {{member}} in Drain and Enable is the host's member name.
	Drain  string `yaml:"drain" json:"drain,omitempty"`
	Enable string `yaml:"enable" json:"enable,omitempty"`
	Status string `yaml:"status" json:"status,omitempty"`
	// TargetGroupARN is the ELBv2 target group whose targets are the hosts.
	TargetGroupARN string `yaml:"target_group_arn" json:"target_group_arn,omitempty"`
	// Region is the target group's AWS region; default the ARN's.
	Region string `yaml:"region" json:"region,omitempty"`
	// Endpoint replaces the ELBv2 API endpoint (a VPC endpoint, a test server).
	Endpoint string `yaml:"endpoint" json:"endpoint,omitempty"`
	// Timeout bounds each call to the load balancer; 0 means the type's
	// default (haproxy 5s, command 30s, elbv2 20s).
	Timeout Duration `yaml:"timeout" json:"timeout,omitempty"`
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
	// LBName is the host's member name in the load balancer when it is
	// neither its name nor its address (see MemberName).
	LBName string `yaml:"lb_name" json:"lb_name,omitempty"`
}

// MemberName is the host's name in the environment's load balancer:
// lb_name, else name, else the host's address.
func (h *Host) MemberName() string {
	switch {
	case h.LBName != "":
		return h.LBName
	case h.Name != "":
		return h.Name
	}
	return h.Host
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
