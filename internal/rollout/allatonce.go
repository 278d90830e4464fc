package rollout

import (
	"context"
	"sync"
	"sync/atomic"
)

// allAtOnce is the two-phase strategy: by the time it runs, every host has
// prepared (the barrier) and the run_once hooks ran; it activates every
// host at once. Each host's activation stops right before its switch of
// `current` (the session is open, the fencing token checked, the engine
// lock taken, the before_activate hooks run) and reports ready; when every
// host is ready, all are told to go together, so the activation window,
// from the first switch to the last, does not include any host's session
// start or hooks. A host that fails before it is ready calls the switch
// off everywhere: no host switches.
type allAtOnce struct{}

func (allAtOnce) activate(ctx context.Context, r *run, rep *Report) {
	b := newSwitchBarrier(len(r.targets))
	r.each(ctx, 0, func(ctx context.Context, t Target) {
		var arrived, wasReady atomic.Bool
		ready := func() bool {
			if !arrived.CompareAndSwap(false, true) {
				return false // a second ready from one host: not a go
			}
			wasReady.Store(true)
			b.arrive(ctx, "")
			return b.wait(ctx)
		}
		ok := r.activateOne(ctx, t, ready)
		if arrived.CompareAndSwap(false, true) {
			// It answered without being ready: it failed before its
			// switch, or had nothing to switch.
			failed := ""
			if !ok {
				failed = t.Name()
			}
			b.arrive(ctx, failed)
		}
		if !ok && wasReady.Load() {
			r.calledOff(t, b)
		}
	})
	switch reason, off := b.offReason(); {
	case off:
		rep.Err = "the switch was called off (" + reason + "): " + r.mixedSummary()
	case r.failed():
		rep.Err = r.mixedSummary()
	}
}

// calledOff records, for a host that was ready and then failed, that it
// never switched when the barrier called the switch off: it is skipped,
// not failed, and keeps its previous release.
func (r *run) calledOff(t Target, b *switchBarrier) {
	reason, off := b.offReason()
	if !off {
		return
	}
	res := r.result(t)
	r.mu.Lock()
	defer r.mu.Unlock()
	if res.State == StateFailed && !res.unknown && res.Serving == nil {
		res.State, res.Error, res.Step, res.Tail = StateSkipped, "not switched: "+reason, "", nil
	}
}

// switchBarrier holds every host of an all-at-once activation right before
// its switch until all are ready (go) or one failed (called off).
type switchBarrier struct {
	mu      sync.Mutex
	waiting int           // hosts neither ready nor answered
	decided chan struct{} // closed once the barrier decided
	goAhead bool
	reason  string // why the switch was called off
}

func newSwitchBarrier(n int) *switchBarrier {
	return &switchBarrier{waiting: n, decided: make(chan struct{})}
}

// decide settles the barrier once; later decisions change nothing. b.mu
// is held.
func (b *switchBarrier) decide(goAhead bool, reason string) {
	select {
	case <-b.decided:
		return
	default:
	}
	b.goAhead, b.reason = goAhead, reason
	close(b.decided)
}

// arrive counts a host that is ready or answered; failed names a host that
// failed before it was ready, which calls the switch off at once.
func (b *switchBarrier) arrive(ctx context.Context, failed string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.waiting--
	switch {
	case failed != "":
		b.decide(false, failed+" failed before its switch, so no host switched")
	case b.waiting > 0:
	case ctx.Err() != nil:
		b.decide(false, "the deploy was interrupted before the switch")
	default:
		b.decide(true, "")
	}
}

// wait blocks until the barrier decides and reports whether to switch. A
// cancelled ctx before then calls the switch off for every host.
func (b *switchBarrier) wait(ctx context.Context) bool {
	select {
	case <-b.decided:
	case <-ctx.Done():
		b.mu.Lock()
		b.decide(false, "the deploy was interrupted before the switch")
		b.mu.Unlock()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.goAhead
}

// offReason says why the switch was called off, and whether it was.
func (b *switchBarrier) offReason() (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	select {
	case <-b.decided:
		return b.reason, !b.goAhead
	default:
		return "", false
	}
}
