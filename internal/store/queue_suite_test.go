package store_test

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/drover/drover/internal/store"
)

// The deploy queue part of the conformance suite. Time is passed to the
// store explicitly, so expiry is tested without waiting.

const ttl = 10 * time.Second

func enqueue(t *testing.T, st store.Store, holder string, supersede bool) store.Ticket {
	t.Helper()
	tk, err := st.EnqueueTicket(ctxT(t), store.Ticket{App: "shop", Env: "production", Holder: holder, CreatedAt: at}, supersede)
	must(t, err)
	if tk.ID == 0 || tk.State != store.TicketQueued {
		t.Fatalf("EnqueueTicket(%s) = %+v, want an ID and state queued", holder, tk)
	}
	return tk
}

func tryAcquire(t *testing.T, st store.Store, id int64, when time.Time) (store.Lease, bool) {
	t.Helper()
	l, ok, err := st.TryAcquire(ctxT(t), id, when, ttl)
	must(t, err)
	return l, ok
}

func wantState(t *testing.T, st store.Store, id int64, want store.TicketState) store.Ticket {
	t.Helper()
	tk, err := st.GetTicket(ctxT(t), id)
	must(t, err)
	if tk.State != want {
		t.Fatalf("ticket %d (%s) is %s, want %s", id, tk.Holder, tk.State, want)
	}
	return tk
}

func (s suite) testQueueFIFO(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	empty, err := st.QueueStatus(ctx, "shop", "production")
	must(t, err)
	if empty.Lease != nil || len(empty.Queue) != 0 || empty.LastToken != 0 {
		t.Fatalf("status of an environment never deployed: %+v", empty)
	}
	_, err = st.EnqueueTicket(ctx, store.Ticket{App: "shop", Env: "production"}, false)
	wantErr(t, err, store.ErrInvalid)
	_, _, err = st.TryAcquire(ctx, 999999, at, ttl)
	wantErr(t, err, store.ErrNotFound)

	t1, t2, t3 := enqueue(t, st, "alice", false), enqueue(t, st, "bob", false), enqueue(t, st, "carol", false)
	if t1.Position != 1 || t2.Position != 2 || t3.Position != 3 {
		t.Fatalf("positions %d %d %d, want 1 2 3", t1.Position, t2.Position, t3.Position)
	}
	if _, ok := tryAcquire(t, st, t2.ID, at); ok {
		t.Fatal("second ticket got the lease before the first")
	}
	l1, ok := tryAcquire(t, st, t1.ID, at)
	if !ok || l1.Token != 1 || l1.TicketID != t1.ID || l1.Holder != "alice" || !l1.ExpiresAt.Equal(at.Add(ttl)) {
		t.Fatalf("first ticket: lease %+v ok=%v, want alice's with token 1 until %v", l1, ok, at.Add(ttl))
	}
	again, ok := tryAcquire(t, st, t1.ID, at.Add(time.Second))
	if !ok || again.Token != l1.Token {
		t.Fatalf("the holder asking again got %+v ok=%v, want its own lease back", again, ok)
	}
	holder, ok := tryAcquire(t, st, t2.ID, at.Add(time.Second))
	if ok || holder.TicketID != t1.ID {
		t.Fatalf("second ticket while the first holds: %+v ok=%v, want to wait on ticket %d", holder, ok, t1.ID)
	}
	status, err := st.QueueStatus(ctx, "shop", "production")
	must(t, err)
	if status.Lease == nil || status.Lease.TicketID != t1.ID || len(status.Queue) != 2 ||
		status.Queue[0].ID != t2.ID || status.Queue[0].Position != 1 || status.Queue[1].ID != t3.ID || status.Queue[1].Position != 2 {
		t.Fatalf("status: %+v, want alice holding and bob, carol queued", status)
	}
	if got := wantState(t, st, t3.ID, store.TicketQueued); got.Position != 2 {
		t.Fatalf("carol's position %d, want 2", got.Position)
	}

	must(t, st.ReleaseLease(ctx, l1, at.Add(2*time.Second)))
	wantState(t, st, t1.ID, store.TicketDone)
	wantErr(t, st.ReleaseLease(ctx, l1, at.Add(2*time.Second)), store.ErrLeaseLost)
	if _, ok := tryAcquire(t, st, t3.ID, at.Add(2*time.Second)); ok {
		t.Fatal("third ticket jumped the queue")
	}
	l2, ok := tryAcquire(t, st, t2.ID, at.Add(2*time.Second))
	if !ok || l2.Token != 2 {
		t.Fatalf("second ticket after release: %+v ok=%v, want token 2", l2, ok)
	}
	must(t, st.ReleaseLease(ctx, l2, at.Add(3*time.Second)))
	l3, ok := tryAcquire(t, st, t3.ID, at.Add(3*time.Second))
	if !ok || l3.Token != 3 {
		t.Fatalf("third ticket: %+v ok=%v, want token 3", l3, ok)
	}
	// Other environments have their own queue and tokens.
	other, err := st.EnqueueTicket(ctx, store.Ticket{App: "shop", Env: "staging", Holder: "dave"}, false)
	must(t, err)
	lo, ok := tryAcquire(t, st, other.ID, at.Add(3*time.Second))
	if !ok || lo.Token != 1 {
		t.Fatalf("staging while production is held: %+v ok=%v, want token 1", lo, ok)
	}
}

// testQueueOneHolder runs many acquirers on two replicas (several
// connections each) against one environment: never two holders at once,
// each gets the lease once, in queue order, with strictly increasing tokens.
func (s suite) testQueueOneHolder(t *testing.T) {
	st, url := s.open(t)
	replica := s.openURL(t, url)
	ctx := ctxT(t)
	const n = 8
	tickets := make([]store.Ticket, n)
	for i := range tickets {
		tickets[i] = enqueue(t, st, fmt.Sprintf("deployer%d", i), false)
	}

	// released is closed and replaced on every release: waiters block on
	// it instead of sleeping.
	var mu sync.Mutex
	released := make(chan struct{})
	current := func() chan struct{} { mu.Lock(); defer mu.Unlock(); return released }
	signal := func() { mu.Lock(); close(released); released = make(chan struct{}); mu.Unlock() }

	var holders atomic.Int32
	var orderMu sync.Mutex
	var order []int64 // ticket IDs in the order they got the lease
	var tokens []int64
	errs := make(chan error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, tk := range tickets {
		db := st
		if i%2 == 1 {
			db = replica
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for attempt := 0; ; attempt++ {
				if attempt > 10*n {
					errs <- fmt.Errorf("ticket %d: no lease after %d attempts", tk.ID, attempt)
					return
				}
				wake := current()
				l, ok, err := db.TryAcquire(ctx, tk.ID, at, time.Hour)
				if err != nil {
					errs <- err
					return
				}
				if !ok {
					select {
					case <-wake:
						continue
					case <-ctx.Done():
						errs <- fmt.Errorf("ticket %d: %w", tk.ID, ctx.Err())
						return
					}
				}
				if h := holders.Add(1); h != 1 {
					errs <- fmt.Errorf("ticket %d got the lease while %d others held it", tk.ID, h-1)
				}
				orderMu.Lock()
				order, tokens = append(order, tk.ID), append(tokens, l.Token)
				orderMu.Unlock()
				holders.Add(-1)
				if err := db.ReleaseLease(ctx, l, at); err != nil {
					errs <- err
				}
				signal()
				return
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	want := make([]int64, n)
	for i, tk := range tickets {
		want[i] = tk.ID
	}
	if !slices.Equal(order, want) {
		t.Errorf("lease order %v, want queue order %v", order, want)
	}
	for i := range tokens {
		if tokens[i] != int64(i+1) {
			t.Fatalf("tokens %v, want 1..%d in order", tokens, n)
		}
	}
}

func (s suite) testQueueExpiry(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	t1, t2 := enqueue(t, st, "crashed", false), enqueue(t, st, "next", false)
	l1, ok := tryAcquire(t, st, t1.ID, at)
	if !ok {
		t.Fatal("first ticket did not get the free lease")
	}
	// Renewing before expiry extends the lease.
	l1, err := st.RenewLease(ctx, l1, at.Add(5*time.Second), ttl)
	must(t, err)
	if !l1.ExpiresAt.Equal(at.Add(15 * time.Second)) {
		t.Fatalf("renewed lease expires %v, want %v", l1.ExpiresAt, at.Add(15*time.Second))
	}
	if _, ok := tryAcquire(t, st, t2.ID, at.Add(12*time.Second)); ok {
		t.Fatal("second ticket took a renewed lease before it expired")
	}
	// Expired but not taken over: the holder may still renew.
	l1, err = st.RenewLease(ctx, l1, at.Add(16*time.Second), ttl)
	must(t, err)
	// Not renewed again: it lapses at +26s and the next ticket takes over.
	if _, ok := tryAcquire(t, st, t2.ID, at.Add(25*time.Second)); ok {
		t.Fatal("lease taken one second before it expired")
	}
	l2, ok := tryAcquire(t, st, t2.ID, at.Add(26*time.Second))
	if !ok || l2.Token <= l1.Token {
		t.Fatalf("takeover after expiry: %+v ok=%v, want a token above %d", l2, ok, l1.Token)
	}
	wantState(t, st, t1.ID, store.TicketExpired)
	_, err = st.RenewLease(ctx, l1, at.Add(27*time.Second), ttl)
	wantErr(t, err, store.ErrLeaseLost)
	wantErr(t, st.ReleaseLease(ctx, l1, at.Add(27*time.Second)), store.ErrLeaseLost)
	_, _, err = st.TryAcquire(ctx, t1.ID, at.Add(27*time.Second), ttl)
	wantErr(t, err, store.ErrLeaseLost)
	if _, err := st.RenewLease(ctx, l2, at.Add(27*time.Second), ttl); err != nil {
		t.Fatalf("the new holder cannot renew: %v", err)
	}

	// A queued ticket whose waiter stopped trying does not block the queue.
	t3, t4 := enqueue(t, st, "gone", false), enqueue(t, st, "alive", false)
	must(t, st.ReleaseLease(ctx, l2, at.Add(28*time.Second)))
	l4, ok := tryAcquire(t, st, t4.ID, at.Add(time.Minute))
	if !ok || l4.Token != l2.Token+1 {
		t.Fatalf("live waiter behind a dead one: %+v ok=%v, want token %d", l4, ok, l2.Token+1)
	}
	wantState(t, st, t3.ID, store.TicketExpired)
	status, err := st.QueueStatus(ctx, "shop", "production")
	must(t, err)
	if status.LastToken != l4.Token || status.Lease == nil || status.Lease.Holder != "alive" {
		t.Fatalf("status %+v, want alive holding token %d", status, l4.Token)
	}
}

func (s suite) testQueueSupersede(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	t1, t2, t3 := enqueue(t, st, "running", false), enqueue(t, st, "old1", false), enqueue(t, st, "old2", false)
	l1, ok := tryAcquire(t, st, t1.ID, at)
	if !ok {
		t.Fatal("first ticket did not get the lease")
	}
	t4 := enqueue(t, st, "newest", true)
	if t4.Position != 1 {
		t.Fatalf("superseding ticket at position %d, want 1", t4.Position)
	}
	for _, old := range []store.Ticket{t2, t3} {
		if got := wantState(t, st, old.ID, store.TicketSuperseded); got.SupersededBy != t4.ID {
			t.Fatalf("ticket %d superseded by %d, want %d", old.ID, got.SupersededBy, t4.ID)
		}
		_, _, err := st.TryAcquire(ctx, old.ID, at, ttl)
		wantErr(t, err, store.ErrSuperseded)
	}
	wantState(t, st, t1.ID, store.TicketRunning)
	_, err := st.RenewLease(ctx, l1, at.Add(time.Second), ttl)
	must(t, err)
	must(t, st.ReleaseLease(ctx, l1, at.Add(2*time.Second)))
	if _, ok := tryAcquire(t, st, t4.ID, at.Add(2*time.Second)); !ok {
		t.Fatal("the superseding ticket did not get the lease after the running one")
	}
}

func (s suite) testQueueCancel(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	t1, t2, t3 := enqueue(t, st, "running", false), enqueue(t, st, "cancelled", false), enqueue(t, st, "third", false)
	l1, ok := tryAcquire(t, st, t1.ID, at)
	if !ok {
		t.Fatal("first ticket did not get the lease")
	}
	got, err := st.CancelTicket(ctx, t2.ID, at)
	must(t, err)
	if got.State != store.TicketCancelled {
		t.Fatalf("cancelled ticket is %s", got.State)
	}
	_, err = st.CancelTicket(ctx, t2.ID, at)
	must(t, err)
	_, err = st.CancelTicket(ctx, t1.ID, at)
	wantErr(t, err, store.ErrNotQueued)
	_, err = st.CancelTicket(ctx, 999999, at)
	wantErr(t, err, store.ErrNotFound)
	_, _, err = st.TryAcquire(ctx, t2.ID, at, ttl)
	wantErr(t, err, store.ErrCancelled)
	if got := wantState(t, st, t3.ID, store.TicketQueued); got.Position != 1 {
		t.Fatalf("ticket behind a cancelled one at position %d, want 1", got.Position)
	}
	must(t, st.ReleaseLease(ctx, l1, at.Add(time.Second)))
	l3, ok := tryAcquire(t, st, t3.ID, at.Add(time.Second))
	if !ok || l3.Token != 2 {
		t.Fatalf("third ticket: %+v ok=%v, want token 2", l3, ok)
	}
}
