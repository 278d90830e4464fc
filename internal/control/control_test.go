package control_test

import (
	"context"
	"errors"
	"math"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/control"
	"github.com/drover/drover/internal/store"
)

// fakeClock is a Clock the test advances by hand; it counts live timers so
// a test can wait until every waiter is asleep.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*fakeTimer]struct{}
	added  chan struct{} // signalled whenever a timer is created
}

type fakeTimer struct {
	c    *fakeClock
	at   time.Time
	ch   chan time.Time
	done bool
}

func newClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC), timers: map[*fakeTimer]struct{}{}, added: make(chan struct{}, 1)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) control.Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: c, at: c.now.Add(d), ch: make(chan time.Time, 1)}
	if d <= 0 {
		t.ch <- c.now
		t.done = true
	} else {
		c.timers[t] = struct{}{}
	}
	select {
	case c.added <- struct{}{}:
	default:
	}
	return t
}

func (t *fakeTimer) C() <-chan time.Time { return t.ch }

func (t *fakeTimer) Stop() bool {
	t.c.mu.Lock()
	defer t.c.mu.Unlock()
	_, live := t.c.timers[t]
	delete(t.c.timers, t)
	return live
}

// Advance moves time on and fires the timers that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
			delete(c.timers, t)
		}
	}
}

// sleepers waits until n timers are pending: n waiters are asleep.
func (c *fakeClock) sleepers(t *testing.T, n int) {
	t.Helper()
	c.sleepersOr(t, func() int { return n }, nil)
}

// poke makes sleepersOr look again (its n changed).
func (c *fakeClock) poke() {
	select {
	case c.added <- struct{}{}:
	default:
	}
}

// sleepersOr waits until n timers are pending or done is closed, and
// reports whether done was.
func (c *fakeClock) sleepersOr(t *testing.T, n func() int, done <-chan struct{}) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c.mu.Lock()
		got := len(c.timers)
		c.mu.Unlock()
		if got >= n() {
			return false
		}
		select {
		case <-c.added:
		case <-done:
			return true
		case <-ctx.Done():
			t.Fatalf("%d waiters asleep, want %d", got, n())
		}
	}
}

const lease = time.Minute

func openStore(t *testing.T, path string) store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func newControl(t *testing.T, st store.Store, clock *fakeClock) *control.Control {
	t.Helper()
	return newControlLease(t, st, clock, lease)
}

func newControlLease(t *testing.T, st store.Store, clock *fakeClock, d time.Duration) *control.Control {
	t.Helper()
	c, err := control.New(st, control.Options{Lease: d, Recheck: 10 * time.Second, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// setup returns a Control over a fresh SQLite store, the store's path and the clock.
func setup(t *testing.T) (*control.Control, string, *fakeClock) {
	path := filepath.Join(t.TempDir(), "drover.db")
	clock := newClock()
	return newControl(t, openStore(t, path), clock), path, clock
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func enqueue(t *testing.T, c *control.Control, holder string, opts control.EnqueueOptions) *control.Ticket {
	t.Helper()
	tk, err := c.Enqueue(ctxT(t), "shop", "production", holder, opts)
	must(t, err)
	return tk
}

// waiter is an Acquire running in a goroutine; done is closed when it
// returned l and err.
type waiter struct {
	done chan struct{}
	l    control.Lease
	err  error
}

func acquire(ctx context.Context, c *control.Control, tk *control.Ticket) *waiter {
	w := &waiter{done: make(chan struct{})}
	go func() {
		defer close(w.done)
		w.l, w.err = c.Acquire(ctx, tk)
	}()
	return w
}

func wait(t *testing.T, w *waiter) *waiter {
	t.Helper()
	select {
	case <-w.done:
		return w
	case <-time.After(30 * time.Second):
		t.Fatal("Acquire did not return")
		return nil
	}
}

func pending(t *testing.T, w *waiter, what string) {
	t.Helper()
	select {
	case <-w.done:
		t.Fatalf("%s returned early: lease %+v, err %v", what, w.l, w.err)
	default:
	}
}

func TestQueueRunsInOrder(t *testing.T) {
	c, _, clock := setup(t)
	ctx := ctxT(t)
	t1, t2, t3 := enqueue(t, c, "alice", control.EnqueueOptions{}), enqueue(t, c, "bob", control.EnqueueOptions{}), enqueue(t, c, "carol", control.EnqueueOptions{})
	if t3.Position != 3 {
		t.Fatalf("third ticket at position %d", t3.Position)
	}
	l1, err := c.Acquire(ctx, t1)
	must(t, err)
	if l1.Token != 1 || !l1.ExpiresAt.Equal(clock.Now().Add(lease)) {
		t.Fatalf("first lease %+v, want token 1 expiring in %s", l1, lease)
	}
	r3 := acquire(ctx, c, t3)
	r2 := acquire(ctx, c, t2)
	clock.sleepers(t, 2)
	pending(t, r2, "second Acquire while the first holds")
	pending(t, r3, "third Acquire while the first holds")

	st, err := c.Status(ctx, "shop", "production")
	must(t, err)
	if st.Holder == nil || st.Holder.Holder != "alice" || st.Expired || len(st.Queue) != 2 || st.Queue[0].Holder != "bob" || st.Queue[0].Position != 1 || st.Queue[1].Position != 2 {
		t.Fatalf("status %+v, want alice holding, bob then carol queued", st)
	}

	must(t, c.Release(ctx, l1)) // wakes the waiters at once: no clock advance
	got := wait(t, r2)
	must(t, got.err)
	if got.l.Token != 2 || got.l.Holder != "bob" {
		t.Fatalf("second lease %+v, want bob with token 2", got.l)
	}
	clock.sleepers(t, 1)
	pending(t, r3, "third Acquire while the second holds")
	must(t, c.Release(ctx, got.l))
	got = wait(t, r3)
	must(t, got.err)
	if got.l.Token != 3 {
		t.Fatalf("third lease token %d, want 3", got.l.Token)
	}
}

// held is a lease held by the first of two tickets, the second waiting.
type held struct {
	c      *control.Control
	clock  *fakeClock
	ctx    context.Context
	t1, t2 *control.Ticket
	l1     control.Lease
	r2     *waiter
}

func holdAndWait(t *testing.T, holder, next string) held {
	t.Helper()
	h := held{ctx: ctxT(t)}
	h.c, _, h.clock = setup(t)
	h.t1, h.t2 = enqueue(t, h.c, holder, control.EnqueueOptions{}), enqueue(t, h.c, next, control.EnqueueOptions{})
	var err error
	h.l1, err = h.c.Acquire(h.ctx, h.t1)
	must(t, err)
	h.r2 = acquire(h.ctx, h.c, h.t2)
	return h
}

func TestExpiredLeaseIsTakenOver(t *testing.T) {
	h := holdAndWait(t, "crashed", "next")
	c, clock, ctx, t1, l1, r2 := h.c, h.clock, h.ctx, h.t1, h.l1, h.r2
	var err error
	// The holder renews for a while: the waiter keeps waiting.
	for range 3 {
		clock.sleepers(t, 1)
		clock.Advance(lease / 2)
		l1, err = c.Renew(ctx, l1)
		must(t, err)
	}
	clock.sleepers(t, 1)
	pending(t, r2, "Acquire behind a renewed lease")
	// Then it dies: the lease lapses and the waiter takes over.
	for i := 0; !clock.sleepersOr(t, func() int { return 1 }, r2.done); i++ {
		if i > 20 {
			t.Fatal("waiter did not take over an expired lease")
		}
		clock.Advance(10 * time.Second)
	}
	got := wait(t, r2)
	must(t, got.err)
	if got.l.Token <= l1.Token {
		t.Fatalf("takeover token %d, want above %d", got.l.Token, l1.Token)
	}
	if !clock.Now().Before(l1.ExpiresAt.Add(10 * time.Second)) {
		t.Fatalf("takeover at %v, more than a recheck after expiry %v", clock.Now(), l1.ExpiresAt)
	}
	_, err = c.Renew(ctx, l1)
	if !errors.Is(err, control.ErrLeaseLost) {
		t.Fatalf("renew after takeover: %v, want ErrLeaseLost", err)
	}
	if err := c.Release(ctx, l1); !errors.Is(err, control.ErrLeaseLost) {
		t.Fatalf("release after takeover: %v, want ErrLeaseLost", err)
	}
	tk, err := c.Ticket(ctx, t1.ID)
	must(t, err)
	if tk.State != store.TicketExpired {
		t.Fatalf("crashed ticket is %s, want expired", tk.State)
	}
}

func TestSupersedeReplacesQueuedOnly(t *testing.T) {
	h := holdAndWait(t, "running", "old")
	c, clock, ctx, l1, r2 := h.c, h.clock, h.ctx, h.l1, h.r2
	var err error
	clock.sleepers(t, 1)
	t3 := enqueue(t, c, "new", control.EnqueueOptions{Supersede: true})
	if got := wait(t, r2); !errors.Is(got.err, control.ErrSuperseded) {
		t.Fatalf("superseded waiter got %+v, want ErrSuperseded", got)
	}
	if t3.Position != 1 {
		t.Fatalf("superseding ticket at position %d, want 1", t3.Position)
	}
	l1, err = c.Renew(ctx, l1) // the running one is untouched
	must(t, err)
	r3 := acquire(ctx, c, t3)
	clock.sleepers(t, 1)
	pending(t, r3, "Acquire behind a running deploy")
	must(t, c.Release(ctx, l1))
	got := wait(t, r3)
	must(t, got.err)
}

func TestCancel(t *testing.T) {
	c, _, clock := setup(t)
	ctx := ctxT(t)
	t1, t2, t3 := enqueue(t, c, "running", control.EnqueueOptions{}), enqueue(t, c, "cancelled", control.EnqueueOptions{}), enqueue(t, c, "gives up", control.EnqueueOptions{})
	_, err := c.Acquire(ctx, t1)
	must(t, err)
	r2 := acquire(ctx, c, t2)
	waitCtx, giveUp := context.WithCancel(ctx)
	r3 := acquire(waitCtx, c, t3)
	clock.sleepers(t, 2)
	must(t, c.Cancel(ctx, t2.ID))
	if got := wait(t, r2); !errors.Is(got.err, control.ErrCancelled) {
		t.Fatalf("cancelled waiter got %+v, want ErrCancelled", got)
	}
	if err := c.Cancel(ctx, t1.ID); !errors.Is(err, control.ErrNotQueued) {
		t.Fatalf("cancel of the running ticket: %v, want ErrNotQueued", err)
	}
	// A waiter whose context ends leaves the queue.
	giveUp()
	if got := wait(t, r3); !errors.Is(got.err, context.Canceled) {
		t.Fatalf("waiter that gave up got %+v, want context.Canceled", got)
	}
	st, err := c.Status(ctx, "shop", "production")
	must(t, err)
	if len(st.Queue) != 0 {
		t.Fatalf("queue after cancel and give-up: %+v, want empty", st.Queue)
	}
}

// TestReplicas runs two Controls on one database: a release on one wakes a
// waiter on the other within one recheck.
func TestReplicas(t *testing.T) {
	a, path, clock := setup(t)
	b := newControl(t, openStore(t, path), clock)
	ctx := ctxT(t)
	t1 := enqueue(t, a, "replica a", control.EnqueueOptions{})
	t2, err := b.Enqueue(ctx, "shop", "production", "replica b", control.EnqueueOptions{})
	must(t, err)
	l1, err := a.Acquire(ctx, t1)
	must(t, err)
	r2 := acquire(ctx, b, t2)
	clock.sleepers(t, 1)
	must(t, a.Release(ctx, l1))
	clock.Advance(10 * time.Second)
	got := wait(t, r2)
	must(t, got.err)
	if got.l.Token != 2 {
		t.Fatalf("replica b's token %d, want 2", got.l.Token)
	}
}

// TestOneHolderUnderLoad has many goroutines on two replicas deploy
// through the queue; never two at once, tokens strictly increasing.
func TestOneHolderUnderLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "drover.db")
	clock := newClock()
	// An hour's lease: the clock ticks at most 10*n rechecks, so no waiter
	// can look stale however late the scheduler runs it.
	a := newControlLease(t, openStore(t, path), clock, time.Hour)
	b := newControlLease(t, openStore(t, path), clock, time.Hour)
	ctx := ctxT(t)
	const n = 6
	var holders, waiting, remaining atomic.Int32
	remaining.Store(n)
	var mu sync.Mutex
	var tokens []int64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		c := a
		if i%2 == 1 {
			c = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer clock.poke()
			defer remaining.Add(-1)
			tk, err := c.Enqueue(ctx, "shop", "production", "deployer", control.EnqueueOptions{})
			if err != nil {
				errs <- err
				return
			}
			waiting.Add(1)
			l, err := c.Acquire(ctx, tk)
			waiting.Add(-1)
			clock.poke()
			if err != nil {
				errs <- err
				return
			}
			if h := holders.Add(1); h != 1 {
				errs <- errors.New("two holders at once")
			}
			mu.Lock()
			tokens = append(tokens, l.Token)
			mu.Unlock()
			holders.Add(-1)
			if err := c.Release(ctx, l); err != nil {
				errs <- err
			}
		}()
	}
	// Waiters on the other replica see releases only at a recheck: tick
	// the clock while any deployer still waits (bounded).
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	// Advance only when every deployer left is asleep in Acquire.
	asleep := func() int {
		if w := waiting.Load(); w > 0 && w == remaining.Load() {
			return int(w)
		}
		return math.MaxInt
	}
	for i := 0; !clock.sleepersOr(t, asleep, done); i++ {
		if i > 10*n {
			st, err := a.Status(ctx, "shop", "production")
			t.Fatalf("deployers did not finish: %d waiting, tokens %v, status %+v %v", waiting.Load(), tokens, st, err)
		}
		clock.Advance(10 * time.Second)
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(tokens) != n {
		t.Fatalf("%d deploys got the lease, want %d", len(tokens), n)
	}
	for i := range tokens {
		if tokens[i] != int64(i+1) {
			t.Fatalf("tokens in lease order %v, want 1..%d", tokens, n)
		}
	}
}

func TestOptions(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "drover.db"))
	if _, err := control.New(st, control.Options{Lease: time.Second}); err == nil {
		t.Error("a 1s lease was accepted")
	}
	if _, err := control.New(st, control.Options{Lease: time.Minute, Recheck: time.Minute}); err == nil {
		t.Error("a recheck as long as the lease was accepted")
	}
	c, err := control.New(st, control.Options{})
	must(t, err)
	if c.LeaseDuration() != time.Minute {
		t.Errorf("default lease %s, want 1m", c.LeaseDuration())
	}
}

func TestKeepRenewsUntilStopped(t *testing.T) {
	h := holdAndWait(t, "long deploy", "next")
	keepCtx, stop := context.WithCancel(h.ctx)
	lost := h.c.Keep(keepCtx, h.l1)
	// Ten lease periods pass; Keep renews every third, the waiter waits.
	for range 30 {
		h.clock.sleepers(t, 2) // the waiter and Keep
		h.clock.Advance(lease / 3)
	}
	h.clock.sleepers(t, 2)
	pending(t, h.r2, "Acquire behind a kept lease")
	st, err := h.c.Status(h.ctx, "shop", "production")
	must(t, err)
	if st.Holder == nil || st.Holder.TicketID != h.t1.ID || st.Expired {
		t.Fatalf("status after 10 lease periods: %+v, want the kept lease", st)
	}
	stop()
	if err, open := <-lost; open || err != nil {
		t.Fatalf("Keep after its context ended sent %v", err)
	}
	// Not kept any more: the lease lapses and the waiter takes over.
	for i := 0; !h.clock.sleepersOr(t, func() int { return 1 }, h.r2.done); i++ {
		if i > 20 {
			t.Fatal("waiter did not take over once the lease was no longer kept")
		}
		h.clock.Advance(10 * time.Second)
	}
	must(t, wait(t, h.r2).err)
}

func TestKeepReportsLoss(t *testing.T) {
	h := holdAndWait(t, "holder", "next")
	lost := h.c.Keep(h.ctx, h.l1)
	must(t, h.c.Release(h.ctx, h.l1)) // someone else released it: the next renewal finds it gone
	l2 := wait(t, h.r2)
	must(t, l2.err)
	h.clock.sleepers(t, 1) // Keep waits for its next renewal
	h.clock.Advance(lease / 3)
	select {
	case err := <-lost:
		if !errors.Is(err, control.ErrLeaseLost) {
			t.Fatalf("Keep sent %v, want ErrLeaseLost", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Keep did not report the lost lease")
	}
	if _, open := <-lost; open {
		t.Fatal("Keep's channel stays open after the loss")
	}
}

// countsFindNode is a store that counts reads of one node's row.
type countsFindNode struct {
	store.Store
	reads atomic.Int64
}

func (s *countsFindNode) FindNode(ctx context.Context, name, app, env string) (store.Node, error) {
	s.reads.Add(1)
	return s.Store.FindNode(ctx, name, app, env)
}

func (s *countsFindNode) GetNode(ctx context.Context, id int64) (store.Node, error) {
	s.reads.Add(1)
	return s.Store.GetNode(ctx, id)
}

// TestRegistrationKept: an agent's registration is read once, then kept
// (every StartUpgrade asks it; ten thousand at once read ten thousand
// rows); one not registered yet is not kept, so it is found once the node
// registers.
func TestRegistrationKept(t *testing.T) {
	ctx := context.Background()
	st := &countsFindNode{Store: sqliteStore(t)}
	c, err := control.New(st, control.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Registration(ctx, "web1", "shop", "production"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("before it registered: %v, want not found", err)
	}
	n, err := st.RegisterNode(ctx, store.Node{Name: "web1", Hostname: "web1", App: "shop", Env: "production", Roles: []string{"web"}})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		got, err := c.Registration(ctx, "web1", "shop", "production")
		if err != nil || !reflect.DeepEqual(got, store.Node{ID: n.ID, Name: "web1", App: "shop", Env: "production"}) {
			t.Fatalf("Registration = %+v, %v; want ID %d", got, err, n.ID)
		}
	}
	if r := st.reads.Load(); r != 2 {
		t.Fatalf("%d reads for one miss and three asks, want 2", r)
	}
	// An agent's report finds its registration through the upgrade's
	// node ID: kept too.
	rel, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := st.CreateUpgrade(ctx, store.Upgrade{NodeID: n.ID, ReleaseID: rel.ID, Status: store.UpgradePending})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		_, got, err := c.Upgrade(ctx, u.ID)
		if err != nil || got.ID != n.ID || got.Name != "web1" || got.App != "shop" || got.Env != "production" {
			t.Fatalf("Upgrade's node = %+v, %v", got, err)
		}
	}
	if r := st.reads.Load(); r != 2 {
		t.Fatalf("%d node reads after two reports' lookups, want still 2", r)
	}
}
