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
}
