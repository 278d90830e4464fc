package rollout

import (
	"context"
	"fmt"
	"time"

	"github.com/drover/drover/internal/config"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/release"
)

// Target is one node a rollout moves to a release. It is deploy-shaped:
// the operations a strategy needs, no more. rollout never knows how a
// Target is reached: the node protocol over SSH or a child process
// (internal/transport), an agent the control server drives, or memory
// (rollouttest).
//
// An operation the node ran and that failed returns a *NodeError; any other
// error means the node's answer never came (unreachable, interrupted), so
// what it runs is unknown.
type Target interface {
	// Name is the host's name in drover.yml.
	Name() string
	// Host is the host's entry in drover.yml: its roles and its member name
	// in the load balancer.
	Host() *config.Host
	// Lock takes the environment's deploy lock on the node for holder and
	// keeps it (heartbeats) until the Lease is released. When someone else
	// holds it the error is a *lock.HeldError.
	Lock(ctx context.Context, c Call, holder lock.Holder) (Lease, error)
	// Prepare does the slow work of c's release into a new release
	// directory without touching what runs, running the run_once hooks
	// named in runOnce on this node.
	Prepare(ctx context.Context, c Call, runOnce []string, keepFor time.Duration) (*release.Record, error)
	// RunHooks runs the named run_once hooks of stage for c's release.
	RunHooks(ctx context.Context, c Call, stage string, hooks []string) error
	// Activate switches the node to c's release, restarts its services and
	// health-checks them; a failed check switches the node back by itself
	// (the *NodeError's Serving says to what). keep > 0 cleans up old
	// releases afterwards. It returns what the node serves. With c.Ready
	// set, the node does everything that comes before the switch, then
	// calls c.Ready and switches only if it returns true (else it fails,
	// unswitched); a node that fails before, or has nothing to switch,
	// returns without calling it.
	Activate(ctx context.Context, c Call, keep int) (*release.Serving, error)
	// Rollback switches the node back to release to.
	Rollback(ctx context.Context, c Call, to string) (*release.Serving, error)
	// Releases lists the node's releases, the active one and the one a
	// rollback would go to.
	Releases(ctx context.Context, c Call) (*HostReleases, error)
	// Canary reads or changes the node's record of a paused canary, which
	// is how an operator's `drover promote` or `drover abort` reaches the
	// paused deployer: action "pause" writes rec (c's release paused),
	// "status" reads it (nil: none), "promote" and "abort" decide c's
	// release, "clear" removes c's record.
	Canary(ctx context.Context, c Call, action string, rec *release.Canary) (*release.Canary, error)
}

// Call is what one request of a rollout carries to a node: the release,
// the same on every node, and the node's own fencing token.
type Call struct {
	App     *config.File
	Env     string
	Release string // release ID
	Commit  string
	Spec    string
	By      string
	Export  string
	// Hotfix asks for a code-only release: hooks marked hotfix: skip do
	// not run (the node records it, so resume and activate skip them too).
	Hotfix bool
	// Token is the fencing token of the deploy lock this rollout holds on
	// the node; 0 outside a rollout (the node then takes the lock for the
	// length of the request).
	Token int64
	// Events receives the node's progress as it works; may be nil.
	Events func(release.Event)
	// Ready, for Activate only, holds the node right before its switch of
	// `current`: the node calls it once the checks, the engine lock and
	// the before_activate hooks are done, and switches only when it
	// returns true. It blocks until every node of the rollout is ready
	// (all-at-once switches them together) or one failed. nil: no wait.
	Ready func() bool
	// Wave is how many nodes were asked for the same operation at once,
	// this one among them (an all-at-once prepare: every node); 0 when
	// not known. A target that batches work across nodes (a control
	// server writing tasks) may wait for the rest of the wave.
	Wave int
}

// Lease is a deploy lock held on one node.
type Lease interface {
	// Token is the lock's fencing token, sent with every request that
	// changes the node.
	Token() int64
	// Lost is closed when the lock is lost before Release (the connection
	// dropped, the lease expired, someone took it over).
	Lost() <-chan struct{}
	// Release frees the lock and waits until the node confirms.
	Release() error
}

// NodeError is an operation a node ran and that failed: the node answered.
type NodeError struct {
	Msg  string
	Step string   // the step that failed
	Tail []string // its last lines of output
	// Serving is what the node runs after a failed activation or rollback,
	// as it checked itself; nil when it did not say.
	Serving *release.Serving
}

func (e *NodeError) Error() string {
	if e.Step != "" && e.Msg == "" {
		return fmt.Sprintf("step %s failed", e.Step)
	}
	return e.Msg
}
