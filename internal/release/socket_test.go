package release_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/testenv/httpload"
)

// TestSocketDeploysLoseNothing: through the engine, a socket: true service
// moves to a new release, then fails to move to a broken one and is
// switched back, under a steady load that sees no failed request. The same
// without socket: true loses some, so the load can tell.
func TestSocketDeploysLoseNothing(t *testing.T) {
	for _, socket := range []bool{true, false} {
		t.Run(fmt.Sprintf("socket=%v", socket), func(t *testing.T) { deployUnderLoad(t, socket) })
	}
}

func deployUnderLoad(t *testing.T, socket bool) {
	ctx := context.Background()
	a := apptest.New(t, apptest.Options{Socket: socket})
	e := engine(a)
	c1 := a.Repo.Head()
	r1 := id(1, c1)
	prepare(t, e, r1, c1)
	if err := e.Activate(ctx, r1); err != nil {
		t.Fatal(err)
	}
	c2 := a.Repo.Commit("v2", map[string]string{"VERSION": "2\n"})
	r2 := id(2, c2)
	prepare(t, e, r2, c2)
	c3 := a.Repo.Commit("broken", map[string]string{"BROKEN": "yes"})
	r3 := id(3, c3)
	prepare(t, e, r3, c3)

	l := httpload.Start(httpload.Options{URL: fmt.Sprintf("http://127.0.0.1:%d/", a.Ports[0]), Workers: 4, Max: 100_000})
	t.Cleanup(l.Stop)
	if err := e.Activate(ctx, r2); err != nil {
		l.Stop()
		t.Fatal(err)
	}
	err := e.Activate(ctx, r3)
	l.Stop()
	if err == nil || !strings.Contains(err.Error(), "switched back to "+r2) {
		t.Errorf("activate of a broken release: %v; want a failure switched back to %s", err, r2)
	}
	if current(t, a) != r2 {
		t.Errorf("current = %s, want %s", current(t, a), r2)
	}
	if body := get(t, a.Ports[0]); !strings.Contains(body, r2) {
		t.Errorf("port answers %q, want release %s", body, r2)
	}
	t.Logf("load: %s", l)
	switch {
	case l.Sent() == 0:
		t.Error("the load sent nothing")
	case socket && l.Failed() != 0:
		t.Errorf("across a good and a failed deploy of a socket service: %s", l)
	case !socket && l.Failed() == 0:
		t.Errorf("no request of %d failed with plain restarts: the load cannot tell", l.Sent())
	}
}
