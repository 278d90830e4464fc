package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/store"
)

// Runner defaults.
const (
	DefaultNodeTimeout = 2 * time.Minute
	DefaultRunnerPoll  = 250 * time.Millisecond
	// DefaultStaleAfter is RunnerOptions.StaleAfter's default: the
	// server's own stale mark (three long-polls and some).
	DefaultStaleAfter = 100 * time.Second
)

// liveStates are the states of a rollout that is not over.
var liveStates = []store.RolloutState{store.RolloutQueued, store.RolloutRunning, store.RolloutPaused}

// runner is one RunRollouts loop: the rollouts it runs now, by ID.
type runner struct {
	c    *Control
	opts RunnerOptions
	log  *slog.Logger

	mu      sync.Mutex
	running map[int64]bool
	wg      sync.WaitGroup
}

// RunRollouts runs this server's share of rollouts until ctx ends: it
// starts queued rollouts in FIFO order when their environment's lease is
// free, and takes over a running one whose runner's lease lapsed (another
// replica crashed, or this server restarted), continuing from the recorded
// per-node state.
//
// When ctx ends the rollouts it runs stop where they are and record
// nothing more; their lease lapses and a runner (another replica, or this
// server once restarted) takes them over.
func (c *Control) RunRollouts(ctx context.Context, opts RunnerOptions) error {
	if opts.Name == "" {
		host, _ := os.Hostname()
		opts.Name = host + ":" + strconv.Itoa(os.Getpid())
	}
	if opts.NodeTimeout <= 0 {
		opts.NodeTimeout = DefaultNodeTimeout
	}
	if opts.Poll <= 0 {
		opts.Poll = DefaultRunnerPoll
	}
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = DefaultStaleAfter
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.AllowCommands {
		c.allowCommands.Store(true)
	}
	r := &runner{c: c, opts: opts, log: opts.Logger.With("runner", opts.Name), running: map[int64]bool{}}
	defer r.wg.Wait()
	for {
		kick := c.runnerKick()
		if err := r.scan(ctx); err != nil && ctx.Err() == nil {
			r.log.Warn("rollouts: read the queue", "err", err)
		}
		timer := c.clock.NewTimer(opts.Poll)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C():
		case <-kick:
		}
		timer.Stop()
	}
}

// runnerKick returns a channel closed at the next change that may let a
// rollout start here (a new rollout, a lease released).
func (c *Control) runnerKick() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kick == nil {
		c.kick = make(chan struct{})
	}
	return c.kick
}

func (c *Control) kickRunner() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.kick != nil {
		close(c.kick)
		c.kick = nil
	}
}

// scan looks at every environment with live server rollouts and starts or
// takes over what it can.
func (r *runner) scan(ctx context.Context) error {
	live, err := r.c.st.ListRollouts(ctx, store.RolloutFilter{States: liveStates})
	if err != nil {
		return err
	}
	slices.Reverse(live) // oldest first: FIFO
	headTried := map[envKey]bool{}
	for _, ro := range live {
		if ro.Kind != store.RolloutServer || r.isRunning(ro.ID) {
			continue
		}
		k := envKey{ro.App, ro.Env}
		t, err := r.c.st.GetTicket(ctx, ro.TicketID)
		if err != nil {
			r.log.Warn("rollouts: read the ticket", "rollout", ro.ID, "ticket", ro.TicketID, "err", err)
			continue
		}
		switch t.State {
		case store.TicketQueued:
			if headTried[k] {
				continue // only the oldest queued rollout of an environment may start
			}
			headTried[k] = true
			r.tryStart(ctx, ro)
		case store.TicketRunning:
			if r.c.clock.Now().Before(t.ExpiresAt) {
				continue // its runner is alive
			}
			l, err := r.c.st.TakeOverLease(ctx, t.ID, r.c.clock.Now(), r.c.lease)
			if err != nil {
				if !errors.Is(err, store.ErrLeaseLost) {
					r.log.Warn("rollouts: take over", "rollout", ro.ID, "err", err)
				}
				continue
			}
			r.log.Info("taking over rollout", "rollout", ro.ID, "app", ro.App, "env", ro.Env, "token", l.Token, "was", ro.Runner)
			r.start(ctx, ro, l)
		default:
			r.settle(ctx, ro, t)
		}
	}
	return nil
}

// tryStart gives queued rollout ro its environment's lease if it is its
// turn, and runs it.
func (r *runner) tryStart(ctx context.Context, ro store.Rollout) {
	at := r.c.clock.Now().UTC().Truncate(time.Microsecond)
	l, ok, err := r.c.st.TryAcquire(ctx, ro.TicketID, at, r.c.lease)
	switch {
	case errors.Is(err, store.ErrSuperseded), errors.Is(err, store.ErrCancelled), errors.Is(err, store.ErrLeaseLost):
		if t, gerr := r.c.st.GetTicket(ctx, ro.TicketID); gerr == nil {
			r.settle(ctx, ro, t)
		}
		return
	case err != nil:
		r.log.Warn("rollouts: acquire", "rollout", ro.ID, "err", err)
		return
	case !ok:
		if l.TicketID != 0 && !r.c.clock.Now().Before(l.ExpiresAt) {
			r.freeEnded(ctx, l)
		}
		return
	case !l.Since.Equal(at):
		// The ticket held the lease already: another replica started it
		// between our two reads, and runs it.
		return
	}
	r.start(ctx, ro, l)
}

// freeEnded frees lease l, lapsed, when its holder is a server rollout
// that already recorded its outcome (its runner died before it released
// the lease): the queue would otherwise wait for a takeover that never
// comes, since only live rollouts are taken over.
func (r *runner) freeEnded(ctx context.Context, l Lease) {
	ro, err := r.c.st.RolloutByTicket(ctx, l.TicketID)
	if err != nil || !ro.State.Done() {
		return
	}
	taken, err := r.c.st.TakeOverLease(ctx, l.TicketID, r.c.clock.Now(), r.c.lease)
	if err != nil {
		return
	}
	if err := r.c.Release(ctx, taken); err != nil {
		r.log.Warn("rollouts: free the lease of an ended rollout", "rollout", ro.ID, "err", err)
		return
	}
	r.log.Info("freed the lapsed lease of an ended rollout", "rollout", ro.ID, "app", ro.App, "env", ro.Env)
}

// settle ends the row of a live rollout whose ticket ended without it
// running (cancelled, superseded, expired) or ended without a result.
func (r *runner) settle(ctx context.Context, ro store.Rollout, t store.Ticket) {
	// Read the row again: a runner records the outcome before it frees the
	// ticket, so a rollout whose ticket is done has ended by now, and this
	// scan's copy may be older than that.
	ro, err := r.c.st.GetRollout(ctx, ro.ID)
	if err != nil || ro.State.Done() {
		return
	}
	switch t.State {
	case store.TicketCancelled:
		ro.State, ro.Error = store.RolloutCancelled, "cancelled while queued"
	case store.TicketSuperseded:
		ro.State, ro.Error = store.RolloutSuperseded, fmt.Sprintf("superseded while queued by a newer rollout (ticket %d)", t.SupersededBy)
	case store.TicketExpired:
		ro.State, ro.Error = store.RolloutFailed, "its deploy ticket expired before it ran"
	case store.TicketDone:
		ro.State, ro.Error = store.RolloutFailed, "its runner released the environment's lease without recording an outcome"
	default:
		return
	}
	if ro.EndedAt.IsZero() {
		ro.EndedAt = r.c.clock.Now()
	}
	if err := r.c.st.UpdateRollout(ctx, ro); err != nil {
		r.log.Warn("rollouts: settle", "rollout", ro.ID, "err", err)
	}
}

func (r *runner) isRunning(id int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.running[id]
}

// start runs ro under lease l in its own goroutine.
func (r *runner) start(ctx context.Context, ro store.Rollout, l Lease) {
	r.mu.Lock()
	r.running[ro.ID] = true
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() {
			r.mu.Lock()
			delete(r.running, ro.ID)
			r.mu.Unlock()
			r.c.kickRunner()
		}()
		r.run(ctx, ro, l)
	}()
}

// rolloutRun is one run of a rollout by this runner, under one lease.
type rolloutRun struct {
	c    *Control
	opts RunnerOptions
	log  *slog.Logger
	ctx  context.Context // cancelled when the runner stops or the lease is lost
	// stop ends when the runner stops: the run then writes nothing more
	// and its lease lapses for a takeover.
	stop  context.Context
	id    int64
	app   string
	env   string
	token int64
	lease Lease
	// stale are the environment's nodes left out when the rollout began:
	// their agents were not seen for StaleAfter.
	stale []store.Node
	plan  *planDoc
	// answer is what the rollout's tasks tell agents besides the task.
	answer rolloutAnswer

	board  *nodeBoard
	assign *assigner

	lost     chan struct{} // closed when the lease is lost
	lostOnce sync.Once
	lostFlag atomic.Bool
	cancel   context.CancelFunc

	mu  sync.Mutex
	row store.Rollout // the row as this run writes it
}

func (run *rolloutRun) isLost() bool { return run.lostFlag.Load() }

// loseLease stops the run: another runner holds the lease now.
func (run *rolloutRun) loseLease(err error) {
	run.lostOnce.Do(func() {
		run.lostFlag.Store(true)
		run.log.Warn("rollout lost its lease; stopping and recording nothing more", "rollout", run.id, "err", err)
		close(run.lost)
		run.cancel()
	})
}

// save writes the row, unless the run lost its lease.
func (run *rolloutRun) save(ctx context.Context, change func(*store.Rollout)) error {
	run.mu.Lock()
	defer run.mu.Unlock()
	if run.isLost() {
		return ErrLeaseLost
	}
	if err := run.stop.Err(); err != nil {
		return fmt.Errorf("runner stopping: %w", err)
	}
	change(&run.row)
	if err := run.c.st.UpdateRollout(context.WithoutCancel(ctx), run.row); err != nil {
		return fmt.Errorf("record rollout %d: %w", run.id, err)
	}
	return nil
}

// setState moves the row between running and paused (a canary's pause).
func (run *rolloutRun) setState(st store.RolloutState) error {
	return run.save(run.ctx, func(r *store.Rollout) { r.State = st })
}

// Observer of the strategy code: the phase goes to the row; the nodes'
// progress is in their rows already.

// Phase implements rollout.Observer.
func (run *rolloutRun) Phase(name string) {
	if i := strings.Index(name, "; drover promote "); i >= 0 && strings.HasPrefix(name, "canary: paused on ") {
		// The push deployer's hint; a server rollout is decided by its ID.
		name = fmt.Sprintf("%s; drover promote --rollout %d or drover abort --rollout %d", name[:i], run.id, run.id)
	}
	if err := run.save(run.ctx, func(r *store.Rollout) { r.Phase = name }); err != nil && !errors.Is(err, ErrLeaseLost) {
		run.log.Warn("record the rollout's phase", "rollout", run.id, "phase", name, "err", err)
	}
}

// Event implements rollout.Observer.
func (run *rolloutRun) Event(host string, ev release.Event) {}

// Done implements rollout.Observer.
func (run *rolloutRun) Done(host string, res *rollout.HostResult) {
	if res.State != rollout.StateOK && res.State != rollout.StateSkipped {
		run.log.Info("node failed", "rollout", run.id, "node", host, "phase", res.Phase, "err", res.Error)
	}
}

// startReport is what the row's Report holds while the rollout runs: its
// nodes and what each ran when the rollout began, so a runner that takes
// the rollout over runs it on the same nodes and rolls back to the same
// releases.
func startReport(ro store.Rollout, plan *rollout.Plan, targets []*agentTarget) []byte {
	rep := rollout.Report{App: ro.App, Env: ro.Env, Release: plan.ID, Commit: plan.Commit, Strategy: plan.Strategy.Type}
	for _, t := range targets {
		rep.Hosts = append(rep.Hosts, &rollout.HostResult{Host: t.node.Name, Release: t.before})
	}
	b, _ := json.Marshal(rep)
	return b
}

// run runs rollout ro under lease l and records its outcome.
func (r *runner) run(ctx context.Context, ro store.Rollout, l Lease) {
	c := r.c
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	run := &rolloutRun{c: c, opts: r.opts, log: r.log, ctx: rctx, stop: ctx, id: ro.ID, app: ro.App, env: ro.Env, token: l.Token, lease: l,
		lost: make(chan struct{}), cancel: cancel, row: ro}
	run.board = newNodeBoard(c.st, ro.ID, r.opts.Poll)
	run.assign = &assigner{run: run, grew: make(chan struct{}, 1)}
	kept := make(chan struct{}) // closed once the lease is no longer renewed
	go func() {
		defer close(kept)
		if err, ok := <-c.Keep(rctx, l); ok && err != nil {
			run.loseLease(err)
		}
	}()
	c.boardsMu.Lock()
	c.boards[ro.ID] = run.board
	c.boardsMu.Unlock()
	defer func() {
		c.boardsMu.Lock()
		delete(c.boards, ro.ID)
		c.boardsMu.Unlock()
	}()

	rep, err := run.deploy(rctx, ro)
	switch {
	case ctx.Err() != nil:
		cancel()
		<-kept
		run.handOver()
		return
	case run.isLost():
		return
	}
	run.finish(ctx, rep, err)
}

// handOver ends the lease of a run its runner stopped (the server shuts
// down) now instead of when it lapses: the rollout stopped where it was
// and another replica, or this server restarted, takes it over at once.
func (run *rolloutRun) handOver() {
	if run.isLost() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := run.c.st.RenewLease(ctx, run.lease, run.c.clock.Now(), time.Nanosecond); err != nil {
		run.log.Warn("runner stopping: rollout left for a takeover once its lease lapses", "rollout", run.id, "err", err)
		return
	}
	run.log.Info("runner stopping: rollout handed over for a takeover", "rollout", run.id)
}

// deploy prepares the run (plan, nodes, the row) and runs the strategy.
func (run *rolloutRun) deploy(ctx context.Context, ro store.Rollout) (*rollout.Report, error) {
	st := run.c.st
	doc, err := decodePlan(ro.Plan)
	if err != nil {
		return nil, err
	}
	run.plan = doc
	rel, err := st.GetRelease(ctx, ro.ReleaseID)
	if err != nil {
		return nil, fmt.Errorf("read release %d: %w", ro.ReleaseID, err)
	}
	run.answer = answerOf(ro, rel)
	if err := run.board.refresh(ctx); err != nil {
		return nil, fmt.Errorf("read the rollout's nodes: %w", err)
	}
	go run.board.loop(ctx, func(err error) { run.log.Warn("read the rollout's nodes", "rollout", run.id, "err", err) })
	targets, err := run.targets(ctx, ro, rel)
	if err != nil {
		return nil, err
	}
	hosts := make([]*config.Host, len(targets))
	rts := make([]rollout.Target, len(targets))
	for i, t := range targets {
		hosts[i], rts[i] = t.host, t
	}
	plan, err := doc.rolloutPlan(ctx, rel, ro.CreatedBy, hosts, run.opts.AllowCommands)
	if err != nil {
		return nil, err
	}
	if err := run.save(ctx, func(r *store.Rollout) {
		if r.State == store.RolloutQueued {
			r.State = store.RolloutRunning
		}
		if r.StartedAt.IsZero() {
			r.StartedAt = run.c.clock.Now()
		}
		r.Runner, r.Release = run.opts.Name, plan.ID
		if len(r.Report) == 0 {
			r.Report = startReport(ro, plan, targets)
		}
	}); err != nil {
		return nil, err
	}
	if len(targets) == 0 {
		return nil, fmt.Errorf("no agent is registered for %s/%s, so nothing was rolled out; start agents there (drover agent) and create the release again", run.app, run.env)
	}
	rep, err := rollout.Deploy(ctx, plan, rts, run)
	if rep != nil {
		for _, n := range run.stale {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%s: left out, its agent was not seen since %s (over %s); it gets the environment's release when it comes back", n.Name, n.LastSeen.UTC().Format(time.RFC3339), run.opts.StaleAfter))
		}
	}
	return rep, err
}

// targets are the rollout's nodes: the environment's registered nodes when
// it first starts; after a takeover, the nodes it started with (nodes that
// joined since converge to the environment's release when it ends).
func (run *rolloutRun) targets(ctx context.Context, ro store.Rollout, rel store.Release) ([]*agentTarget, error) {
	nodes, err := run.c.st.ListNodes(ctx, store.NodeFilter{App: ro.App, Env: ro.Env})
	if err != nil {
		return nil, fmt.Errorf("list the nodes of %s/%s: %w", ro.App, ro.Env, err)
	}
	var began map[string]string // node → release it ran when the rollout began
	if len(ro.Report) > 0 {
		var rep rollout.Report
		if err := json.Unmarshal(ro.Report, &rep); err == nil && rep.Hosts != nil {
			began = map[string]string{}
			for _, h := range rep.Hosts {
				began[h.Host] = h.Release
			}
		}
	}
	names := map[int64]string{} // server release → engine release
	var out []*agentTarget
	now := run.c.clock.Now()
	for _, n := range nodes {
		before, ok := began[n.Name]
		if began != nil && !ok {
			continue // joined after the rollout began, or was left out
		}
		if began == nil && now.Sub(n.LastSeen) > run.opts.StaleAfter {
			run.stale = append(run.stale, n)
			continue
		}
		if began == nil && n.CurrentRelease != 0 {
			if id, seen := names[n.CurrentRelease]; seen {
				before = id
			} else if cur, err := run.c.st.GetRelease(ctx, n.CurrentRelease); err == nil {
				before = engineID(cur)
				names[n.CurrentRelease] = before
			}
		}
		out = append(out, &agentTarget{run: run, node: n, host: &config.Host{Name: n.Name, Roles: n.Roles}, before: before})
	}
	return out, nil
}

// finish records the outcome: the report, the final state, the
// environment's current release on success; then frees the lease and
// wakes the agents. A run that lost its lease writes nothing.
func (run *rolloutRun) finish(ctx context.Context, rep *rollout.Report, err error) {
	c := run.c
	bg := context.WithoutCancel(ctx)
	// The last check of the fence before writing the outcome: a runner
	// that cannot confirm its lease leaves the outcome to whoever takes
	// the rollout over (every task is done: it ends at once).
	if _, rerr := c.Renew(bg, run.lease); rerr != nil {
		if errors.Is(rerr, ErrLeaseLost) {
			run.loseLease(rerr)
		} else {
			run.log.Warn("could not confirm the lease before recording the outcome; leaving it to a takeover", "rollout", run.id, "err", rerr)
		}
		return
	}
	state, msg := store.RolloutSucceeded, ""
	switch {
	case rep == nil:
		state, msg = store.RolloutFailed, err.Error()
	case !rep.OK():
		state, msg = store.RolloutFailed, rep.Err
		if msg == "" && err != nil {
			msg = err.Error()
		}
		if msg == "" {
			msg = "more nodes failed than max_fail allows"
		}
		if strings.HasPrefix(rep.Err, "canary aborted by ") {
			state = store.RolloutAborted // an operator's abort, not a failed check
		}
	}
	var report []byte
	if rep != nil {
		report, _ = json.Marshal(rep)
	}
	// The environment's release first, then the rollout's end: whoever
	// sees the rollout ended sees the release it made current, and
	// Desired (which reads the running rollout before the current
	// release) never sends a node back to the previous release between.
	if state == store.RolloutSucceeded {
		if serr := c.st.SetCurrentRelease(bg, run.app, run.env, run.row.ReleaseID); serr != nil {
			run.log.Warn("record the environment's current release", "rollout", run.id, "err", serr)
		}
	}
	if serr := run.save(bg, func(r *store.Rollout) {
		r.State, r.Error, r.EndedAt, r.Report = state, msg, c.clock.Now(), report
	}); serr != nil {
		run.log.Warn("record the rollout's outcome", "rollout", run.id, "err", serr)
		return
	}
	run.cancel() // stops the lease's renewal before it is released
	if rerr := c.Release(bg, run.lease); rerr != nil {
		run.log.Warn("release the environment's lease", "rollout", run.id, "err", rerr)
	}
	if _, berr := c.st.BumpVersion(bg, run.app, run.env); berr != nil {
		run.log.Warn("bump the desired-state version", "app", run.app, "env", run.env, "err", berr)
	}
	run.log.Info("rollout ended", "rollout", run.id, "app", run.app, "env", run.env, "state", state, "err", msg)
}

// nodeReported tells the run of row's rollout on this replica, if any,
// what the report path (StartUpgrade, Report) just wrote to row: the
// store changed it.
func (c *Control) nodeReported(row store.RolloutNode) {
	c.boardsMu.Lock()
	b := c.boards[row.RolloutID]
	c.boardsMu.Unlock()
	if b != nil {
		b.reported(row, c.clock.Now())
	}
}
