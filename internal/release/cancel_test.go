package release_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

// TestCancelWhileWaitingForHealthServesPrevious cancels an activation while
// the new release's health check still waits: the host must end serving
// the previous release, restarted and healthy, and the error must say so.
func TestCancelWhileWaitingForHealthServesPrevious(t *testing.T) {
	a := apptest.New(t, apptest.Options{})
	e := engine(a)
	c1 := a.Repo.Head()
	r1 := id(1, c1)
	prepare(t, e, r1, c1)
	if err := e.Activate(context.Background(), r1); err != nil {
		t.Fatal(err)
	}
	c2 := a.Repo.Commit("hangs", map[string]string{"HANG": "yes"})
	r2 := id(2, c2)
	prepare(t, e, r2, c2)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- e.Activate(ctx, r2) }()
	a.WaitStarted(t, a.Ports[0], r2, 20*time.Second)
	cancel()
	var err error
	select {
	case err = <-errc:
	case <-time.After(60 * time.Second):
		t.Fatal("activate did not return within 60s of the cancel")
	}
	if err == nil {
		t.Fatal("a cancelled activation reported success")
	}
	if cur := current(t, a); cur != r1 {
		t.Fatalf("current = %q after the cancel, want %s", cur, r1)
	}
	if body := get(t, a.Ports[0]); !strings.Contains(body, r1) {
		t.Fatalf("port %d answers %q, want release %s", a.Ports[0], body, r1)
	}
	var ae *release.ActivateError
	if !errors.As(err, &ae) {
		t.Fatalf("error %T %v is not an *ActivateError", err, err)
	}
	if ae.Serving.Release != r1 || !ae.Serving.Healthy {
		t.Fatalf("serving %+v, want %s healthy (err: %v)", ae.Serving, r1, err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error does not say it was cancelled: %v", err)
	}
	// A cancelled activation may be tried again; the release that runs is
	// still the active one.
	if st := statusOf(t, e, r2); st != release.StatusPrepared {
		t.Errorf("cancelled %s is recorded %s, want prepared", r2, st)
	}
	if st := statusOf(t, e, r1); st != release.StatusActive {
		t.Errorf("%s runs but is recorded %s", r1, st)
	}
}

// statusOf returns the recorded status of release rid.
func statusOf(t *testing.T, e *release.Engine, rid string) release.Status {
	t.Helper()
	recs, _, err := e.Releases()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.ID == rid {
			return r.Status
		}
	}
	return ""
}

// TestRevertedRollbackKeepsRecordsTrue rolls back to a release that does
// not become healthy, once cancelled while it waits and once failing on
// its own: the host goes back to the release it ran, which is recorded
// active again (not rolled back from), and the records say which
// activation may be tried again.
func TestRevertedRollbackKeepsRecordsTrue(t *testing.T) {
	for _, tc := range []struct {
		name, marker string
		cancel       bool
		want         release.Status // of the release rolled back to
	}{
		{"cancelled", "HANG", true, release.StatusPrepared},
		{"unhealthy", "BROKEN", false, release.StatusFailed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := apptest.New(t, apptest.Options{})
			e := engine(a)
			_, rB, _ := deployTwo(t, a, e)
			cC := a.Repo.Commit("c", map[string]string{tc.marker: "yes"})
			rC := id(3, cC)
			prepare(t, e, rC, cC)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			errc := make(chan error, 1)
			go func() { _, err := e.Rollback(ctx, rC); errc <- err }()
			if tc.cancel {
				a.WaitStarted(t, a.Ports[0], rC, 20*time.Second)
				cancel()
			}
			var err error
			select {
			case err = <-errc:
			case <-time.After(60 * time.Second):
				t.Fatal("rollback did not return within 60s")
			}
			var ae *release.ActivateError
			if !errors.As(err, &ae) || ae.Serving.Release != rB || !ae.Serving.Healthy {
				t.Fatalf("rollback to %s: %v, want it to end serving %s healthy", rC, err, rB)
			}
			if cur := current(t, a); cur != rB || !strings.Contains(get(t, a.Ports[0]), rB) {
				t.Fatalf("current %s after the failed rollback, want %s serving", cur, rB)
			}
			if st := statusOf(t, e, rB); st != release.StatusActive {
				t.Errorf("%s runs but is recorded %s", rB, st)
			}
			if st := statusOf(t, e, rC); st != tc.want {
				t.Errorf("%s is recorded %s, want %s", rC, st, tc.want)
			}
		})
	}
}
