package cli

// A push deploy of an app that knows a control server (DROVER_SERVER, or
// server: in drover.yml) takes its environment's lease from the server
// before it takes the hosts' own locks, so push deploys and server-run
// rollouts of one environment queue behind each other. While it waits it
// shows who holds the lock and its place in the queue; while it deploys it
// reports each host's progress, which renews the lease; a lost lease stops
// the deploy before its next host-changing step.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/store"
)

// ServerOff in DROVER_SERVER deploys without the server's queue even when
// drover.yml names a server.
const ServerOff = "off"

// pushWait is how long one wait request asks the server to hold.
const pushWait = 30 * time.Second

// pushServer returns the control server push deploys of app queue on and
// where that came from: DROVER_SERVER wins over drover.yml's server:.
// "" when there is none (or DROVER_SERVER is "off").
func pushServer(app *config.File) (url, from string, err error) {
	if v, ok := os.LookupEnv("DROVER_SERVER"); ok && v != "" {
		if v == ServerOff {
			return "", "", nil
		}
		if msg := config.CheckServerURL(v); msg != "" {
			return "", "", &UsageError{fmt.Errorf("DROVER_SERVER: %s (or set DROVER_SERVER=%s to deploy without a server)", msg, ServerOff)}
		}
		return v, "DROVER_SERVER", nil
	}
	if app.Server != "" {
		return app.Server, "server: in " + app.Path, nil
	}
	return "", "", nil
}

// serverLease is a push deploy's hold on its environment's lease on the
// control server: its rollout there, its fencing token, and the hosts'
// progress still to report.
type serverLease struct {
	c        *api.Client
	server   string // URL and where it came from, for messages
	app, env string
	id       int64
	token    int64
	every    time.Duration // report at least this often
	errOut   io.Writer     // where a failure to record the outcome is said

	mu    sync.Mutex
	phase string
	nodes map[string]api.RolloutNode
	dirty map[string]bool
	moved bool   // phase changed since the last report
	lost  string // why the lease was lost; "" while held

	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the reporter stopped
}

// errLeaseLost cancels a deploy whose lease another deploy took over.
var errLeaseLost = errors.New("the deploy lock was taken over on the drover server")

// takeServerLease queues the deploy on the control server, if the app has
// one, and waits until it holds the environment's lease, printing who holds
// it and its place in the queue whenever that changes. With noWait it
// fails at once when the lease is busy. Interrupted while waiting, it
// leaves the queue. It returns nil when there is no server, else the lease
// with the context the deploy runs under (cancelled when the lease is
// lost); the caller ends it with finish.
func takeServerLease(ctx context.Context, c *Common, e *env, releaseID string, noWait bool) (*serverLease, context.Context, error) {
	url, from, err := pushServer(e.app)
	if err != nil || url == "" {
		return nil, ctx, err
	}
	server := fmt.Sprintf("%s (%s)", url, from)
	without := fmt.Sprintf("to deploy without the server's queue, unset DROVER_SERVER (set DROVER_SERVER=%s when drover.yml names the server)", ServerOff)
	if os.Getenv("DROVER_TOKEN") == "" {
		return nil, ctx, &UsageError{fmt.Errorf("the drover server %s keeps the deploy lock of %s %s, and DROVER_TOKEN is not set: set it to an admin token (or @FILE holding one); %s", server, e.app.App, e.env.Name, without)}
	}
	client, err := (&ClientOptions{Server: url}).client()
	if err != nil {
		return nil, ctx, fmt.Errorf("drover server %s: %w", server, err)
	}
	hosts := make([]string, len(e.env.Hosts))
	for i, h := range e.env.Hosts {
		hosts[i] = h.Name
	}
	r, err := client.BeginPush(ctx, api.BeginPush{App: e.app.App, Env: e.env.Name, Holder: e.plan.By, Release: releaseID, Strategy: e.plan.Strategy.Type, Hosts: hosts})
	if err != nil {
		return nil, ctx, fmt.Errorf("could not take the deploy lock of %s %s from the drover server %s; nothing was changed: %w; %s", e.app.App, e.env.Name, server, err, without)
	}
	leave := func() {
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_, _ = client.PushProgress(bg, r.ID, 0, api.PushProgress{Done: true, Error: "left the queue"})
	}
	if r.State == string(store.RolloutQueued) && noWait {
		leave()
		return nil, ctx, fmt.Errorf("the deploy lock of %s %s is busy (%s); --no-wait: not waiting, nothing was changed. Run again without --no-wait to wait in the queue", e.app.App, e.env.Name, queueText(r))
	}
	shown := ""
	for r.State == string(store.RolloutQueued) {
		if text := queueText(r); text != shown {
			fmt.Fprintf(c.IO.Err, "waiting for the deploy lock of %s %s: %s\n", e.app.App, e.env.Name, text)
			shown = text
		}
		next, err := client.WaitPush(ctx, r.ID, pushWait)
		switch {
		case ctx.Err() != nil:
			leave()
			return nil, ctx, fmt.Errorf("interrupted while waiting for the deploy lock of %s %s: left the queue, nothing was changed", e.app.App, e.env.Name)
		case err != nil:
			leave()
			return nil, ctx, fmt.Errorf("waiting for the deploy lock of %s %s on the drover server %s: %w; nothing was changed; %s", e.app.App, e.env.Name, server, err, without)
		}
		r = next
	}
	if r.State != string(store.RolloutRunning) || r.Token == 0 {
		return nil, ctx, fmt.Errorf("the deploy of %s %s did not get the deploy lock from the drover server %s: its rollout %d is %s: %s; nothing was changed", e.app.App, e.env.Name, server, r.ID, r.State, r.Error)
	}
	if shown != "" {
		fmt.Fprintf(c.IO.Err, "got the deploy lock of %s %s (rollout %d)\n", e.app.App, e.env.Name, r.ID)
	}
	sl := &serverLease{c: client, server: server, app: e.app.App, env: e.env.Name, id: r.ID, token: r.Token, errOut: c.IO.Err,
		every: max(time.Second, r.RenewEvery/2), nodes: map[string]api.RolloutNode{}, dirty: map[string]bool{}, done: make(chan struct{})}
	if r.RenewEvery <= 0 {
		sl.every = 10 * time.Second
	}
	ctx, sl.cancel = context.WithCancelCause(ctx)
	go sl.report(ctx)
	return sl, ctx, nil
}

// queueText says who holds the lock and where the deploy is in the queue.
func queueText(r *api.Rollout) string {
	held := "the deploy ahead of you is taking it"
	if r.HeldBy != "" {
		held = fmt.Sprintf("held by %s since %s", r.HeldBy, r.HeldSince.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("%s; you are number %d in the queue", held, r.Position)
}

// report sends the hosts' progress at most every second while it changes,
// and at least every sl.every to keep the lease, until ctx ends or the
// lease is lost.
func (sl *serverLease) report(ctx context.Context) {
	defer close(sl.done)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		p, changed := sl.pending()
		if !changed && time.Since(last) < sl.every {
			continue
		}
		_, err := sl.c.PushProgress(ctx, sl.id, sl.token, p)
		switch {
		case err == nil:
			last = time.Now()
		case ctx.Err() != nil:
			return
		case api.IsStatus(err, http.StatusConflict), api.IsStatus(err, http.StatusNotFound):
			sl.lose(err)
			return
		default:
			// The server is unreachable for now: the deploy goes on, and
			// the report is sent again. Nobody can take the lease over
			// while the server is down; once it is back, a lapsed lease
			// answers 409 and the deploy stops.
			sl.requeue(p)
		}
	}
}

// lose records why the lease is gone and cancels the deploy.
func (sl *serverLease) lose(err error) {
	detail := err.Error()
	var se *api.StatusError
	if errors.As(err, &se) && se.Detail != "" {
		detail = se.Detail
	}
	sl.mu.Lock()
	sl.lost = fmt.Sprintf("lost the deploy lock of %s %s on the drover server %s: %s; this deploy stopped before its next step that changes a host (drover releases %s shows where each host is)", sl.app, sl.env, sl.server, detail, sl.env)
	sl.mu.Unlock()
	sl.cancel(errLeaseLost)
}

// pending takes the progress not yet reported.
func (sl *serverLease) pending() (api.PushProgress, bool) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	p := api.PushProgress{Phase: sl.phase}
	for h := range sl.dirty {
		p.Nodes = append(p.Nodes, sl.nodes[h])
	}
	changed := sl.moved || len(sl.dirty) > 0
	sl.dirty, sl.moved = map[string]bool{}, false
	return p, changed
}

// requeue marks p's hosts as still to report after a failed send.
func (sl *serverLease) requeue(p api.PushProgress) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	for _, n := range p.Nodes {
		sl.dirty[n.Node] = true
	}
	sl.moved = true
}

// set records host's state as the deploy sees it.
func (sl *serverLease) set(n api.RolloutNode) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	sl.nodes[n.Node] = n
	sl.dirty[n.Node] = true
}

// observer wraps obs so the hosts' progress also goes to the server.
func (sl *serverLease) observer(obs rollout.Observer) rollout.Observer {
	if sl == nil {
		return obs
	}
	return &leaseObserver{Observer: obs, sl: sl}
}

// wrap runs a rollout under the lease: its observer reports to the server,
// and when the lease was lost the report says so.
func (sl *serverLease) wrap(run func(rollout.Observer) (*rollout.Report, error)) func(rollout.Observer) (*rollout.Report, error) {
	if sl == nil {
		return run
	}
	return func(obs rollout.Observer) (*rollout.Report, error) {
		rep, err := run(sl.observer(obs))
		if msg := sl.lostText(); msg != "" && rep != nil {
			if rep.Err != "" {
				msg += ". " + rep.Err
			}
			rep.Err = msg
		}
		return rep, err
	}
}

func (sl *serverLease) lostText() string {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	return sl.lost
}

type leaseObserver struct {
	rollout.Observer
	sl *serverLease
}

func (o *leaseObserver) Phase(name string) {
	o.Observer.Phase(name)
	o.sl.mu.Lock()
	o.sl.phase, o.sl.moved = name, true
	o.sl.mu.Unlock()
}

func (o *leaseObserver) Event(host string, ev release.Event) {
	o.Observer.Event(host, ev)
	if ev.Kind != release.EventStepStart || host == "" {
		return
	}
	o.sl.mu.Lock()
	phase := o.sl.phase
	o.sl.mu.Unlock()
	o.sl.set(api.RolloutNode{Node: host, Action: phase, State: store.NodeWorking, Step: ev.Step})
}

func (o *leaseObserver) Done(host string, r *rollout.HostResult) {
	o.Observer.Done(host, r)
	o.sl.set(hostNode(r))
}

// hostNode is a host's result as a rollout node.
func hostNode(r *rollout.HostResult) api.RolloutNode {
	n := api.RolloutNode{Node: r.Host, Action: r.Phase, Step: r.Step, Error: r.Error, Serving: r.Release}
	switch r.State {
	case rollout.StateOK:
		n.State = store.NodeDone
	case rollout.StateSkipped:
		n.State, n.Step = store.NodeAssigned, "skipped"
	default:
		n.State = store.NodeFailed
	}
	return n
}

// finish reports the deploy's outcome and frees the lease (nil-safe). A
// lost lease is not reported again.
func (sl *serverLease) finish(ctx context.Context, rep *rollout.Report, err error) {
	if sl == nil {
		return
	}
	sl.cancel(nil)
	<-sl.done
	if sl.lostText() != "" {
		return
	}
	p, _ := sl.pending()
	p.Done, p.OK = true, err == nil && rep != nil && rep.OK()
	switch {
	case rep != nil:
		p.Error = rep.Err
		p.Nodes = p.Nodes[:0]
		for _, h := range rep.Hosts {
			p.Nodes = append(p.Nodes, hostNode(h))
		}
		p.Report, _ = json.Marshal(rep)
	case err != nil:
		p.Error = err.Error()
	}
	if p.Error == "" && !p.OK && err != nil && !IsReported(err) {
		p.Error = err.Error()
	}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	if _, err := sl.c.PushProgress(bg, sl.id, sl.token, p); err != nil {
		fmt.Fprintf(sl.errOut, "warning: could not record the outcome of this deploy on the drover server %s (rollout %d): %v; its lease lapses on its own and the server will show the deploy as stopped reporting\n", sl.server, sl.id, err)
	}
}
