package control_test

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/control"
	"github.com/drover/drover/internal/store"
)

// heldUpgrades is a store whose CreateUpgrade waits for open to close,
// counting the calls inside it.
type heldUpgrades struct {
	store.Store
	open chan struct{}

	mu        sync.Mutex
	in, most  int
	completed int
}

func (h *heldUpgrades) CreateUpgrade(ctx context.Context, u store.Upgrade) (store.Upgrade, error) {
	h.mu.Lock()
	h.in++
	h.most = max(h.most, h.in)
	h.mu.Unlock()
	<-h.open
	defer func() {
		h.mu.Lock()
		h.in--
		h.completed++
		h.mu.Unlock()
	}()
	return h.Store.CreateUpgrade(ctx, u)
}

func (h *heldUpgrades) inside() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.in
}

// TestAgentWritesAdmittedFewAtATime: when many agents start an upgrade at
// once, at most Options.AgentWrites of them write at a time; the others
// wait their turn (in admit) and all succeed.
func TestAgentWritesAdmittedFewAtATime(t *testing.T) {
	ctx := ctxT(t)
	st := &heldUpgrades{Store: openStore(t, filepath.Join(t.TempDir(), "drover.db")), open: make(chan struct{})}
	c, err := control.New(st, control.Options{AgentWrites: 2})
	must(t, err)
	const agents = 6
	var nodes []store.Node
	for i := range agents {
		name := fmt.Sprintf("web%d", i)
		must(t, c.RegisterNode(ctx, name, name, "test", []api.NodeApp{{App: "shop", Env: "production", Roles: []string{"web"}}}))
		ns, err := st.ListNodes(ctx, store.NodeFilter{Name: name})
		must(t, err)
		nodes = append(nodes, ns[0])
	}
	rel, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1", Commit: strings.Repeat("a", 40)})
	must(t, err)

	errs := make(chan error, agents)
	for _, n := range nodes {
		go func() {
			_, _, err := c.StartUpgrade(ctx, n, api.StartUpgrade{ReleaseID: rel.ID, App: "shop", Env: "production"})
			errs <- err
		}()
	}
	deadline := time.Now().Add(30 * time.Second)
	for st.inside() != 2 || waitingInAdmit() != agents-2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d upgrades writing and %d waiting to be admitted, want 2 and %d", st.inside(), waitingInAdmit(), agents-2)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(st.open)
	for range agents {
		must(t, <-errs)
	}
	if st.most != 2 || st.completed != agents {
		t.Fatalf("at most %d upgrades wrote at once and %d completed, want 2 and %d", st.most, st.completed, agents)
	}
}

// waitingInAdmit counts goroutines blocked in Control.admit.
func waitingInAdmit() int {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return strings.Count(string(buf), "control.(*Control).admit(")
}

// TestTokenAloneIsNoNews: a node outside any rollout is told the
// environment's last fencing token with its release, but a lease taken
// (a rollout about to start) moves only the token: its long-poll's
// version stays, so ten thousand agents are not answered (and do not poll
// again) for nothing. A new current release is news.
func TestTokenAloneIsNoNews(t *testing.T) {
	ctx := ctxT(t)
	c, path, _ := setup(t)
	st := openStore(t, path)
	must(t, c.RegisterNode(ctx, "web1", "web1", "test", []api.NodeApp{{App: "shop", Env: "production", Roles: []string{"web"}}}))
	nodes, err := st.ListNodes(ctx, store.NodeFilter{Name: "web1"})
	must(t, err)
	// current makes a release of commit the environment's current one and
	// returns the node's desired state.
	current := func(commit string) *api.Desired {
		rel, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:" + commit, Commit: strings.Repeat(commit, 40)})
		must(t, err)
		must(t, st.SetCurrentRelease(ctx, "shop", "production", rel.ID))
		c.Invalidate("shop", "production", 0)
		d, err := c.Desired(ctx, nodes)
		must(t, err)
		return d
	}
	before := current("a")

	l, err := c.Acquire(ctx, enqueue(t, c, "rollout", control.EnqueueOptions{}))
	must(t, err)
	c.Invalidate("shop", "production", 0)
	after, err := c.Desired(ctx, nodes)
	must(t, err)
	if after.Apps[0].Token != l.Token || after.Apps[0].Token == before.Apps[0].Token {
		t.Fatalf("token %d, then %d; want the new lease's %d", before.Apps[0].Token, after.Apps[0].Token, l.Token)
	}
	if after.Version != before.Version {
		t.Fatalf("version moved from %d to %d with the token alone", before.Version, after.Version)
	}

	if next := current("b"); next.Version == after.Version {
		t.Fatalf("version %d unchanged after the current release moved", after.Version)
	}
}
