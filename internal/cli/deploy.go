package cli

import (
	"cmp"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lb"
	"github.com/drover/drover/internal/lb/lbopen"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/transport"
)

// DeployOptions are the inputs of `drover deploy`, `prepare` and `activate`.
type DeployOptions struct {
	Common
	Version  string        // version spec; default branch:<env's branch>
	Strategy string        // override the environment's strategy
	Parallel int           // hosts prepared at once; 0 = all
	KeepFor  time.Duration // prepare --keep-days
	Release  string        // activate: the prepared release
	Export   string        // how to materialise a commit (archive, checkout)
	Lease    time.Duration // deploy lock lease
	Skip     []string      // run_once hooks not to run (--skip)
	// Hotfix deploys or prepares code only (--hotfix): no hook marked
	// hotfix: skip, no cleanup. Activate and resume take it from the
	// release's record instead.
	Hotfix bool
	// NoWait fails at once when the control server's deploy lock of the
	// environment is busy, instead of waiting in its queue (--no-wait).
	NoWait bool
}

// Deploy pushes a release to every host of an environment: resolve the spec
// once, lock, prepare everywhere, run_once hooks, activate.
func Deploy(ctx context.Context, o *DeployOptions) (*rollout.Report, error) {
	return deploy(ctx, o, "deploy")
}

// Prepare prepares a release on every host without activating it.
func Prepare(ctx context.Context, o *DeployOptions) (*rollout.Report, error) {
	return deploy(ctx, o, "prepare")
}

// Activate activates a release every host has prepared.
func Activate(ctx context.Context, o *DeployOptions) (*rollout.Report, error) {
	return deploy(ctx, o, "activate")
}

// Resume continues the last unfinished deploy of an environment from the
// steps that did not finish; hosts and steps already done are skipped.
func Resume(ctx context.Context, o *DeployOptions) (*rollout.Report, error) {
	return deploy(ctx, o, "resume")
}

func deploy(ctx context.Context, o *DeployOptions, verb string) (rep *rollout.Report, err error) {
	if err := checkLease(o.Lease); err != nil {
		return nil, err
	}
	e, err := loadEnv(&o.Common)
	if err != nil {
		return nil, err
	}
	if o.Strategy != "" {
		switch o.Strategy {
		case config.StrategyAllAtOnce, config.StrategyTwoPhase:
			e.plan.Strategy.Type = config.StrategyAllAtOnce
		case config.StrategySerial, config.StrategyRolling:
			// The environment's rolling settings (min_healthy, max_fail...)
			// still hold; serial is rolling one host at a time.
			e.plan.Strategy.Type = o.Strategy
		case config.StrategyCanary:
			// Without strategy.canary the canary waits for drover promote
			// or drover abort.
			e.plan.Strategy.Type = o.Strategy
		default:
			return nil, &UsageError{fmt.Errorf("unknown --strategy %q; use all-at-once (or two-phase), rolling, serial or canary", o.Strategy)}
		}
	}
	if c := e.plan.Strategy.Canary; e.plan.Strategy.Type == config.StrategyCanary && c != nil && (c.Command != "" || c.URL != "") {
		e.plan.Gate = newCanaryGate(e.plan.Strategy.Canary, o.IO.Err)
	}
	if o.Parallel > 0 {
		e.plan.Parallel = o.Parallel
	}
	e.plan.KeepFor, e.plan.Export, e.plan.Lease, e.plan.Skip = o.KeepFor, o.Export, o.Lease, o.Skip
	e.plan.Command = "drover " + verb + " " + e.env.Name
	if o.Version != "" {
		e.plan.Command += " --version " + o.Version
	}
	if c := e.plan.Strategy.Canary; e.plan.Gate != nil {
		// Whoever finds the lock held learns that a canary may be paused
		// behind it, and for how long at most.
		e.plan.Command += fmt.Sprintf(" (canary: pauses after the first batch while its check runs for %s, or until drover promote or drover abort)", time.Duration(c.Wait))
	} else if e.plan.Strategy.Type == config.StrategyCanary {
		e.plan.Command += " (canary: pauses after the first batch until drover promote or drover abort)"
	}
	switch verb {
	case "deploy", "prepare":
		specText := o.Version
		if specText == "" {
			specText = "branch:" + e.env.Branch
		}
		spec, commit, err := resolve(ctx, e.app, specText)
		if err != nil {
			return nil, err
		}
		e.plan.Spec, e.plan.Commit, e.plan.ID = spec.String(), commit, newID(commit)
		e.plan.PrepareOnly = verb == "prepare"
		if o.Hotfix {
			e.plan.Hotfix = true
			e.plan.Command += " --hotfix"
		}
		if err := e.atCommit(ctx, commit); err != nil {
			return nil, err
		}
	case "activate":
		if err := release.CheckID(o.Release); err != nil {
			return nil, &UsageError{err}
		}
		e.plan.ID, e.plan.ActivateOnly = o.Release, true
	}
	if e.env.LoadBalancer != nil && verb != "prepare" {
		// A failure to reach the load balancer stops the deploy before any
		// host is touched.
		b, err := openBalancer(ctx, e.env.LoadBalancer)
		if err != nil {
			return nil, fmt.Errorf("%s: environments.%s.load_balancer: %w; nothing was changed", e.app.Path, e.env.Name, err)
		}
		e.plan.Balancer = b
	}
	// The server's lease comes first: what the hosts run is read once this
	// deploy's turn came.
	lease, ctx, err := takeServerLease(ctx, &o.Common, e, cmp.Or(o.Release, e.plan.ID), o.NoWait)
	if err != nil {
		return nil, err
	}
	defer func() { lease.finish(ctx, rep, err) }()
	set, err := e.open(ctx, &o.Common)
	if err != nil {
		return nil, err
	}
	defer set.Close()
	switch verb {
	case "activate":
		hosts := rollout.Releases(ctx, e.plan, set.Targets())
		var missing []string
		for _, h := range hosts {
			found := false
			for _, r := range h.Releases {
				if r.ID == o.Release {
					found = true
					e.plan.Commit = r.Commit
				}
			}
			if !found {
				missing = append(missing, h.Host)
			}
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("release %s is not prepared on %s; run `drover prepare %s` first", o.Release, strings.Join(missing, ", "), e.env.Name)
		}
		e.plan.Hotfix = recordedHotfix(hosts, o.Release)
		if err := e.atCommit(ctx, e.plan.Commit); err != nil {
			return nil, err
		}
	case "resume":
		hosts := rollout.Releases(ctx, e.plan, set.Targets())
		id, commit, spec, err := rollout.Resumable(hosts)
		if err != nil {
			return nil, err
		}
		e.plan.ID, e.plan.Commit, e.plan.Spec = id, commit, spec
		e.plan.Hotfix = recordedHotfix(hosts, id)
		if err := e.atCommit(ctx, commit); err != nil {
			return nil, err
		}
		as := ""
		if e.plan.Hotfix {
			as = " as the hotfix it began as"
		}
		fmt.Fprintf(o.IO.Err, "resuming %s (%s)%s\n", id, commit[:min(12, len(commit))], as)
	}
	// A run_once hook with no host to run on would be left out silently.
	if err := rollout.CheckRunOnce(e.plan, e.env.Hosts); err != nil {
		return nil, &UsageError{err}
	}
	if o.IO.Output != "json" {
		hotfix := ""
		if e.plan.Hotfix {
			hotfix = ", hotfix (code only)"
		}
		fmt.Fprintf(o.IO.Out, "%s %s %s to %s: release %s (commit %s), %d hosts, strategy %s%s\n",
			verb, e.app.App, e.plan.Spec, e.env.Name, e.plan.ID, short(e.plan.Commit), len(set.Nodes), e.plan.Strategy.Type, hotfix)
	}
	rep, err = observe(&o.Common, e, e.plan.ID, lease.wrap(func(obs rollout.Observer) (*rollout.Report, error) {
		return rollout.Deploy(ctx, e.plan, set.Targets(), obs)
	}))
	if err == nil && verb == "prepare" && o.IO.Output != "json" {
		// Seed 003's private release: say where it is and how to go on.
		fmt.Fprintf(o.IO.Out, "\nprepared %s in %s on every host", e.plan.ID, release.Layout{Root: e.app.DeployTo}.Release(e.plan.ID))
		if o.KeepFor > 0 {
			fmt.Fprintf(o.IO.Out, ", kept for %s whatever cleanup does", o.KeepFor)
		}
		fmt.Fprintf(o.IO.Out, "\nrun a command in it: cd there on a host, or activate it: drover activate %s %s\n", e.env.Name, e.plan.ID)
	}
	return rep, err
}

// openBalancer builds the load balancer an environment names.
func openBalancer(ctx context.Context, c *config.LoadBalancer) (lb.Balancer, error) {
	return lbopen.Open(ctx, c)
}

// checkLease refuses a --lock-lease the deploy lock cannot work with.
func checkLease(d time.Duration) error {
	if err := lock.CheckLease(d); err != nil {
		return &UsageError{fmt.Errorf("--lock-lease: %w", err)}
	}
	return nil
}

func short(sha string) string { return sha[:min(len(sha), 12)] }

// releaseCommit returns the commit the hosts record for release id.
func releaseCommit(hosts []*rollout.HostReleases, id string) string {
	for _, h := range hosts {
		for _, r := range h.Releases {
			if r.ID == id && r.Commit != "" {
				return r.Commit
			}
		}
	}
	return ""
}

// recordedHotfix reports whether a host recorded release id as a hotfix
// (deploy --hotfix): resuming or activating it skips what a hotfix skips.
func recordedHotfix(hosts []*rollout.HostReleases, id string) bool {
	for _, h := range hosts {
		for _, r := range h.Releases {
			if r.ID == id && r.Hotfix {
				return true
			}
		}
	}
	return false
}

// RollbackOptions are the inputs of `drover rollback`.
type RollbackOptions struct {
	Common
	To    string
	Lease time.Duration
	// NoWait fails at once when the control server's deploy lock is busy.
	NoWait bool
}

// Rollback switches every host back to a release recorded as good on all
// of them, refusing and naming the hosts when one lacks it.
func Rollback(ctx context.Context, o *RollbackOptions) (rep *rollout.Report, err error) {
	if err := checkLease(o.Lease); err != nil {
		return nil, err
	}
	e, err := loadEnv(&o.Common)
	if err != nil {
		return nil, err
	}
	if o.To != "" {
		if err := release.CheckID(o.To); err != nil {
			return nil, &UsageError{err}
		}
	}
	e.plan.Command = "rollback " + e.env.Name
	lease, ctx, err := takeServerLease(ctx, &o.Common, e, o.To, o.NoWait)
	if err != nil {
		return nil, err
	}
	defer func() { lease.finish(ctx, rep, err) }()
	set, err := e.open(ctx, &o.Common)
	if err != nil {
		return nil, err
	}
	defer set.Close()
	hosts := rollout.Releases(ctx, e.plan, set.Targets())
	to, err := rollout.RollbackTarget(hosts, o.To)
	if err != nil {
		return nil, err
	}
	// The release goes back with its own hooks and services.
	if err := e.atCommit(ctx, releaseCommit(hosts, to)); err != nil {
		return nil, err
	}
	e.plan.ID, e.plan.Lease, e.plan.Command = to, o.Lease, "rollback "+e.env.Name
	if o.IO.Output != "json" {
		fmt.Fprintf(o.IO.Out, "rollback %s %s to %s on %d hosts\n", e.app.App, e.env.Name, to, len(set.Nodes))
	}
	return observe(&o.Common, e, to, lease.wrap(func(obs rollout.Observer) (*rollout.Report, error) {
		return rollout.Rollback(ctx, e.plan, set.Targets(), obs)
	}))
}

// LockOptions are the inputs of `drover lock` and `drover unlock`.
type LockOptions struct {
	Common
	Reason string
}

// Lock takes the deploy lock on every host until `drover unlock`.
func Lock(ctx context.Context, o *LockOptions) error {
	return lockVerb(ctx, o, node.OpLockManual)
}

// Unlock frees the deploy lock on every host, whoever holds it.
func Unlock(ctx context.Context, o *LockOptions) error {
	return lockVerb(ctx, o, node.OpUnlock)
}

func lockVerb(ctx context.Context, o *LockOptions, op string) error {
	return withHosts(ctx, &o.Common, func(e *env, nodes []*transport.Node) error {
		cmd := "drover lock"
		if o.Reason != "" {
			cmd += ": " + o.Reason
		}
		holder := &lock.Holder{Owner: e.plan.By, Command: cmd}
		resps := transport.Each(ctx, e.plan, nodes, func(r *node.Request) { r.Op, r.Holder = op, holder }, nil)
		failed := 0
		for i, t := range nodes {
			resp := resps[i]
			name := t.Name()
			switch {
			case !resp.OK:
				failed++
				fmt.Fprintf(o.IO.Out, "%s: %s\n", name, resp.Error)
			case op == node.OpUnlock && resp.Holder != nil:
				fmt.Fprintf(o.IO.Out, "%s: unlocked (was held by %s since %s)\n", name, resp.Holder.Owner, resp.Holder.Started.UTC().Format(time.RFC3339))
			case op == node.OpUnlock:
				fmt.Fprintf(o.IO.Out, "%s: was not locked\n", name)
			default:
				fmt.Fprintf(o.IO.Out, "%s: locked by %s\n", name, resp.Holder.Owner)
			}
		}
		if failed > 0 {
			return fmt.Errorf("%d of %d hosts failed", failed, len(nodes))
		}
		return nil
	})
}
