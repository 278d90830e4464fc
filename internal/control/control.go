// Package control is the control plane between the server's HTTP handlers
// and the store: the rules of deploys live here once, for the API, the
// dashboard and the CLI alike.
//
// It holds so far each environment's deploy lease and FIFO queue: a deploy
// (a server-run rollout or a push deploy) enqueues a Ticket, waits in order
// until it holds the environment's Lease, renews the lease while it works
// and releases it. The lease carries a fencing token that grows with every
// acquisition, and expires when its holder stops renewing it, so a crashed
// server never blocks the queue; the next ticket then takes over with a
// higher token. All state is in the store, shared by every server replica.
package control

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/store"
)

// Errors callers branch on (with errors.Is); the same values the store returns.
var (
	// ErrLeaseLost: the lease expired and another ticket took it over.
	ErrLeaseLost = store.ErrLeaseLost
	// ErrSuperseded: a newer ticket enqueued with Supersede replaced this one.
	ErrSuperseded = store.ErrSuperseded
	// ErrCancelled: the queued ticket was cancelled.
	ErrCancelled = store.ErrCancelled
	// ErrNotQueued: the ticket runs or ended, so it cannot be cancelled.
	ErrNotQueued = store.ErrNotQueued
)

// Ticket is a place in an environment's deploy queue.
type Ticket = store.Ticket

// Lease is an environment's deploy lease with its fencing token.
type Lease = store.Lease

// Clock is the time source; tests inject one they advance by hand.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that fires once after d.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer from a Clock.
type Timer interface {
	C() <-chan time.Time
	// Stop stops the timer; it reports whether it was still pending.
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time                 { return time.Now() }
func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time { return t.t.C }
func (t realTimer) Stop() bool          { return t.t.Stop() }

// DefaultRecheck is how often a waiting ticket re-reads the store.
const DefaultRecheck = time.Second

// Options configure a Control; zero values take the defaults.
type Options struct {
	// Lease is how long a lease outlives its last renewal, and how long a
	// queued ticket stays in the queue without its waiter asking; default
	// lock.DefaultLease, bounded like the host-file lock (lock.CheckLease).
	Lease time.Duration
	// Recheck is how often a waiter re-reads the store, to see releases
	// made by other server replicas and to prove it is still waiting;
	// default DefaultRecheck, at most a third of Lease. Releases through
	// the same Control wake waiters at once.
	Recheck time.Duration
	// Clock is the time source; default the system clock.
	Clock Clock
	// AllowCommands lets CreateRelease accept rollouts that run shell
	// commands on the server (a command load balancer, a canary check
	// command); RunRollouts with RunnerOptions.AllowCommands turns it on
	// too, and the runner checks its own option again before it runs one.
	AllowCommands bool
	// AgentWrites is how many agents' upgrade writes (StartUpgrade,
	// Report) run at once; the rest wait their turn. Default: half the
	// store's connections (defaultAgentWrites).
	AgentWrites int
}

// defaultAgentWrites is Options.AgentWrites' default for a store of the
// dialect: half its connection pool (store.PoolSize). When a rollout hands
// ten thousand nodes their task at once, their agents all start an upgrade
// at once: left alone, that flood holds every database connection (and
// SQLite's one writer), and the one desired-state read that answers the
// rest of the fleet waits behind it for seconds. The other half stays free
// for reads; the writes go no slower, since the database could not run
// more of them at once anyway.
func defaultAgentWrites(dialect string) int { return store.PoolSize(dialect) / 2 }

// Control is the control plane over one store. It is safe for concurrent
// use; several Controls (server replicas) may share one database.
type Control struct {
	st      store.Store
	clock   Clock
	lease   time.Duration
	recheck time.Duration

	allowCommands atomic.Bool

	mu   sync.Mutex
	wake map[envKey]chan struct{} // closed when the env's queue changed here

	desired desiredCache // Desired's per-environment answers (desired.go)

	kick chan struct{} // closed when a rollout may start here (runner.go)

	boardsMu sync.Mutex
	boards   map[int64]*nodeBoard // the nodes of each rollout this replica runs

	writes chan struct{} // a slot per agent write running (admit)

	envsMu sync.Mutex
	envs   map[int64]envKey // the environment of recently asked-about rollouts (rolloutEnv)

	regsMu sync.Mutex
	regs   map[regKey]int64 // the IDs of registrations asked about (Registration)
	regIDs map[int64]regKey // and the other way
}

type envKey struct{ app, env string }

// New returns a Control over st.
func New(st store.Store, opts Options) (*Control, error) {
	if opts.Lease == 0 {
		opts.Lease = lock.DefaultLease
	}
	if err := lock.CheckLease(opts.Lease); err != nil {
		return nil, fmt.Errorf("control: deploy lease: %w", err)
	}
	if opts.Recheck == 0 {
		opts.Recheck = min(DefaultRecheck, opts.Lease/3)
	}
	if opts.Recheck <= 0 || opts.Recheck > opts.Lease/3 {
		return nil, fmt.Errorf("control: recheck interval %s: give more than 0 and at most a third of the lease (%s)", opts.Recheck, opts.Lease)
	}
	if opts.Clock == nil {
		opts.Clock = realClock{}
	}
	if opts.AgentWrites <= 0 {
		opts.AgentWrites = defaultAgentWrites(st.Dialect())
	}
	c := &Control{st: st, clock: opts.Clock, lease: opts.Lease, recheck: opts.Recheck, wake: map[envKey]chan struct{}{}, boards: map[int64]*nodeBoard{},
		writes: make(chan struct{}, opts.AgentWrites)}
	c.allowCommands.Store(opts.AllowCommands)
	return c, nil
}

// LeaseDuration is how long a lease lasts without renewal; renew well
// within it (a third is a good period).
func (c *Control) LeaseDuration() time.Duration { return c.lease }

// waitCh returns the channel closed at the next change of app/env's queue
// made through this Control.
func (c *Control) waitCh(app, env string) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := envKey{app, env}
	ch, ok := c.wake[k]
	if !ok {
		ch = make(chan struct{})
		c.wake[k] = ch
	}
	return ch
}

func (c *Control) notify(app, env string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := envKey{app, env}
	if ch, ok := c.wake[k]; ok {
		close(ch)
		delete(c.wake, k)
	}
}

// EnqueueOptions tune Enqueue.
type EnqueueOptions struct {
	// Supersede replaces every older queued ticket of the environment
	// (their waiters get ErrSuperseded); a running one is never touched.
	Supersede bool
	// Resumable marks a deploy another runner may continue (a server-run
	// rollout): when its lease lapses the queue waits for a takeover
	// (store.TakeOverLease) instead of passing the lease on.
	Resumable bool
}

// Enqueue puts a deploy by holder (who: "alice@laptop", "rollout 12") at
// the end of app/env's queue and returns its ticket with its Position.
func (c *Control) Enqueue(ctx context.Context, app, env, holder string, opts EnqueueOptions) (*Ticket, error) {
	t, err := c.st.EnqueueTicket(ctx, store.Ticket{App: app, Env: env, Holder: holder, CreatedAt: c.clock.Now(), Resumable: opts.Resumable}, opts.Supersede)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	c.notify(app, env)
	c.kickRunner()
	return &t, nil
}

// TryAcquire gives t the lease if it is at the head of the queue and the
// lease is free (or expired) now; otherwise it returns false and the
// current holder's lease (zero when free). For --no-wait: cancel the
// ticket when it returns false.
func (c *Control) TryAcquire(ctx context.Context, t *Ticket) (Lease, bool, error) {
	l, ok, err := c.st.TryAcquire(ctx, t.ID, c.clock.Now(), c.lease)
	if err != nil {
		return Lease{}, false, fmt.Errorf("control: %w", err)
	}
	if ok {
		t.State, t.Token, t.Position = store.TicketRunning, l.Token, 0
	}
	return l, ok, nil
}

// Acquire blocks until t holds its environment's lease and returns it. It
// wakes when the queue changes through this Control, when the holder's
// lease expires (by the Clock), and every Recheck for changes made by other
// replicas; it never sleeps a fixed time. ErrSuperseded or ErrCancelled when
// the ticket was replaced or cancelled while waiting. When ctx ends first,
// the ticket leaves the queue (or, if it just got the lease, releases it)
// and ctx's error is returned.
func (c *Control) Acquire(ctx context.Context, t *Ticket) (Lease, error) {
	l, _, err := c.acquire(ctx, t, nil)
	if ctx.Err() != nil {
		return Lease{}, c.abandon(ctx, t)
	}
	return l, err
}

// acquire is Acquire's wait, which also stops when until fires (nil:
// never): then it returns false and the holder's lease, and t stays in the
// queue. It does not leave the queue when ctx ends either; the caller does.
func (c *Control) acquire(ctx context.Context, t *Ticket, until <-chan time.Time) (Lease, bool, error) {
	for {
		changed := c.waitCh(t.App, t.Env)
		if err := ctx.Err(); err != nil {
			return Lease{}, false, err
		}
		l, ok, err := c.TryAcquire(ctx, t)
		if err != nil || ok || ctx.Err() != nil {
			return l, ok, err
		}
		wait := c.recheck
		if l.TicketID != 0 {
			if until := l.ExpiresAt.Sub(c.clock.Now()); until < wait {
				wait = max(until, 0)
			}
		}
		timer := c.clock.NewTimer(wait)
		select {
		case <-changed:
		case <-timer.C():
		case <-ctx.Done():
		case <-until:
			timer.Stop()
			return l, false, nil
		}
		timer.Stop()
	}
}

// abandon takes t out of the queue after its waiter gave up: cancelled if
// still queued, released if it got the lease meanwhile.
func (c *Control) abandon(ctx context.Context, t *Ticket) error {
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := c.Cancel(bg, t.ID)
	if errors.Is(err, ErrNotQueued) {
		if cur, gerr := c.st.GetTicket(bg, t.ID); gerr == nil && cur.State == store.TicketRunning {
			err = c.Release(bg, Lease{App: cur.App, Env: cur.Env, TicketID: cur.ID, Token: cur.Token})
		} else {
			err = nil
		}
	}
	if err != nil && !errors.Is(err, ErrLeaseLost) && !errors.Is(err, ErrSuperseded) {
		return fmt.Errorf("%w (and leaving the queue failed: %v)", ctx.Err(), err)
	}
	return ctx.Err()
}

// Renew extends l by the lease duration from now. ErrLeaseLost once
// another ticket took the lease over after it expired: the holder must stop.
func (c *Control) Renew(ctx context.Context, l Lease) (Lease, error) {
	l, err := c.st.RenewLease(ctx, l, c.clock.Now(), c.lease)
	if err != nil {
		return Lease{}, fmt.Errorf("control: %w", err)
	}
	return l, nil
}

// Release frees l's environment for the next ticket. ErrLeaseLost when
// another ticket holds it already.
func (c *Control) Release(ctx context.Context, l Lease) error {
	err := c.st.ReleaseLease(ctx, l, c.clock.Now())
	c.notify(l.App, l.Env)
	c.kickRunner()
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	return nil
}

// Cancel takes a queued ticket out of the queue; its waiter gets
// ErrCancelled. Cancelling twice is not an error; ErrNotQueued when it
// runs or ended.
func (c *Control) Cancel(ctx context.Context, ticketID int64) error {
	t, err := c.st.CancelTicket(ctx, ticketID, c.clock.Now())
	if err != nil {
		return fmt.Errorf("control: %w", err)
	}
	c.notify(t.App, t.Env)
	return nil
}

// Ticket returns ticket id as it stands (Position while queued).
func (c *Control) Ticket(ctx context.Context, id int64) (*Ticket, error) {
	t, err := c.st.GetTicket(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	return &t, nil
}

// Status is an environment's deploy lock and queue.
type Status struct {
	App string `json:"app"`
	Env string `json:"env"`
	// Holder holds the lease (nil when free). Expired says its lease
	// lapsed: the next ticket takes it over when it asks.
	Holder  *Lease `json:"holder,omitempty"`
	Expired bool   `json:"expired,omitempty"`
	// LastToken is the highest fencing token handed out.
	LastToken int64 `json:"last_token"`
	// Queue holds the waiting tickets, next first, each with its Position.
	Queue []Ticket `json:"queue"`
}

// Status returns app/env's lease holder and queue.
func (c *Control) Status(ctx context.Context, app, env string) (Status, error) {
	qs, err := c.st.QueueStatus(ctx, app, env)
	if err != nil {
		return Status{}, fmt.Errorf("control: %w", err)
	}
	s := Status{App: app, Env: env, Holder: qs.Lease, LastToken: qs.LastToken, Queue: qs.Queue}
	if s.Holder != nil {
		s.Expired = !c.clock.Now().Before(s.Holder.ExpiresAt)
	}
	return s, nil
}

// Keep renews l every third of the lease duration until ctx ends, for a
// holder busy with a long deploy. The channel receives one error and is
// closed when the lease is lost (ErrLeaseLost: stop, another deploy runs
// now) or could not be renewed before it expired; it is closed without an
// error when ctx ends. The caller still releases the lease.
func (c *Control) Keep(ctx context.Context, l Lease) <-chan error {
	out := make(chan error, 1)
	go func() {
		defer close(out)
		for {
			timer := c.clock.NewTimer(c.lease / 3)
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C():
			}
			renewed, err := c.Renew(ctx, l)
			switch {
			case err == nil:
				l = renewed
			case ctx.Err() != nil:
				return
			case errors.Is(err, ErrLeaseLost):
				out <- err
				return
			case !c.clock.Now().Before(l.ExpiresAt):
				out <- fmt.Errorf("%w: could not renew the lease of %s/%s (token %d) before it expired at %s: %w",
					ErrLeaseLost, l.App, l.Env, l.Token, l.ExpiresAt.Format(time.RFC3339), err)
				return
			}
			// Otherwise the store failed for now: try again next period.
		}
	}()
	return out
}
