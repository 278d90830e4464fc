package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/store"
)

// agentTarget is one registered node of a server-run rollout as a
// rollout.Target: each operation the strategy code asks of it becomes a
// task of the node's RolloutNode row (prepare, hooks, activate, rollback),
// handed to the agent through its desired state, and the target waits
// until the agent reports the task done or failed, or stops reporting for
// NodeTimeout.
//
// Every operation is idempotent from the recorded row, so a rollout taken
// over by another runner and run again from its start repeats nothing: a
// task already done (or one the node moved past) returns its recorded
// result, a task in progress is handed out again under the new fencing
// token with the same Task number (the agent does the same work once) and
// waited on.
type agentTarget struct {
	run  *rolloutRun
	node store.Node
	host *config.Host
	// before is the engine release the node ran when the rollout began:
	// where a rollback of this rollout sends it.
	before string
}

func (t *agentTarget) Name() string       { return t.node.Name }
func (t *agentTarget) Host() *config.Host { return t.host }

// Lock implements rollout.Target: the environment's deploy lease is the
// lock of every node; its Lost closes when the runner loses the lease.
func (t *agentTarget) Lock(ctx context.Context, c rollout.Call, holder lock.Holder) (rollout.Lease, error) {
	return envLease{t.run}, nil
}

type envLease struct{ run *rolloutRun }

func (l envLease) Token() int64          { return l.run.token }
func (l envLease) Lost() <-chan struct{} { return l.run.lost }
func (l envLease) Release() error        { return nil } // the runner releases the environment's lease

// Prepare implements rollout.Target.
func (t *agentTarget) Prepare(ctx context.Context, c rollout.Call, runOnce []string, keepFor time.Duration) (*release.Record, error) {
	want := store.RolloutNode{Action: api.ActionPrepare, RunOnce: t.run.plan.runOnceNames(runOnce)}
	if len(want.RunOnce) > 0 {
		want.Stage = config.StagePrepare
	}
	if _, err := t.task(ctx, want, c.Wave); err != nil {
		return nil, err
	}
	return &release.Record{ID: c.Release, Commit: c.Commit, Spec: c.Spec, Status: release.StatusPrepared}, nil
}

// RunHooks implements rollout.Target.
func (t *agentTarget) RunHooks(ctx context.Context, c rollout.Call, stage string, hooks []string) error {
	_, err := t.task(ctx, store.RolloutNode{Action: api.ActionHooks, Stage: stage, RunOnce: t.run.plan.runOnceNames(hooks)}, c.Wave)
	return err
}

// Activate implements rollout.Target. With c.Ready (all-at-once) the
// server holds the node before it hands out the task: Ready returns once
// every node is prepared and ready, so no node switches before all could.
func (t *agentTarget) Activate(ctx context.Context, c rollout.Call, keep int) (*release.Serving, error) {
	want := store.RolloutNode{Action: api.ActionActivate}
	if c.Ready != nil {
		if cur, ok := t.run.board.get(t.node.Name); !ok || compareTask(cur, want) < 0 {
			// Not handed out yet (after a takeover it may be: then the
			// node is past the barrier and is only waited on).
			if !c.Ready() {
				return nil, &rollout.NodeError{Msg: "not switched: the switch was called off because another node failed before its switch"}
			}
		}
	}
	row, err := t.task(ctx, want, c.Wave)
	if err != nil {
		return nil, err
	}
	if c.Events != nil {
		c.Events(release.Event{Kind: release.EventStepEnd, Step: "switch", Time: time.Now()})
	}
	sv := row.Serving
	if sv == "" {
		sv = c.Release
	}
	return &release.Serving{Release: sv, Healthy: true}, nil
}

// Rollback implements rollout.Target.
func (t *agentTarget) Rollback(ctx context.Context, c rollout.Call, to string) (*release.Serving, error) {
	row, err := t.task(ctx, store.RolloutNode{Action: api.ActionRollback, To: to}, c.Wave)
	if err != nil {
		return nil, err
	}
	sv := row.Serving
	if sv == "" {
		sv = to
	}
	return &release.Serving{Release: sv, Healthy: true}, nil
}

// Releases implements rollout.Target: inside a rollout, Active is the
// release the node ran when the rollout began (what a rollback of this
// rollout goes back to, also when the rollout is continued after a
// takeover and the node moved meanwhile).
func (t *agentTarget) Releases(ctx context.Context, c rollout.Call) (*rollout.HostReleases, error) {
	return &rollout.HostReleases{Host: t.node.Name, Active: t.before, Target: t.before}, nil
}

// Canary implements rollout.Target: the paused canary is the rollout's
// row (state paused), and an operator's decision is its Decision
// (Control.Decide), the same for every node of the rollout.
func (t *agentTarget) Canary(ctx context.Context, c rollout.Call, action string, rec *release.Canary) (*release.Canary, error) {
	switch action {
	case "pause":
		if err := t.run.setState(store.RolloutPaused); err != nil {
			return nil, err
		}
		return rec, nil
	case "clear":
		return nil, t.run.setState(store.RolloutRunning)
	case "status":
		ro, err := t.run.c.st.GetRollout(ctx, t.run.id)
		if err != nil {
			return nil, err
		}
		out := &release.Canary{Release: c.Release, Decision: ro.Decision}
		if ro.Decision != "" {
			out.By = t.run.c.decidedBy(ctx, ro.ID)
		}
		return out, nil
	case release.CanaryPromote, release.CanaryAbort:
		if _, err := t.run.c.st.DecideRollout(ctx, t.run.id, action); err != nil {
			return nil, err
		}
		return &release.Canary{Release: c.Release, Decision: action, By: c.By}, nil
	}
	return nil, &rollout.NodeError{Msg: "unknown canary action " + action}
}

// taskRank orders what a rollout asks of one node: prepare, the
// before_activate run_once hooks, activate, a rollback, the after_activate
// run_once hooks. A node whose row shows a later task has done the earlier
// ones (the strategy code asks for them in this order).
func taskRank(n store.RolloutNode) int {
	switch n.Action {
	case api.ActionPrepare:
		return 1
	case api.ActionHooks:
		switch n.Stage {
		case config.StagePrepare:
			return 1
		case config.StageAfterActivate:
			return 5
		}
		return 2
	case api.ActionActivate:
		return 3
	case api.ActionRollback:
		return 4
	}
	return 0
}

func sameTask(a, b store.RolloutNode) bool {
	return a.Action == b.Action && a.Stage == b.Stage && a.To == b.To && slices.Equal(a.RunOnce, b.RunOnce)
}

// compareTask says whether the recorded row cur is the task want (0), a
// task before it (-1) or after it (1).
func compareTask(cur, want store.RolloutNode) int {
	switch {
	case sameTask(cur, want):
		return 0
	case taskRank(cur) < taskRank(want):
		return -1
	case taskRank(cur) > taskRank(want):
		return 1
	}
	return -1 // the same step with other hooks: a new task
}

func finished(n store.RolloutNode) bool {
	return n.State == store.NodeDone || n.State == store.NodeFailed
}

// task has the node do want (Action, Stage, RunOnce, To) and returns its
// row once done; a failed task is a *rollout.NodeError, a node that stops
// reporting an error that says so.
func (t *agentTarget) task(ctx context.Context, want store.RolloutNode, wave int) (store.RolloutNode, error) {
	if err := ctx.Err(); err != nil {
		return store.RolloutNode{}, err
	}
	name := t.node.Name
	want.RolloutID, want.Node, want.NodeID, want.Token, want.Task = t.run.id, name, t.node.ID, t.run.token, 1
	cur, ok := t.run.board.get(name)
	if ok {
		switch compareTask(cur, want) {
		case 0:
			if finished(cur) {
				return t.result(cur)
			}
			// In progress under an earlier runner: hand the same task
			// out again under this runner's token.
			want.Task, want.State = cur.Task, cur.State
		case 1:
			if want.Action == api.ActionActivate && cur.Action == api.ActionRollback && cur.State == store.NodeDone {
				return store.RolloutNode{}, &rollout.NodeError{Msg: fmt.Sprintf("activated, then switched back to %s by this rollout before it was taken over", cur.To),
					Serving: &release.Serving{Release: cur.Serving, Healthy: cur.Serving != ""}}
			}
			return store.RolloutNode{Node: name, State: store.NodeDone, Serving: cur.Serving}, nil
		default:
			want.Task = cur.Task + 1
		}
	}
	var handed *assigned
	if !ok || cur.Token != want.Token || want.Task != cur.Task {
		a, err := t.run.assign.assign(ctx, want, wave)
		if err != nil {
			return store.RolloutNode{}, err
		}
		handed = &a
	}
	return t.wait(ctx, want, handed)
}

// wait waits until the node finished task want.Task, or stopped reporting
// on it for NodeTimeout (measured from its last report, or from when the
// task was handed out). handed, when this target just handed the task out,
// is its row on the board and the channel that watches it: a wave's
// thousands of targets start waiting without each taking the board's lock.
func (t *agentTarget) wait(ctx context.Context, want store.RolloutNode, handed *assigned) (store.RolloutNode, error) {
	name := t.node.Name
	timeout := t.run.opts.NodeTimeout
	for {
		var cur store.RolloutNode
		var changed <-chan struct{}
		if handed != nil {
			cur, changed, handed = handed.row, handed.changed, nil
		} else {
			cur, _, changed = t.run.board.watch(name)
		}
		last := cur.UpdatedAt
		switch {
		case cur.Task > want.Task:
			return store.RolloutNode{}, fmt.Errorf("node %s: its task %d was replaced by task %d: another runner took this rollout over", name, want.Task, cur.Task)
		case cur.Task < want.Task:
			last = t.run.board.assignedAt(name)
		case finished(cur):
			return t.result(cur)
		}
		left := time.Until(last.Add(timeout))
		if left <= 0 && !t.run.board.reread(ctx, name, cur) {
			return store.RolloutNode{}, t.stoppedReporting(ctx, want, cur)
		}
		timer := time.NewTimer(left)
		select {
		case <-changed:
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return store.RolloutNode{}, fmt.Errorf("interrupted while %s did its %s task: %w", name, want.Action, ctx.Err())
		}
		timer.Stop()
	}
}

// stoppedReporting fails task want of a node that said nothing for
// NodeTimeout, and records why in its row (unless the lease is lost).
func (t *agentTarget) stoppedReporting(ctx context.Context, want, cur store.RolloutNode) error {
	what := "did not pick up its " + want.Action + " task"
	if cur.Task == want.Task && cur.State == store.NodeWorking {
		what = "stopped reporting on its " + want.Action + " task"
		if cur.Step != "" {
			what += " (last at step " + cur.Step + ")"
		}
	}
	err := fmt.Errorf("node %s %s for %s (the server's --node-timeout); check the agent on %s (drover status) and its logs", t.node.Name, what, t.run.opts.NodeTimeout, t.node.Name)
	if !t.run.isLost() {
		rec := want
		rec.State, rec.Step, rec.Error = store.NodeFailed, cur.Step, err.Error()
		bg := context.WithoutCancel(ctx)
		if _, werr := t.run.c.st.ReportRolloutNode(bg, rec); werr != nil {
			t.run.log.Warn("record a node that stopped reporting", "rollout", t.run.id, "node", t.node.Name, "err", werr)
		} else if _, werr := t.run.c.st.BumpVersion(bg, t.run.app, t.run.env); werr != nil {
			// The node leaves the rollout (Desired gives it the last
			// completed release): every replica's cache must see it.
			t.run.log.Warn("announce a node that stopped reporting", "rollout", t.run.id, "node", t.node.Name, "err", werr)
		}
	}
	return err
}

// result is the outcome of a finished row: nil for done, a
// *rollout.NodeError for failed.
func (t *agentTarget) result(row store.RolloutNode) (store.RolloutNode, error) {
	if row.State == store.NodeDone {
		return row, nil
	}
	ne := &rollout.NodeError{Msg: row.Error, Step: row.Step}
	if ne.Msg == "" {
		ne.Msg = fmt.Sprintf("%s failed on %s", row.Action, t.node.Name)
		if row.Step != "" {
			ne.Msg += " at step " + row.Step
		}
	}
	if row.Serving != "" {
		ne.Serving = &release.Serving{Release: row.Serving, Healthy: true}
	}
	return row, ne
}

// nodeBoard is what a run knows of its nodes' rows, and each target waits
// on it. A report recorded on this replica is put on the board at once
// (reported); one reader reads every node's row from the store for the
// reports that land on other replicas, every Poll, or less often for a
// large rollout (see loop).
type nodeBoard struct {
	st   store.Store
	id   int64
	poll time.Duration
	kick chan struct{}

	mu       sync.Mutex
	rows     map[string]store.RolloutNode
	assigned map[string]time.Time     // when this run handed out each node's task
	waits    map[string]chan struct{} // closed when that node's row changes
}

func newNodeBoard(st store.Store, id int64, poll time.Duration) *nodeBoard {
	return &nodeBoard{st: st, id: id, poll: poll, kick: make(chan struct{}, 1), rows: map[string]store.RolloutNode{}, assigned: map[string]time.Time{}, waits: map[string]chan struct{}{}}
}

// refresh reads every row of the rollout. A row older than the task this
// run handed out (a read that raced the assignment) does not replace it.
func (b *nodeBoard) refresh(ctx context.Context) error {
	rows, err := b.st.ListRolloutNodes(ctx, b.id)
	if err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range rows {
		if old, ok := b.rows[r.Node]; !ok || news(old, r) {
			b.set(r)
		}
	}
	return nil
}

// news says whether r, read from the store, tells more than the board's
// row old: a later task, or a change to the same task, unless r is older
// than old (the read began before a result reported here was written; a
// finished task never becomes unfinished again).
func news(old, r store.RolloutNode) bool {
	return r.Task >= old.Task && rowChanged(old, r) && !behind(old, r)
}

// behind says whether r is an older state of old's task: old is finished
// and r is not.
func behind(old, r store.RolloutNode) bool {
	return old.Task == r.Task && finished(old) && !finished(r)
}

// set puts r on the board and wakes the node's target. b.mu is held.
func (b *nodeBoard) set(r store.RolloutNode) {
	b.rows[r.Node] = r
	// Only the node's own target wakes: with a thousand nodes reporting,
	// waking every target on every read cost more than the read.
	if ch := b.waits[r.Node]; ch != nil {
		close(ch)
		delete(b.waits, r.Node)
	}
}

// reread reads name's row from the store before its target gives up on
// it: a report on another replica reaches the board only at its next read.
// It reports whether the row changed since cur (then it is on the board,
// and the target waits on).
func (b *nodeBoard) reread(ctx context.Context, name string, cur store.RolloutNode) bool {
	r, err := b.st.GetRolloutNode(ctx, b.id, name)
	if err != nil || !news(cur, r) {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.set(r)
	return true
}

// reported puts on the board what a report on this replica just wrote to
// r's row (State, Step, Error, Serving, UpgradeID of task r.Task) at at,
// instead of reading every node's row again: ten thousand agents
// reporting made the board read ten thousand rows every boardGap. A row
// the board does not hold at that task yet is read from the store.
func (b *nodeBoard) reported(r store.RolloutNode, at time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	cur, ok := b.rows[r.Node]
	switch {
	case !ok || cur.Task < r.Task:
		b.wake()
		return
	case cur.Task > r.Task || behind(cur, r):
		return // as the store, which changed nothing for such a report
	}
	cur.State, cur.Step, cur.Error, cur.Serving, cur.UpgradeID, cur.UpdatedAt = r.State, r.Step, r.Error, r.Serving, r.UpgradeID, at
	b.set(cur)
}

// rowChanged says whether b is news after a: every report moves UpdatedAt.
func rowChanged(a, b store.RolloutNode) bool {
	return a.Task != b.Task || a.State != b.State || a.Token != b.Token || a.Step != b.Step ||
		a.UpgradeID != b.UpgradeID || a.Serving != b.Serving || a.Error != b.Error || !a.UpdatedAt.Equal(b.UpdatedAt)
}

// loop refreshes the board every poll, or when kicked, until ctx ends.
//
// A read of a large rollout's rows is not cheap (60 ms for ten thousand on
// SQLite, more on a busy server): the next read waits at least boardShare
// times as long as the last took, so the reader takes at most a tenth of a
// CPU. Reports landing in a burst are read together: reads are at least
// boardGap apart.
func (b *nodeBoard) loop(ctx context.Context, log func(error)) {
	last, took := time.Now(), time.Duration(0)
	for {
		timer := time.NewTimer(max(b.poll, min(boardShare*took, boardMaxGap)))
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-b.kick:
			timer.Stop()
			if wait := boardGap - time.Since(last); wait > 0 {
				gap := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					gap.Stop()
					return
				case <-gap.C:
				}
			}
		}
		last = time.Now()
		if err := b.refresh(ctx); err != nil && ctx.Err() == nil {
			log(err)
		}
		took = time.Since(last)
	}
}

const (
	boardGap    = 20 * time.Millisecond // the least time between two reads of a rollout's nodes
	boardShare  = 10                    // the least time between two reads, in times the last read took
	boardMaxGap = 2 * time.Second       // but at most this long
)

// wake asks for a refresh now.
func (b *nodeBoard) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

func (b *nodeBoard) get(name string) (store.RolloutNode, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.rows[name]
	return r, ok
}

// watch returns name's row and a channel closed when it changes.
func (b *nodeBoard) watch(name string) (store.RolloutNode, bool, <-chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r, ok := b.rows[name]
	return r, ok, b.waitOn(name)
}

// waitOn returns the channel closed when name's row changes. b.mu is held.
func (b *nodeBoard) waitOn(name string) chan struct{} {
	ch := b.waits[name]
	if ch == nil {
		ch = make(chan struct{})
		b.waits[name] = ch
	}
	return ch
}

// put records rows this run just handed out and returns each as the board
// holds it, with the channel closed when it changes (as watch).
func (b *nodeBoard) put(rows []store.RolloutNode, at time.Time) []assigned {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]assigned, len(rows))
	for i, r := range rows {
		r.UpdatedAt = at
		b.rows[r.Node], b.assigned[r.Node] = r, at
		out[i] = assigned{row: r, changed: b.waitOn(r.Node)}
	}
	return out
}

func (b *nodeBoard) assignedAt(name string) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.assigned[name]
}

// assigner hands out tasks: the requests of targets that arrive while a
// write is under way go together in the next one (one transaction, one
// version bump for an all-at-once activation of every node).
type assigner struct {
	run *rolloutRun

	grew chan struct{} // signalled when a request joins pending

	mu      sync.Mutex
	pending []assignReq
	wave    int // the largest Call.Wave among pending (0: not known)
	busy    bool
}

type assignReq struct {
	row  store.RolloutNode
	done chan assigned
}

// assigned is what the assigner answers a target: its row as the board
// holds it and a channel closed when the row changes (nodeBoard.put), or
// why the task was not handed out.
type assigned struct {
	row     store.RolloutNode
	changed <-chan struct{}
	err     error
}

// Requests of a wave (an all-at-once prepare starts every node's target
// together) trickle in over milliseconds, more on a busy server: the
// writer waits for the whole wave (Call.Wave), or while requests keep
// coming when the size is not known, so the wave is one write and one
// wake-up of the fleet's long-polls instead of a small first batch whose
// agents' StartUpgrade flood delays the rest.
const (
	assignQuiet  = 5 * time.Millisecond   // size not known, no new request for this long: write
	assignGather = 250 * time.Millisecond // size not known: write after this long whatever came
	// A known wave still short of its size: write when none joined for
	// waveStall (its other nodes will not ask: they failed, or their task
	// is done already), at most after waveGather.
	waveStall  = 100 * time.Millisecond
	waveGather = 2 * time.Second
)

// gather waits until the wave is complete (its known size asked), or no
// request joined for assignQuiet (size not known) or waveStall (known); at
// most assignGather or waveGather.
func (a *assigner) gather() {
	start := time.Now()
	n, quiet := -1, false
	for {
		a.mu.Lock()
		m, wave := len(a.pending), a.wave
		a.mu.Unlock()
		gap, left := assignQuiet, assignGather-time.Since(start)
		if wave > 0 {
			gap, left = waveStall, waveGather-time.Since(start)
		}
		switch {
		case left <= 0, wave > 0 && m >= wave:
			return
		case quiet && m == n:
			return // none joined for gap
		}
		n = m
		timer := time.NewTimer(min(left, gap))
		select {
		case <-a.grew: // (or a signal left from before: looked at again)
			quiet = false
		case <-timer.C:
			quiet = true
		}
		timer.Stop()
	}
}

// assign writes row (fenced by the run's token), bumps the environment's
// version so that agents' long-polls wake on every replica, and records
// the row on the board. wave is the operation's Call.Wave.
func (a *assigner) assign(ctx context.Context, row store.RolloutNode, wave int) (assigned, error) {
	req := assignReq{row: row, done: make(chan assigned, 1)}
	a.mu.Lock()
	a.pending = append(a.pending, req)
	a.wave = max(a.wave, wave)
	select {
	case a.grew <- struct{}{}:
	default:
	}
	if !a.busy {
		a.busy = true
		go a.flush()
	}
	a.mu.Unlock()
	select {
	case a := <-req.done:
		return a, a.err
	case <-ctx.Done():
		return assigned{}, ctx.Err()
	}
}

func (a *assigner) flush() {
	ctx := context.WithoutCancel(a.run.ctx)
	for {
		a.gather()
		a.mu.Lock()
		batch := a.pending
		a.pending, a.wave = nil, 0
		if len(batch) == 0 {
			a.busy = false
			a.mu.Unlock()
			return
		}
		a.mu.Unlock()
		rows := make([]store.RolloutNode, len(batch))
		for i, r := range batch {
			rows[i] = r.row
		}
		run := a.run
		err := run.ctx.Err()
		base := run.c.desired.peek(run.app, run.env)
		if err == nil {
			err = run.c.st.AssignRolloutNodes(ctx, rows)
		}
		var handed []assigned
		if err == nil {
			handed = run.board.put(rows, time.Now())
			if v, berr := run.c.st.BumpVersion(ctx, run.app, run.env); berr != nil {
				run.log.Warn("bump the desired-state version", "app", run.app, "env", run.env, "err", berr)
			} else {
				run.c.desired.advance(run.app, run.env, base, v, run.answer, run.token, rows)
			}
		} else if errors.Is(err, store.ErrLeaseLost) {
			run.loseLease(err)
		}
		if err != nil {
			err = fmt.Errorf("hand out the task: %w", err)
		}
		for i, r := range batch {
			if err != nil {
				r.done <- assigned{err: err}
			} else {
				r.done <- handed[i]
			}
		}
	}
}
