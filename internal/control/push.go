package control

// Push deploys in the queue: a `drover deploy` that knows a control server
// takes its environment's lease here, so push deploys and server-run
// rollouts of one environment run one after the other. Its rollout (kind
// push) records who deploys what, and each host's progress as the deployer
// reports it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/store"
)

// Limits of a push deploy's request.
const (
	maxPushHosts = 10000
	maxPushText  = 1000 // holder, release, strategy, phase, a host name
	maxPushError = 64 << 10
)

// What a push rollout's Error says when its deployer went away.
const (
	// ErrTextStoppedReporting: the deployer held the lease and stopped
	// renewing it (killed, its machine or network gone); the next deploy
	// took the lock over.
	ErrTextStoppedReporting = "deployer stopped reporting: its lease lapsed and the next deploy took the lock; the hosts may be part way through (drover releases ENV shows them; drover resume ENV finishes)"
	// ErrTextStoppedWaiting: the deployer stopped asking while it waited,
	// so its place in the queue lapsed.
	ErrTextStoppedWaiting = "deployer stopped waiting: it left the queue without a word (killed, or lost its connection); nothing was deployed"
	errTextLeft           = "the deployer left the queue (interrupted while it waited); nothing was deployed"
)

// pushPlan is what a push rollout's Plan holds: the hosts the deployer
// named, recorded as the rollout's nodes once it holds the lease.
type pushPlan struct {
	Hosts []string `json:"hosts"`
}

// pushNodeAction is the action of a push host before the deployer
// reports on it: it waits for the deploy's first phase.
const pushNodeAction = "lock"

func checkPush(req api.BeginPush) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: push deploy: %s", store.ErrInvalid, fmt.Sprintf(format, args...))
	}
	switch {
	case req.App == "" || req.Env == "":
		return bad("app and env are required")
	case req.Holder == "":
		return bad("holder is required (who deploys: user@machine)")
	case len(req.Holder) > maxPushText || len(req.Release) > maxPushText || len(req.Strategy) > maxPushText:
		return bad("holder, release and strategy are at most %d bytes", maxPushText)
	case len(req.Hosts) == 0:
		return bad("hosts is empty: name the hosts the deploy changes")
	case len(req.Hosts) > maxPushHosts:
		return bad("%d hosts; at most %d", len(req.Hosts), maxPushHosts)
	}
	seen := map[string]bool{}
	for _, h := range req.Hosts {
		if h == "" || len(h) > maxPushText {
			return bad("host name %q: give 1 to %d bytes", h, maxPushText)
		}
		if seen[h] {
			return bad("host %s is named twice", h)
		}
		seen[h] = true
	}
	return nil
}

// BeginPush queues a push deploy; the answer is its rollout (kind push):
// running with its Token when the lease was free, else queued with its
// Position and the current holder. The ticket is not resumable: when the
// deployer stops renewing, its lease lapses and the next deploy proceeds.
// The hosts become the rollout's nodes once it holds the lease.
func (c *Control) BeginPush(ctx context.Context, req api.BeginPush) (*api.Rollout, error) {
	if err := checkPush(req); err != nil {
		return nil, err
	}
	plan, err := json.Marshal(pushPlan{Hosts: req.Hosts})
	if err != nil {
		return nil, err
	}
	t, err := c.Enqueue(ctx, req.App, req.Env, req.Holder, EnqueueOptions{Supersede: req.Supersede})
	if err != nil {
		return nil, err
	}
	r, err := c.st.CreateRollout(ctx, store.Rollout{App: req.App, Env: req.Env, Kind: store.RolloutPush, Release: req.Release, TicketID: t.ID,
		Strategy: req.Strategy, Plan: plan, State: store.RolloutQueued, Runner: req.Holder, CreatedBy: req.Holder, CreatedAt: c.clock.Now()})
	if err != nil {
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = c.Cancel(bg, t.ID)
		return nil, fmt.Errorf("control: record the push deploy of %s/%s: %w", req.App, req.Env, err)
	}
	if req.Supersede {
		c.reapPushes(ctx, req.App, req.Env)
	}
	return c.WaitPush(ctx, r.ID, 0)
}

// pushRollout returns push rollout id and its ticket.
func (c *Control) pushRollout(ctx context.Context, id int64) (store.Rollout, store.Ticket, error) {
	r, err := c.st.GetRollout(ctx, id)
	if err != nil {
		return r, store.Ticket{}, fmt.Errorf("control: push rollout %d: %w", id, err)
	}
	if r.Kind != store.RolloutPush {
		return r, store.Ticket{}, fmt.Errorf("control: rollout %d is a %s rollout, not a push deploy: %w", id, r.Kind, store.ErrNotFound)
	}
	t, err := c.st.GetTicket(ctx, r.TicketID)
	if err != nil {
		return r, t, fmt.Errorf("control: ticket %d of push rollout %d: %w", r.TicketID, id, err)
	}
	return r, t, nil
}

// WaitPush waits up to wait for push rollout id to hold its environment's
// lease: State running with its Token, or still queued with its Position.
// Each call proves the waiter alive. When the ticket ended while waiting
// (superseded, cancelled, or expired because nobody asked for it), the
// answer is the rollout in its final state with the reason in Error.
func (c *Control) WaitPush(ctx context.Context, id int64, wait time.Duration) (*api.Rollout, error) {
	r, t, err := c.pushRollout(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State.Done() {
		return c.pushAPI(r, t, store.Lease{}), nil
	}
	if t.State == store.TicketQueued {
		// Deploys ahead that went away end before this one waits on them.
		c.reapPushes(ctx, r.App, r.Env)
	}
	timer := c.clock.NewTimer(wait)
	defer timer.Stop()
	held, ok, err := c.acquire(ctx, &t, timer.C())
	switch {
	case errors.Is(err, ErrSuperseded), errors.Is(err, ErrCancelled), errors.Is(err, ErrLeaseLost):
		c.reapPushes(ctx, r.App, r.Env)
		return c.reread(ctx, id)
	case err != nil:
		return nil, err
	case !ok:
		// The answer shows where it stands now.
		if cur, gerr := c.st.GetTicket(ctx, t.ID); gerr == nil {
			t = cur
		}
		return c.pushAPI(r, t, held), nil
	}
	if r.State == store.RolloutQueued {
		if err := c.startPush(ctx, &r, held); err != nil {
			return nil, err
		}
	}
	// The holder this ticket replaced, if it lapsed, ends now.
	c.reapPushes(ctx, r.App, r.Env)
	return c.pushAPI(r, t, held), nil
}

// reread answers rollout id as it stands.
func (c *Control) reread(ctx context.Context, id int64) (*api.Rollout, error) {
	r, t, err := c.pushRollout(ctx, id)
	if err != nil {
		return nil, err
	}
	return c.pushAPI(r, t, store.Lease{}), nil
}

// startPush records that push rollout r got lease l: its hosts become its
// nodes (fenced by the lease's token) and it runs.
func (c *Control) startPush(ctx context.Context, r *store.Rollout, l store.Lease) error {
	var plan pushPlan
	if err := json.Unmarshal(r.Plan, &plan); err != nil {
		return fmt.Errorf("control: push rollout %d: its plan: %w", r.ID, err)
	}
	nodes := make([]store.RolloutNode, len(plan.Hosts))
	for i, h := range plan.Hosts {
		nodes[i] = store.RolloutNode{RolloutID: r.ID, Node: h, Task: 1, Action: pushNodeAction, Token: l.Token, State: store.NodeAssigned}
	}
	if err := c.st.AssignRolloutNodes(ctx, nodes); err != nil {
		return fmt.Errorf("control: push rollout %d: record its hosts: %w", r.ID, err)
	}
	r.State, r.StartedAt = store.RolloutRunning, c.clock.Now()
	if err := c.st.UpdateRollout(ctx, *r); err != nil {
		return fmt.Errorf("control: push rollout %d: %w", r.ID, err)
	}
	return nil
}

// reapPushes ends app/env's push rollouts whose deployer went away: the
// ticket of a running one expired (its lease lapsed and the next deploy
// took it over) or that of a queued one lapsed, was superseded or
// cancelled. It is lazy: WaitPush, BeginPush, Rollouts and Rollout call
// it. Failures are left for the next call.
func (c *Control) reapPushes(ctx context.Context, app, env string) {
	rs, err := c.st.ListRollouts(ctx, store.RolloutFilter{App: app, Env: env, States: []store.RolloutState{store.RolloutQueued, store.RolloutRunning}, Limit: 1000})
	if err != nil {
		return
	}
	for _, r := range rs {
		if r.Kind != store.RolloutPush {
			continue
		}
		t, err := c.st.GetTicket(ctx, r.TicketID)
		if err != nil {
			continue
		}
		state, msg := pushEnd(r.State, t)
		if state == "" {
			continue
		}
		// Read again: the deployer may have reported its outcome meanwhile.
		if r, err = c.st.GetRollout(ctx, r.ID); err != nil || r.State.Done() {
			continue
		}
		r.State, r.Error, r.EndedAt = state, msg, c.clock.Now()
		_ = c.st.UpdateRollout(ctx, r)
	}
}

// pushEnd says how a push rollout in state ends given its ticket: "" while
// the ticket is alive.
func pushEnd(state store.RolloutState, t store.Ticket) (store.RolloutState, string) {
	switch t.State {
	case store.TicketExpired:
		if state == store.RolloutRunning {
			return store.RolloutFailed, ErrTextStoppedReporting
		}
		return store.RolloutCancelled, ErrTextStoppedWaiting
	case store.TicketSuperseded:
		return store.RolloutSuperseded, fmt.Sprintf("superseded by a newer deploy (ticket %d) while it waited; nothing was deployed", t.SupersededBy)
	case store.TicketCancelled:
		return store.RolloutCancelled, "cancelled while it waited; nothing was deployed"
	}
	return "", ""
}

// PushProgress records a push deploy's progress and renews its lease;
// ErrLeaseLost when the lease is no longer its own (token differs). With
// p.Done it records the outcome and frees the lease.
//
// Each host is one rollout node whose Action is the phase the deployer
// reports it in (lock, prepare, run_once, activate...); a new phase is a
// new task of that node. Token 0 with p.Done leaves the queue: the
// deployer was interrupted before it deployed anything.
func (c *Control) PushProgress(ctx context.Context, id, token int64, p api.PushProgress) (*api.Rollout, error) {
	if err := checkProgress(p); err != nil {
		return nil, err
	}
	r, t, err := c.pushRollout(ctx, id)
	if err != nil {
		return nil, err
	}
	if token == 0 {
		if !p.Done {
			return nil, fmt.Errorf("%w: push rollout %d: progress needs the lease's token (?token=N from wait)", store.ErrInvalid, id)
		}
		return c.leavePush(ctx, r, t)
	}
	l, err := c.Renew(ctx, store.Lease{App: r.App, Env: r.Env, TicketID: t.ID, Token: token})
	if err != nil {
		if errors.Is(err, ErrLeaseLost) {
			c.reapPushes(ctx, r.App, r.Env)
			return nil, fmt.Errorf("%w: %s", ErrLeaseLost, c.holderText(ctx, r.App, r.Env))
		}
		return nil, err
	}
	if r.State.Done() {
		// Ended meanwhile (cancelled through the API): the deploy stops.
		_ = c.Release(ctx, l)
		return nil, fmt.Errorf("push rollout %d of %s/%s ended (%s: %s): %w", id, r.App, r.Env, r.State, r.Error, ErrLeaseLost)
	}
	if err := c.pushNodes(ctx, r.ID, token, p.Nodes); err != nil {
		return nil, err
	}
	if p.Phase != "" {
		r.Phase = p.Phase
	}
	if p.Done {
		r.State, r.Error, r.EndedAt, r.Report = store.RolloutSucceeded, p.Error, c.clock.Now(), p.Report
		if !p.OK {
			r.State = store.RolloutFailed
		}
	}
	if err := c.st.UpdateRollout(ctx, r); err != nil {
		return nil, fmt.Errorf("control: push rollout %d: %w", id, err)
	}
	if p.Done {
		if err := c.Release(ctx, l); err != nil {
			return nil, err
		}
		l = store.Lease{}
		t.State = store.TicketDone
	}
	return c.pushAPI(r, t, l), nil
}

func checkProgress(p api.PushProgress) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: push progress: %s", store.ErrInvalid, fmt.Sprintf(format, args...))
	}
	if len(p.Phase) > maxPushText || len(p.Error) > maxPushError {
		return bad("phase is at most %d bytes, error %d", maxPushText, maxPushError)
	}
	if len(p.Nodes) > maxPushHosts {
		return bad("%d nodes; at most %d", len(p.Nodes), maxPushHosts)
	}
	for _, n := range p.Nodes {
		if !slices.Contains([]string{store.NodeAssigned, store.NodeWorking, store.NodeDone, store.NodeFailed}, n.State) {
			return bad("host %s: state %q: use assigned, working, done or failed", n.Node, n.State)
		}
		if len(n.Action) > maxPushText || len(n.Step) > maxPushText || len(n.Serving) > maxPushText || len(n.Error) > maxPushError {
			return bad("host %s: action, step and serving are at most %d bytes, error %d", n.Node, maxPushText, maxPushError)
		}
	}
	return nil
}

// pushNodes records hosts' progress: a host in a new phase gets a new task
// (fenced by token), then every host's state, step and error. Hosts the
// deploy did not name at BeginPush are ignored.
func (c *Control) pushNodes(ctx context.Context, id, token int64, nodes []api.RolloutNode) error {
	if len(nodes) == 0 {
		return nil
	}
	cur, err := c.st.ListRolloutNodes(ctx, id)
	if err != nil {
		return fmt.Errorf("control: push rollout %d: %w", id, err)
	}
	byName := map[string]store.RolloutNode{}
	for _, n := range cur {
		byName[n.Node] = n
	}
	var assign []store.RolloutNode
	for _, n := range nodes {
		old, ok := byName[n.Node]
		if !ok || n.Action == "" || n.Action == old.Action {
			continue
		}
		next := store.RolloutNode{RolloutID: id, Node: n.Node, Task: old.Task + 1, Action: n.Action, Token: token, State: store.NodeWorking}
		assign = append(assign, next)
		byName[n.Node] = next
	}
	if err := c.st.AssignRolloutNodes(ctx, assign); err != nil {
		return fmt.Errorf("control: push rollout %d: %w", id, err)
	}
	for _, n := range nodes {
		old, ok := byName[n.Node]
		if !ok {
			continue
		}
		if _, err := c.st.ReportRolloutNode(ctx, store.RolloutNode{RolloutID: id, Node: n.Node, Task: old.Task, State: n.State, Step: n.Step, Error: n.Error, Serving: n.Serving}); err != nil {
			return fmt.Errorf("control: push rollout %d: %w", id, err)
		}
	}
	return nil
}

// leavePush takes a push deploy out of the queue before it deployed
// anything: its ticket is cancelled, or its lease freed if it got it
// meanwhile; the rollout ends cancelled.
func (c *Control) leavePush(ctx context.Context, r store.Rollout, t store.Ticket) (*api.Rollout, error) {
	if r.State.Done() {
		return c.pushAPI(r, t, store.Lease{}), nil
	}
	if r.State == store.RolloutRunning && r.Phase != "" {
		return nil, fmt.Errorf("%w: push rollout %d runs (phase %s): end it with its token", store.ErrInvalid, r.ID, r.Phase)
	}
	err := c.Cancel(ctx, t.ID)
	if errors.Is(err, ErrNotQueued) {
		err = nil
		if cur, gerr := c.st.GetTicket(ctx, t.ID); gerr == nil && cur.State == store.TicketRunning {
			err = c.Release(ctx, store.Lease{App: cur.App, Env: cur.Env, TicketID: cur.ID, Token: cur.Token})
		}
	}
	if err != nil && !errors.Is(err, ErrLeaseLost) {
		return nil, err
	}
	r.State, r.Error, r.EndedAt = store.RolloutCancelled, errTextLeft, c.clock.Now()
	if err := c.st.UpdateRollout(ctx, r); err != nil {
		return nil, fmt.Errorf("control: push rollout %d: %w", r.ID, err)
	}
	return c.reread(ctx, r.ID)
}

// holderText says who holds app/env's lease now, for a deployer that lost it.
func (c *Control) holderText(ctx context.Context, app, env string) string {
	s, err := c.Status(ctx, app, env)
	switch {
	case err != nil:
		return "another deploy took the lock"
	case s.Holder == nil:
		return "another deploy took the lock (and already released it)"
	}
	return fmt.Sprintf("another deploy took the lock: %s holds it since %s", s.Holder.Holder, s.Holder.Since.UTC().Format(time.RFC3339))
}

// pushAPI is push rollout r with its ticket t, and the lease l: its own
// (running) or the holder's (queued).
func (c *Control) pushAPI(r store.Rollout, t store.Ticket, l store.Lease) *api.Rollout {
	out := &api.Rollout{ID: r.ID, App: r.App, Env: r.Env, Kind: r.Kind, ReleaseID: r.ReleaseID, Release: r.Release, Strategy: r.Strategy,
		State: string(r.State), Phase: r.Phase, Error: r.Error, Runner: r.Runner, CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt,
		StartedAt: r.StartedAt, EndedAt: r.EndedAt}
	switch {
	case r.State.Done():
	case t.State == store.TicketQueued:
		out.State, out.Position = string(store.RolloutQueued), t.Position
		if l.TicketID != t.ID {
			out.HeldBy, out.HeldSince = l.Holder, l.Since
		}
	case t.State == store.TicketRunning:
		out.Token, out.RenewEvery = t.Token, c.lease/3
	}
	return out
}
