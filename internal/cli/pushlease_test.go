package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/cli"
	"github.com/drover/drover/internal/control"
	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/servertest"
	"github.com/drover/drover/internal/transport"
)

// lockedBuffer is an output both the deploy and the test use at once.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// running is a deploy in a goroutine.
type running struct {
	out  *lockedBuffer
	done chan struct{}
	err  error
}

func (p *pushApp) start(ctx context.Context, o cli.DeployOptions) *running {
	r := &running{out: &lockedBuffer{}, done: make(chan struct{})}
	o.File = filepath.Join(p.repo.Dir, "drover.yml")
	o.Env = "test"
	o.Transport = transport.Options{Binary: p.bin}
	o.IO = cli.IO{Out: r.out, Err: r.out}
	o.Lease = lock.DefaultLease
	go func() {
		defer close(r.done)
		_, r.err = cli.Deploy(ctx, &o)
	}()
	return r
}

func (r *running) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(d):
		t.Fatalf("the deploy did not end within %s:\n%s", d, r.out)
		return nil
	}
}

// until polls cond every 50ms for up to d.
func until(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pushServer serves a real control server for p's deploys (DROVER_SERVER,
// DROVER_TOKEN) and returns it with a Control over its store, for the test
// to hold the environment's lease as another deploy would.
func pushServer(t *testing.T, clock control.Clock) (*servertest.Server, *control.Control) {
	t.Helper()
	srv := servertest.Start(t, servertest.Options{})
	t.Setenv("DROVER_SERVER", srv.URL)
	t.Setenv("DROVER_TOKEN", srv.Admin)
	ctl, err := control.New(srv.Store, control.Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	return srv, ctl
}

func pushRollouts(t *testing.T, st store.Store) []store.Rollout {
	t.Helper()
	rs, err := st.ListRollouts(context.Background(), store.RolloutFilter{App: "shop", Env: "test", Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// TestDeployQueuesOnTheServer: with DROVER_SERVER set, `drover deploy`
// waits while another deploy holds the environment's lease, shows the
// holder and its place in the queue, and deploys once the lease is
// released; its rollout is recorded on the server as kind push with each
// host's progress. --no-wait fails fast, Ctrl-C while waiting leaves the
// queue, and a server that is down fails the deploy, saying how to deploy
// without it.
func TestDeployQueuesOnTheServer(t *testing.T) {
	p := newPushApp(t)
	p.repo.Commit("app", map[string]string{"drover.yml": p.yml("log", "  prepare: ['echo built']\n", localHost)})
	srv, ctl := pushServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	other, err := ctl.Enqueue(ctx, "shop", "test", "other@ci", control.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	held, err := ctl.Acquire(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	keep, stopKeep := context.WithCancel(ctx)
	defer stopKeep()
	ctl.Keep(keep, held)

	// --no-wait: busy, fail at once, leave no ticket behind.
	nw := p.start(ctx, cli.DeployOptions{NoWait: true})
	if err := nw.wait(t, time.Minute); err == nil || !strings.Contains(err.Error(), "held by other@ci") || !strings.Contains(err.Error(), "--no-wait") {
		t.Fatalf("deploy --no-wait behind a holder: %v, want busy, held by other@ci\n%s", err, nw.out)
	}

	// Ctrl-C while waiting leaves the queue.
	ictx, interrupt := context.WithCancel(ctx)
	ir := p.start(ictx, cli.DeployOptions{})
	until(t, time.Minute, "the interrupted deploy waits", func() bool { return strings.Contains(ir.out.String(), "you are number 1 in the queue") })
	interrupt()
	if err := ir.wait(t, time.Minute); err == nil || !strings.Contains(err.Error(), "left the queue") {
		t.Fatalf("deploy interrupted while waiting: %v, want left the queue\n%s", err, ir.out)
	}
	st, err := ctl.Status(ctx, "shop", "test")
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Queue) != 0 {
		t.Fatalf("queue after --no-wait and an interrupted wait: %+v, want empty", st.Queue)
	}

	// A deploy waits its turn, then deploys.
	r := p.start(ctx, cli.DeployOptions{})
	want := "waiting for the deploy lock of shop test: held by other@ci since " + held.Since.UTC().Format(time.RFC3339) + "; you are number 1 in the queue"
	until(t, time.Minute, "the deploy shows the holder and its place", func() bool { return strings.Contains(r.out.String(), want) })
	if p.current() != "." {
		t.Fatalf("the waiting deploy activated %s", p.current())
	}
	stopKeep()
	if err := ctl.Release(ctx, held); err != nil {
		t.Fatal(err)
	}
	if err := r.wait(t, 2*time.Minute); err != nil {
		t.Fatalf("deploy after the lease was released: %v\n%s", err, r.out)
	}
	if p.current() == "." {
		t.Fatalf("the deploy activated nothing:\n%s", r.out)
	}
	var push *store.Rollout
	states := map[store.RolloutState]int{}
	for _, ro := range pushRollouts(t, srv.Store) {
		if ro.Kind != store.RolloutPush {
			t.Errorf("rollout %d of kind %q", ro.ID, ro.Kind)
		}
		states[ro.State]++
		if ro.State == store.RolloutSucceeded {
			push = &ro
		}
	}
	if push == nil || states[store.RolloutCancelled] != 2 || len(states) != 2 {
		t.Fatalf("rollouts on the server: %v, want one succeeded and two cancelled (--no-wait, interrupted)", states)
	}
	if push.Release != p.current() || push.Runner == "" || len(push.Report) == 0 || !strings.Contains(string(push.Report), p.current()) {
		t.Errorf("the push rollout = %+v, want release %s, its runner and report", *push, p.current())
	}
	nodes, err := srv.Store.ListRolloutNodes(ctx, push.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 1 || nodes[0].Node != "here" || nodes[0].State != store.NodeDone || nodes[0].Task < 2 || nodes[0].Serving != p.current() {
		t.Errorf("the push rollout's hosts = %+v, want here done on %s after its progress was reported", nodes, p.current())
	}
	if st, err := ctl.Status(ctx, "shop", "test"); err != nil || st.Holder != nil {
		t.Errorf("the lease after the deploy: %+v, %v; want free", st, err)
	}

	// The server is down: fail, name it, say how to deploy without it.
	t.Setenv("DROVER_SERVER", "http://127.0.0.1:1")
	before := p.current()
	out, err := p.deploy(t, cli.DeployOptions{})
	if err == nil || !strings.Contains(err.Error(), "http://127.0.0.1:1 (DROVER_SERVER)") || !strings.Contains(err.Error(), "unset DROVER_SERVER") {
		t.Fatalf("deploy with the server down: %v, want an error naming it and how to deploy without\n%s", err, out)
	}
	if p.current() != before {
		t.Errorf("the deploy with the server down changed current to %s", p.current())
	}
	t.Setenv("DROVER_SERVER", cli.ServerOff)
	if out, err := p.deploy(t, cli.DeployOptions{}); err != nil {
		t.Fatalf("deploy with DROVER_SERVER=off: %v\n%s", err, out)
	}

	// A rollback takes the server's lease too, and is recorded there.
	t.Setenv("DROVER_SERVER", srv.URL)
	var log bytes.Buffer
	ro := &cli.RollbackOptions{To: before, Lease: lock.DefaultLease, Common: cli.Common{File: filepath.Join(p.repo.Dir, "drover.yml"), Env: "test",
		Transport: transport.Options{Binary: p.bin}, IO: cli.IO{Out: &log, Err: &log}}}
	if _, err := cli.Rollback(ctx, ro); err != nil || p.current() != before {
		t.Fatalf("rollback --to %s under the server's lease: %v, current %s\n%s", before, err, p.current(), log.String())
	}
	rs := pushRollouts(t, srv.Store)
	if len(rs) != 4 || rs[0].Kind != store.RolloutPush || rs[0].State != store.RolloutSucceeded || rs[0].Release != before {
		t.Errorf("the rollback's rollout on the server: %+v, want a succeeded push rollout to %s", rs[0], before)
	}
}

// aheadClock is the system clock moved on: a Control on it sees every
// lease lapsed that has not been renewed for that long.
type aheadClock struct{ by time.Duration }

func (c aheadClock) Now() time.Time { return time.Now().Add(c.by) }

func (c aheadClock) NewTimer(d time.Duration) control.Timer { return stdTimer{time.NewTimer(d)} }

type stdTimer struct{ t *time.Timer }

func (t stdTimer) C() <-chan time.Time { return t.t.C }
func (t stdTimer) Stop() bool          { return t.t.Stop() }

// TestDeployStopsWhenItsLeaseIsTakenOver: another deploy takes the
// environment's lease over on the server while a push deploy prepares;
// the deploy stops before it activates anything and says another deploy
// took the lock.
func TestDeployStopsWhenItsLeaseIsTakenOver(t *testing.T) {
	p := newPushApp(t)
	// The prepare hook waits (bounded) for a file the test never writes:
	// the deploy is still preparing when its lease is taken.
	hook := "  prepare: ['i=0; while [ ! -e $DROVER_SHARED_DIR/go ] && [ $i -lt 900 ]; do sleep 0.1; i=$((i+1)); done']\n"
	p.repo.Commit("app", map[string]string{"drover.yml": p.yml("log", hook, localHost)})
	srv, _ := pushServer(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := p.start(ctx, cli.DeployOptions{})
	defer func() { _ = os.WriteFile(filepath.Join(p.deployTo, "shared", "go"), nil, 0o644) }()
	until(t, time.Minute, "the deploy prepares under its lease", func() bool {
		for _, ro := range pushRollouts(t, srv.Store) {
			if ro.State == store.RolloutRunning && ro.Phase == "prepare" {
				return true
			}
		}
		return false
	})

	// Another deploy whose clock says the lease lapsed takes it over.
	thief, err := control.New(srv.Store, control.Options{Clock: aheadClock{2 * lock.DefaultLease}})
	if err != nil {
		t.Fatal(err)
	}
	tk, err := thief.Enqueue(ctx, "shop", "test", "thief@ci", control.EnqueueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, err := thief.TryAcquire(ctx, tk); err != nil || !ok {
		t.Fatalf("taking the lapsed lease over: %v, %v", ok, err)
	}

	err = r.wait(t, 2*time.Minute)
	if err == nil || !strings.Contains(r.out.String(), "another deploy took the lock") || !strings.Contains(r.out.String(), "thief@ci") {
		t.Fatalf("deploy whose lease was taken over: %v, want it stopped saying another deploy (thief@ci) took the lock\n%s", err, r.out)
	}
	if p.current() != "." {
		t.Errorf("the deploy that lost its lease activated %s", p.current())
	}
	rs := pushRollouts(t, srv.Store)
	if len(rs) != 1 || rs[0].State != store.RolloutFailed || !strings.Contains(rs[0].Error, "stopped reporting") {
		t.Errorf("the taken-over push rollout: %+v, want failed: deployer stopped reporting", rs)
	}
}
