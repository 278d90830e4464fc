// Package rollout moves an environment's hosts to a release: lock every
// host, prepare everywhere in parallel, run the run_once hooks on exactly one
// host, then activate with a strategy, one type per file (allatonce.go,
// rolling.go), with load-balancer steps when the plan has a Balancer. It
// drives Targets and never knows how a target is reached.
package rollout

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lb"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/release"
)

// Observer receives a rollout's progress. Calls come from many goroutines.
type Observer interface {
	// Phase announces a phase of the rollout: lock, prepare, run_once, activate, cleanup.
	Phase(name string)
	// Event is a step starting or ending, or a line of output, on host.
	Event(host string, ev release.Event)
	// Done is the outcome of a phase on one host.
	Done(host string, r *HostResult)
}

// Host outcomes.
const (
	StateOK          = "ok"
	StateFailed      = "failed"
	StateUnreachable = "unreachable"
	StateSkipped     = "skipped"
)

// HostResult is what happened on one host.
type HostResult struct {
	Host    string   `json:"host"`
	State   string   `json:"state"`
	Phase   string   `json:"phase"`          // the last phase it took part in
	Step    string   `json:"step,omitempty"` // the step that failed
	Error   string   `json:"error,omitempty"`
	Tail    []string `json:"tail,omitempty"`
	Release string   `json:"release,omitempty"` // the release it runs at the end, when known
	// Serving is what the host said it runs once its activation or
	// rollback ended, checked on the host; nil when it did not say.
	Serving *release.Serving `json:"serving,omitempty"`
	// unknown is set when the host's answer never came back (the
	// connection failed or was interrupted mid-request).
	unknown  bool
	Prepare  time.Duration `json:"prepare"`
	Activate time.Duration `json:"activate"`
}

// Report is the outcome of a rollout.
type Report struct {
	App      string        `json:"app"`
	Env      string        `json:"env"`
	Release  string        `json:"release"`
	Commit   string        `json:"commit"`
	Hosts    []*HostResult `json:"hosts"`
	Elapsed  time.Duration `json:"elapsed"`
	Window   time.Duration `json:"activation_window"` // from the first switch to the last host active
	Err      string        `json:"error,omitempty"`
	Activate bool          `json:"activated"`
	// SkippedHooks are the hooks the rollout left out: run_once hooks
	// --skip named, and with --hotfix the hooks marked hotfix: skip.
	SkippedHooks []SkippedHook `json:"skipped_hooks,omitempty"`
	// Strategy is the strategy that activated the hosts.
	Strategy string `json:"strategy,omitempty"`
	// MaxFail is how many failed hosts the rollout allowed (max_fail);
	// the report is still OK with that many.
	MaxFail int `json:"max_fail,omitempty"`
	// Notes are things a person should know that are not failures: a drain
	// that timed out, a host that was already out of the load balancer.
	Notes []string `json:"notes,omitempty"`
	// Hotfix says the rollout was a code-only one (deploy --hotfix).
	Hotfix bool `json:"hotfix,omitempty"`
	// SkippedCleanup says why no old release was cleaned up after the
	// activation (ReasonHotfix); empty when cleanup ran or had no place.
	SkippedCleanup string `json:"skipped_cleanup,omitempty"`
}

// OK reports whether every host succeeded, or failed within max_fail.
func (r *Report) OK() bool {
	if r.Err != "" {
		return false
	}
	failed := 0
	for _, h := range r.Hosts {
		if h.State != StateOK {
			failed++
		}
	}
	return failed <= r.MaxFail
}

// Plan is one rollout of a release to an environment.
type Plan struct {
	App    *config.File
	Env    *config.Environment
	ID     string // release ID, the same on every host (release.NewID)
	Commit string
	Spec   string
	By     string
	// Strategy is how the hosts activate: its type and settings.
	Strategy config.Strategy
	// Gate decides whether a canary is promoted (strategy canary).
	Gate Gate
	// Balancer is the load balancer in front of the environment; nil when
	// there is none (then no host is drained).
	Balancer lb.Balancer
	// Fleet is how many hosts the environment has in drover.yml, whatever
	// --host or --role chose: min_healthy's percent is of these. 0 = the
	// rollout's own hosts.
	Fleet int
	// UpTimeout bounds the wait for the load balancer to report a
	// re-enabled host UP (default DefaultUpTimeout); Poll is how often it
	// is asked while waiting (default DefaultPoll).
	UpTimeout, Poll time.Duration
	Parallel        int // hosts prepared at once; 0 = all
	KeepFor         time.Duration
	Export          string
	Command         string        // what the deployer runs, shown to a blocked deployer
	Lease           time.Duration // deploy lock lease
	// PrepareOnly stops after prepare (drover prepare); ActivateOnly skips it (drover activate).
	PrepareOnly, ActivateOnly bool
	// Skip names run_once hooks not to run (drover deploy --skip HOOK).
	Skip []string
	// Hotfix is a code-only rollout (drover deploy --hotfix, seed 003's
	// hotfix_deploy): the hooks marked hotfix: skip and the cleanup after
	// activation do not run. Hosts record the release as a hotfix and
	// decide the hooks from that record.
	Hotfix bool
}

// Deployer names who deploys: user@machine.
func Deployer() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

type run struct {
	start   time.Time
	plan    *Plan
	targets []Target
	obs     Observer
	// mu guards results, tokens and switches, which sub-runs (a batch,
	// the hosts after the first lock) share with the run they come from.
	mu       *sync.Mutex
	results  map[string]*HostResult
	tokens   map[string]int64
	switches *[]time.Time // when each host reported its `current` switched, by this machine's clock
}

// sub is a run over some of r's targets that shares r's results, tokens
// and their mutex.
func (r *run) sub(targets []Target) *run {
	c := *r
	c.targets = targets
	return &c
}

func newRun(plan *Plan, targets []Target, obs Observer) (*run, *Report) {
	r := &run{start: time.Now(), plan: plan, targets: targets, obs: obs, mu: &sync.Mutex{}, results: map[string]*HostResult{}, tokens: map[string]int64{}, switches: new([]time.Time)}
	return r, &Report{App: plan.App.App, Env: plan.Env.Name, Release: plan.ID, Commit: plan.Commit}
}

// window is the activation window: from the first host's `current` switch
// to the last one's, as their events reached this machine.
func (r *run) window() time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	sw := *r.switches
	if len(sw) < 2 {
		return 0
	}
	return slices.MaxFunc(sw, time.Time.Compare).Sub(slices.MinFunc(sw, time.Time.Compare))
}

// finish fills the report's per-host results and elapsed time.
func (r *run) finish(rep *Report) {
	rep.Elapsed = time.Since(r.start)
	for _, t := range r.targets {
		rep.Hosts = append(rep.Hosts, r.result(t))
	}
}

func (r *run) result(t Target) *HostResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	name := t.Name()
	if r.results[name] == nil {
		r.results[name] = &HostResult{Host: name, State: StateOK}
	}
	return r.results[name]
}

// call is what every request of the run carries to t.
func (r *run) call(t Target) Call {
	name := t.Name()
	r.mu.Lock()
	token := r.tokens[name]
	r.mu.Unlock()
	return r.plan.call(token, func(ev release.Event) {
		if ev.Kind == release.EventStepEnd && ev.Step == "switch" && ev.Error == "" {
			r.mu.Lock()
			*r.switches = append(*r.switches, time.Now())
			r.mu.Unlock()
		}
		r.obs.Event(name, ev)
	})
}

// note tells the observer and the report something a person should know
// about host (empty: the rollout as a whole).
func (r *run) note(rep *Report, host, msg string) {
	r.mu.Lock()
	if host != "" {
		rep.Notes = append(rep.Notes, host+": "+msg)
	} else {
		rep.Notes = append(rep.Notes, msg)
	}
	r.mu.Unlock()
	r.obs.Event(host, release.Event{Kind: release.EventInfo, Line: msg, Time: time.Now()})
}

// call is what a request of plan carries to a node holding token.
func (p *Plan) call(token int64, events func(release.Event)) Call {
	return Call{App: p.App, Env: p.Env.Name, Release: p.ID, Commit: p.Commit, Spec: p.Spec, By: p.By, Export: p.Export, Hotfix: p.Hotfix, Token: token, Events: events}
}

// do runs op on t in phase and records a failure in t's result. op gets
// the Call the request carries.
func (r *run) do(ctx context.Context, t Target, phase string, op func(context.Context, Call) error) bool {
	if err := ctx.Err(); err != nil {
		// Interrupted before this host was asked: it was not touched.
		res := r.result(t)
		res.Phase, res.State, res.Error = phase, StateFailed, "interrupted before "+phase+": "+err.Error()
		return false
	}
	c := r.call(t)
	c.Wave, _ = ctx.Value(waveKey{}).(int)
	err := op(ctx, c)
	res := r.result(t)
	res.Phase = phase
	var ne *NodeError
	switch {
	case err == nil:
		return true
	case errors.As(err, &ne):
		res.State, res.Error, res.Step, res.Tail = StateFailed, ne.Error(), ne.Step, ne.Tail
		if ne.Serving != nil {
			res.Release, res.Serving = ne.Serving.Release, ne.Serving
		}
	default:
		res.State, res.Error, res.unknown = StateUnreachable, err.Error(), true
		if ctx.Err() != nil {
			res.State, res.Error = StateFailed, "interrupted: "+ctx.Err().Error()
		}
	}
	return false
}

// Deploy runs plan on targets and reports per host. It returns an error only
// when the rollout could not start (bad plan, lock held); host failures are
// in the report.
func Deploy(ctx context.Context, plan *Plan, targets []Target, obs Observer) (*Report, error) {
	strat, err := newStrategy(plan, len(targets))
	if err == nil {
		err = CheckRunOnce(plan, hostsOf(targets))
	}
	if err != nil {
		return &Report{App: plan.App.App, Env: plan.Env.Name, Release: plan.ID, Commit: plan.Commit, Err: err.Error()}, err
	}
	r, rep := newRun(plan, targets, obs)
	rep.Strategy = plan.Strategy.Type
	defer r.finish(rep)
	rep.SkippedHooks, rep.Hotfix = plan.skippedHooks(), plan.Hotfix
	if plan.Hotfix && !plan.PrepareOnly {
		rep.SkippedCleanup = ReasonHotfix
	}
	ctx, unlock, err := r.lock(ctx, rep)
	if err != nil {
		return rep, err
	}
	defer unlock()

	if !plan.ActivateOnly {
		obs.Phase("prepare")
		if !r.prepareAll(ctx) {
			sub := r.withoutFailed(ctx, strat, rep)
			if sub == nil {
				rep.Err = "no host was activated because a host failed to prepare; fix it and run `drover resume " + plan.Env.Name + "`"
				r.skipRest("activate")
				return rep, nil
			}
			r = sub // the report still lists every host (finish was deferred on the whole run)
		}
	}
	if plan.PrepareOnly {
		return rep, nil
	}
	if !r.runOnce(ctx, config.StageBeforeActivate) {
		rep.Err = "no host was activated because a run_once hook failed"
		r.skipRest("activate")
		return rep, nil
	}
	obs.Phase("activate")
	rep.Activate = true
	strat.activate(ctx, r, rep)
	rep.Window = r.window()
	if rep.Err != "" {
		return rep, nil
	}
	if !r.runOnce(ctx, config.StageAfterActivate) {
		rep.Err = "a run_once after_activate hook failed; every host runs the new release"
		return rep, nil
	}
	return rep, nil
}

// tolerant is a strategy that counts hosts failed in prepare against its
// max_fail and goes on without them (rolling, serial, canary).
type tolerant interface {
	// tolerate reports whether the rollout may go on without the hosts
	// failed (named) and, if so, counts them as failed.
	tolerate(failed []string) bool
}

// withoutFailed is the run over the hosts that prepared when strat lets
// the rollout go on without the others (they failed within max_fail, and
// every run_once hook still has a host); nil when it must stop.
func (r *run) withoutFailed(ctx context.Context, strat strategy, rep *Report) *run {
	tol, ok := strat.(tolerant)
	if !ok || ctx.Err() != nil || r.plan.PrepareOnly {
		return nil
	}
	var prepared []Target
	var failed []string
	for _, t := range r.targets {
		if r.result(t).State == StateOK {
			prepared = append(prepared, t)
		} else {
			failed = append(failed, t.Name())
		}
	}
	if len(prepared) == 0 || CheckRunOnce(r.plan, hostsOf(prepared)) != nil || !tol.tolerate(failed) {
		return nil
	}
	r.note(rep, "", fmt.Sprintf("%s failed to prepare; max_fail lets the rollout go on without it (%d failed host(s) so far)", strings.Join(failed, ", "), len(failed)))
	return r.sub(prepared)
}

// lock is the first phase of every rollout: lockAll, with a failure noted
// in the report.
func (r *run) lock(ctx context.Context, rep *Report) (context.Context, func(), error) {
	r.obs.Phase("lock")
	ctx, unlock, err := r.lockAll(ctx)
	if err != nil {
		rep.Err = err.Error()
	}
	return ctx, unlock, err
}

// lockAll takes the deploy lock on every host. The returned context is
// cancelled if any host loses its lock; release frees them all.
func (r *run) lockAll(ctx context.Context) (context.Context, func(), error) {
	ctx, cancel := context.WithCancel(ctx)
	holder := lock.Holder{Owner: r.plan.By, PID: os.Getpid(), Command: r.plan.Command, Lease: r.plan.Lease}
	var (
		mu      sync.Mutex
		helds   []Lease
		errs    []error
		watched = map[<-chan struct{}]bool{} // Lost channels with a watcher
	)
	lockOne := func(ctx context.Context, t Target) {
		h, err := t.Lock(ctx, r.call(t), holder)
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			res := r.result(t)
			res.Phase, res.State, res.Error = "lock", StateFailed, err.Error()
			var he *lock.HeldError
			if !errors.As(err, &he) {
				res.State = StateUnreachable
			}
			errs = append(errs, fmt.Errorf("%s: %w", t.Name(), err))
			return
		}
		helds = append(helds, h)
		r.mu.Lock()
		r.tokens[t.Name()] = h.Token()
		r.mu.Unlock()
		// Hosts may share one lease (a control server's environment lease
		// is every node's): one watcher per lease, not per host.
		lost := h.Lost()
		if watched[lost] {
			return
		}
		watched[lost] = true
		go func() {
			select {
			case <-lost:
				cancel()
			case <-ctx.Done():
			}
		}()
	}
	// The first host's lock decides between two deployers racing: the
	// loser fails there and never holds a lock on another host, so one of
	// them always gets the whole environment.
	if len(r.targets) > 0 {
		lockOne(ctx, r.targets[0])
	}
	if len(errs) == 0 && len(r.targets) > 1 {
		r.sub(r.targets[1:]).each(ctx, 0, lockOne)
	}
	release := func() {
		for _, h := range helds {
			_ = h.Release()
		}
		cancel()
	}
	if len(errs) > 0 {
		release()
		r.skipRest("prepare")
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = e.Error()
		}
		return nil, nil, fmt.Errorf("could not lock every host, nothing was changed:\n  %s", strings.Join(msgs, "\n  "))
	}
	return ctx, release, nil
}

// waveKey carries, in the context of each's calls, how many targets it
// started at once.
type waveKey struct{}

// each runs fn for every target, at most limit at once (0 = all).
func (r *run) each(ctx context.Context, limit int, fn func(context.Context, Target)) {
	var g errgroup.Group
	if limit > 0 && limit < len(r.targets) {
		g.SetLimit(limit)
	} else {
		// Every target starts at once: a wave (Call.Wave).
		ctx = context.WithValue(ctx, waveKey{}, len(r.targets))
	}
	for _, t := range r.targets {
		g.Go(func() error { fn(ctx, t); return nil })
	}
	_ = g.Wait()
}

// runOnceHosts picks, for each run_once hook of stage, the first host (in
// drover.yml order) with the hook's role. Hooks the plan skips run nowhere;
// CheckRunOnce made sure every other hook has a host.
func (r *run) runOnceHosts(stage string) map[Target][]string {
	out := map[Target][]string{}
	for _, h := range r.plan.App.HooksFor(stage) {
		if !h.RunOnce || r.plan.skipReason(h) != "" {
			continue
		}
		for _, t := range r.targets {
			if t.Host().HasRole(h.Role) {
				out[t] = append(out[t], h.Name)
				break
			}
		}
	}
	return out
}

func (r *run) prepareAll(ctx context.Context) bool {
	chosen := r.runOnceHosts(config.StagePrepare)
	r.each(ctx, r.plan.Parallel, func(ctx context.Context, t Target) {
		start := time.Now()
		r.do(ctx, t, "prepare", func(ctx context.Context, c Call) error {
			_, err := t.Prepare(ctx, c, chosen[t], r.plan.KeepFor)
			return err
		})
		res := r.result(t)
		res.Prepare = time.Since(start)
		r.obs.Done(t.Name(), res)
	})
	return !r.failed()
}

func (r *run) runOnce(ctx context.Context, stage string) bool {
	chosen := r.runOnceHosts(stage)
	if len(chosen) == 0 {
		return true
	}
	r.obs.Phase("run_once " + stage)
	for _, t := range r.targets {
		hooks := chosen[t]
		if len(hooks) == 0 {
			continue
		}
		ok := r.do(ctx, t, "run_once", func(ctx context.Context, c Call) error {
			return t.RunHooks(ctx, c, stage, hooks)
		})
		if !ok {
			r.obs.Done(t.Name(), r.result(t))
			return false
		}
	}
	return true
}

// activateOne activates t and records the outcome; it reports whether t
// runs the release. ready, when set, holds t right before its switch (see
// Call.Ready).
func (r *run) activateOne(ctx context.Context, t Target, ready func() bool) bool {
	t0 := time.Now()
	var sv *release.Serving
	ok := r.do(ctx, t, "activate", func(ctx context.Context, c Call) (err error) {
		// Each host cleans up once it runs the release; a hotfix keeps
		// every release.
		keep := r.plan.App.KeepReleases
		if r.plan.Hotfix {
			keep = 0
		}
		c.Ready = ready
		sv, err = t.Activate(ctx, c, keep)
		return err
	})
	res := r.result(t)
	r.mu.Lock()
	res.Activate = time.Since(t0)
	if ok {
		res.Release, res.Serving = sv.Release, sv
	}
	r.mu.Unlock()
	r.obs.Done(t.Name(), res)
	return ok
}

func (r *run) failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, res := range r.results {
		if res.State != StateOK && res.State != StateSkipped {
			return true
		}
	}
	return false
}

// skipRest marks hosts that have no outcome yet as skipped in phase.
func (r *run) skipRest(phase string) {
	for _, t := range r.targets {
		res := r.result(t)
		r.mu.Lock()
		if res.State == StateOK && res.Phase != "activate" {
			res.State, res.Phase = StateSkipped, phase
			if res.Error == "" {
				res.Error = "not " + phase + "d: another host failed"
			}
		}
		r.mu.Unlock()
	}
}

// mixedSummary names the hosts left on another release after a failed
// activation or rollback, and says what each of them runs as far as the
// host itself reported it.
func (r *run) mixedSummary() string {
	var on, off, after []string
	for _, t := range r.targets {
		res := r.result(t)
		switch {
		case res.State == StateOK && (res.Phase == "activate" || res.Phase == "rollback"):
			on = append(on, res.Host)
		case res.Serving != nil && res.Serving.Release == r.plan.ID && res.Serving.Healthy:
			// It switched and serves; a hook after the switch failed.
			on = append(on, res.Host)
			after = append(after, fmt.Sprintf("%s: %s failed after the switch", res.Host, strings.TrimPrefix(res.Step, "hook:")))
		default:
			off = append(off, res.Host+" "+whereNow(res, r.plan.Env.Name))
		}
	}
	slices.Sort(on)
	slices.Sort(off)
	slices.Sort(after)
	if len(on) == 0 {
		return fmt.Sprintf("no host runs %s: %s", r.plan.ID, strings.Join(off, "; "))
	}
	hooks := ""
	if len(after) > 0 {
		hooks = fmt.Sprintf("; after_activate hooks failed (%s): drover does not run them again; run them by hand with `drover exec %s -- ...`, or deploy a new release",
			strings.Join(after, "; "), r.plan.Env.Name)
	}
	if len(off) == 0 {
		return fmt.Sprintf("%s runs %s%s", strings.Join(on, ", "), r.plan.ID, hooks)
	}
	return fmt.Sprintf("hosts run different releases: %s runs %s; %s%s; run `drover resume %s` after fixing, or `drover rollback %s`", strings.Join(on, ", "), r.plan.ID, strings.Join(off, "; "), hooks, r.plan.Env.Name, r.plan.Env.Name)
}

// whereNow says what a host that did not end on the rollout's release runs.
func whereNow(res *HostResult, env string) string {
	switch {
	case res.Serving != nil:
		return res.Serving.String()
	case res.unknown && (res.Phase == "activate" || res.Phase == "rollback"):
		return "did not answer while it switched releases: what it runs is unknown; check with `drover releases " + env + "` and `drover service status " + env + "`"
	}
	return "was not switched and keeps its previous release"
}
