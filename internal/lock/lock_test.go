package lock

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestAcquireHeldStaleTakeover(t *testing.T) {
	c := &clock{t: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
	f := &File{Path: filepath.Join(t.TempDir(), "lock"), Now: c.now}
	a, err := f.Acquire(Holder{Owner: "alice@laptop", PID: 1, Command: "deploy production", Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	c.add(30 * time.Second)
	_, err = f.Acquire(Holder{Owner: "bob@ci", PID: 2, Lease: time.Minute})
	var he *HeldError
	if !errors.As(err, &he) || he.Holder.Owner != "alice@laptop" {
		t.Fatalf("second acquire: %v", err)
	}
	for _, want := range []string{"alice@laptop", "pid 1", "deploy production", "30s ago", "drover unlock"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not say %q", err, want)
		}
	}
	// A heartbeat keeps it.
	if err := f.Heartbeat(a.Token); err != nil {
		t.Fatal(err)
	}
	c.add(50 * time.Second)
	if _, err := f.Acquire(Holder{Owner: "bob@ci"}); err == nil {
		t.Fatal("took a lock whose heartbeat is 50s old with a 1m lease")
	}
	// Alice died: past the lease, Bob takes over with a larger token.
	c.add(11 * time.Second)
	b, err := f.Acquire(Holder{Owner: "bob@ci", Lease: time.Minute})
	if err != nil {
		t.Fatalf("takeover of a stale lock: %v", err)
	}
	if b.Token <= a.Token {
		t.Errorf("fencing token did not grow: %d then %d", a.Token, b.Token)
	}
	if err := f.Heartbeat(a.Token); !errors.Is(err, ErrLost) {
		t.Errorf("old holder's heartbeat: %v, want ErrLost", err)
	}
	if err := f.Check(a.Token); !errors.Is(err, ErrLost) {
		t.Errorf("old holder's check: %v", err)
	}
	if err := f.Release(a.Token); !errors.Is(err, ErrLost) {
		t.Errorf("old holder released the new holder's lock: %v", err)
	}
	if err := f.Release(b.Token); err != nil {
		t.Fatal(err)
	}
	if h, _ := f.Read(); h != nil {
		t.Errorf("lock still held after release: %+v", h)
	}
}

func TestManualLockNeverExpires(t *testing.T) {
	c := &clock{t: time.Now()}
	f := &File{Path: filepath.Join(t.TempDir(), "lock"), Now: c.now}
	if _, err := f.Acquire(Holder{Owner: "ops", Manual: true, Lease: time.Second}); err != nil {
		t.Fatal(err)
	}
	c.add(24 * time.Hour)
	if _, err := f.Acquire(Holder{Owner: "ci"}); err == nil {
		t.Fatal("a manual lock expired")
	}
	if was, err := f.Break(); err != nil || was == nil || was.Owner != "ops" {
		t.Fatalf("Break = %+v, %v", was, err)
	}
	if _, err := f.Acquire(Holder{Owner: "ci"}); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentAcquireOneWinner(t *testing.T) {
	f := &File{Path: filepath.Join(t.TempDir(), "lock")}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := f.Acquire(Holder{Owner: "x", PID: i}); err == nil {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d acquirers won", wins.Load())
	}
}

func TestHoldReleasesOnCancel(t *testing.T) {
	f := &File{Path: filepath.Join(t.TempDir(), "lock")}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan Holder, 1)
	done := make(chan error, 1)
	beats := make(chan struct{})
	go func() {
		done <- f.Hold(ctx, Holder{Owner: "a", Lease: time.Second}, func(h Holder) { ready <- h }, beats)
	}()
	go func() {
		// The deployer's heartbeats, every third of the lease.
		t := time.NewTicker(300 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				select {
				case beats <- struct{}{}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	h := <-ready
	// Past several leases the holder is still fresh: its heartbeats renew it.
	deadline := time.Now().Add(2500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if cur, err := f.Read(); err != nil || cur == nil || cur.Token != h.Token {
			t.Fatalf("lock lapsed while held: %+v %v", cur, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if cur, _ := f.Read(); cur != nil {
		t.Fatalf("still held after cancel: %+v", cur)
	}
}

// TestHoldLapsesWithoutHeartbeat: a holder that stops heartbeating loses
// the lock after its lease, even though nothing cancelled it.
func TestHoldLapsesWithoutHeartbeat(t *testing.T) {
	f := &File{Path: filepath.Join(t.TempDir(), "lock")}
	done := make(chan error, 1)
	ready := make(chan Holder, 1)
	go func() {
		done <- f.Hold(context.Background(), Holder{Owner: "a", Lease: 300 * time.Millisecond}, func(h Holder) { ready <- h }, nil)
	}()
	<-ready
	select {
	case err := <-done:
		if !errors.Is(err, ErrLapsed) {
			t.Fatalf("Hold returned %v, want ErrLapsed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a silent holder kept the lock")
	}
	if _, err := f.Acquire(Holder{Owner: "b", Lease: time.Minute}); err != nil {
		t.Fatalf("the next deployer could not take the lapsed lock: %v", err)
	}
}

func TestCheckLease(t *testing.T) {
	for _, d := range []time.Duration{0, -time.Second, time.Second, 2 * time.Hour} {
		if err := CheckLease(d); err == nil {
			t.Errorf("CheckLease(%s) accepted", d)
		}
	}
	for _, d := range []time.Duration{MinLease, DefaultLease, MaxLease} {
		if err := CheckLease(d); err != nil {
			t.Errorf("CheckLease(%s): %v", d, err)
		}
	}
}
