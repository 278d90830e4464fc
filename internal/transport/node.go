package transport

import (
	"context"
	"sync"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
)

// Node is a rollout.Target reached through the node protocol: each
// operation is one `drover node serve` request over Conn, a child process
// (local) or an SSH session. Both push transports use it.
type Node struct {
	Conn node.Conn
	host *config.Host
}

// NewNode is the Target for host h behind conn.
func NewNode(conn node.Conn, h *config.Host) *Node { return &Node{Conn: conn, host: h} }

// Name implements rollout.Target.
func (n *Node) Name() string { return n.host.Name }

// Host implements rollout.Target.
func (n *Node) Host() *config.Host { return n.host }

// request is a node request of op for c.
func (n *Node) request(op string, c rollout.Call) *node.Request {
	return &node.Request{Op: op, App: c.App, Env: c.Env, Host: n.host.Name, Roles: n.host.Roles, Token: c.Token,
		ID: c.Release, Commit: c.Commit, Spec: c.Spec, By: c.By, Export: c.Export, Hotfix: c.Hotfix}
}

// Call sends req to the node and returns its answer; a failed operation is
// a Response with OK false, a transport failure an error. It fills in the
// host's name and roles.
func (n *Node) Call(ctx context.Context, req *node.Request, onEvent func(release.Event)) (*node.Response, error) {
	req.Host, req.Roles = n.host.Name, n.host.Roles
	return node.Call(ctx, n.Conn, req, onEvent)
}

// do sends req with c's events and turns a failed answer into a
// *rollout.NodeError.
func (n *Node) do(ctx context.Context, req *node.Request, c rollout.Call) (*node.Response, error) {
	return n.answer(node.Call(ctx, n.Conn, req, c.Events))
}

// answer turns a failed answer into a *rollout.NodeError.
func (n *Node) answer(resp *node.Response, err error) (*node.Response, error) {
	if err != nil {
		return nil, err
	}
	if !resp.OK {
		return resp, &rollout.NodeError{Msg: resp.Error, Step: resp.Step, Tail: resp.Tail, Serving: resp.Serving}
	}
	return resp, nil
}

// Lock implements rollout.Target: the lock lives as long as one
// `drover node serve` session, heartbeated.
func (n *Node) Lock(ctx context.Context, c rollout.Call, holder lock.Holder) (rollout.Lease, error) {
	req := n.request(node.OpLock, c)
	req.Holder = &holder
	h, err := node.Hold(ctx, n.Conn, req)
	if err != nil {
		return nil, err
	}
	return heldLease{h}, nil
}

// heldLease is a lock held by one node.Hold session.
type heldLease struct{ h *node.Held }

func (l heldLease) Token() int64          { return l.h.Holder.Token }
func (l heldLease) Lost() <-chan struct{} { return l.h.Lost() }
func (l heldLease) Release() error        { return l.h.Release() }

// Prepare implements rollout.Target.
func (n *Node) Prepare(ctx context.Context, c rollout.Call, runOnce []string, keepFor time.Duration) (*release.Record, error) {
	req := n.request(node.OpPrepare, c)
	req.RunOnce, req.KeepFor = runOnce, keepFor
	resp, err := n.do(ctx, req, c)
	if resp == nil {
		return nil, err
	}
	return resp.Release, err
}

// RunHooks implements rollout.Target.
func (n *Node) RunHooks(ctx context.Context, c rollout.Call, stage string, hooks []string) error {
	req := n.request(node.OpHooks, c)
	req.Stage, req.RunOnce = stage, hooks
	_, err := n.do(ctx, req, c)
	return err
}

// Activate implements rollout.Target. The node health-checks the release
// before it answers, so a success serves it healthy. With c.Ready the
// activate is a Barrier one: the node stops right before its switch until
// c.Ready answers.
func (n *Node) Activate(ctx context.Context, c rollout.Call, keep int) (*release.Serving, error) {
	req := n.request(node.OpActivate, c)
	req.Keep = keep
	var (
		resp *node.Response
		err  error
	)
	if c.Ready != nil {
		resp, err = n.answer(node.CallBarrier(ctx, n.Conn, req, c.Events, c.Ready))
	} else {
		resp, err = n.do(ctx, req, c)
	}
	if err != nil {
		return nil, err
	}
	return &release.Serving{Release: resp.Active, Healthy: true}, nil
}

// Rollback implements rollout.Target.
func (n *Node) Rollback(ctx context.Context, c rollout.Call, to string) (*release.Serving, error) {
	req := n.request(node.OpRollback, c)
	req.To = to
	resp, err := n.do(ctx, req, c)
	if err != nil {
		return nil, err
	}
	return &release.Serving{Release: resp.Active, Healthy: true}, nil
}

// Releases implements rollout.Target.
func (n *Node) Releases(ctx context.Context, c rollout.Call) (*rollout.HostReleases, error) {
	resp, err := n.do(ctx, n.request(node.OpRollbackTarget, c), c)
	if err != nil {
		return nil, err
	}
	return &rollout.HostReleases{Host: n.host.Name, Active: resp.Active, Releases: resp.Releases, Target: resp.Target}, nil
}

// Canary implements rollout.Target.
func (n *Node) Canary(ctx context.Context, c rollout.Call, action string, rec *release.Canary) (*release.Canary, error) {
	req := n.request(node.OpCanary, c)
	req.Action, req.Canary = action, rec
	resp, err := n.do(ctx, req, c)
	if err != nil {
		return nil, err
	}
	return resp.Canary, nil
}

// Each sends a request made by mk to every node in parallel and returns the
// answers in node order; a transport failure becomes a Response with OK
// false. plan gives the app, environment and deployer every request names.
func Each(ctx context.Context, plan *rollout.Plan, nodes []*Node, mk func(*node.Request), onEvent func(host string, ev release.Event)) []*node.Response {
	out := make([]*node.Response, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := &node.Request{App: plan.App, Env: plan.Env.Name, By: plan.By}
			mk(req)
			var cb func(release.Event)
			if onEvent != nil {
				cb = func(ev release.Event) { onEvent(n.host.Name, ev) }
			}
			resp, err := n.Call(ctx, req, cb)
			if err != nil {
				resp = &node.Response{Error: "unreachable: " + err.Error()}
			}
			out[i] = resp
		}()
	}
	wg.Wait()
	return out
}
