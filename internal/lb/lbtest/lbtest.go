// Package lbtest is the conformance suite every lb.Balancer runs: the
// behaviour a rollout relies on, checked against the real load balancer (or,
// for AWS, a local server speaking its API).
//
//	func TestConformance(t *testing.T) {
//		lbtest.Run(t, func(t *testing.T) lbtest.Fixture {
//			... start the load balancer with two or more serving members ...
//			return lbtest.Fixture{Balancer: b, Members: names, Kill: stop}
//		})
//	}
package lbtest

import (
	"context"
	"errors"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/drover/drover/internal/lb"
)

// Fixture is one fresh load balancer for one subtest.
type Fixture struct {
	// Balancer is the backend under test.
	Balancer lb.Balancer
	// Members are the names of every member; at least two, all of them
	// serving (or about to, once health checks pass) when Run gets them.
	Members []string
	// Kill makes the load balancer unreachable (stop the process, remove
	// the socket, close the server). Calls after it must fail.
	Kill func()
	// Within bounds every wait for the load balancer to change its view
	// (health checks, deregistration delay); default 10s.
	Within time.Duration
	// DeadWithin bounds how long a call may take to fail once Kill ran;
	// default 10s.
	DeadWithin time.Duration
}

// Run runs the suite; newFixture is called once per subtest and must stop
// what it starts in t.Cleanup.
func Run(t *testing.T, newFixture func(t *testing.T) Fixture) {
	setup := func(t *testing.T) Fixture {
		t.Helper()
		f := newFixture(t)
		if f.Within == 0 {
			f.Within = 10 * time.Second
		}
		if f.DeadWithin == 0 {
			f.DeadWithin = 10 * time.Second
		}
		if len(f.Members) < 2 {
			t.Fatalf("lbtest: the fixture gave %d members, want at least 2", len(f.Members))
		}
		waitFor(t, f, "every member serving", func(ms []lb.Member) bool {
			for _, name := range f.Members {
				if m, ok := find(ms, name); !ok || !m.Serving() {
					return false
				}
			}
			return true
		})
		return f
	}

	t.Run("MembersListsAll", func(t *testing.T) {
		f := setup(t)
		ms, err := f.Balancer.Members(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, m := range ms {
			names = append(names, m.Name)
			if m.Detail == "" {
				t.Errorf("member %s has no Detail", m.Name)
			}
		}
		want := slices.Clone(f.Members)
		sort.Strings(names)
		sort.Strings(want)
		if !slices.Equal(names, want) {
			t.Errorf("Members() = %v, want %v", names, want)
		}
	})

	t.Run("DrainThenIdleThenEnable", func(t *testing.T) {
		f := setup(t)
		m0 := f.Members[0]
		if err := f.Balancer.Drain(ctx(t), m0); err != nil {
			t.Fatalf("Drain(%s): %v", m0, err)
		}
		ms := waitFor(t, f, m0+" disabled", func(ms []lb.Member) bool {
			m, ok := find(ms, m0)
			return ok && !m.Enabled && !m.Serving()
		})
		for _, name := range f.Members[1:] {
			if m, _ := find(ms, name); !m.Serving() {
				t.Errorf("draining %s took %s out too: %+v", m0, name, m)
			}
		}
		waitFor(t, f, m0+" idle", func(ms []lb.Member) bool {
			m, ok := find(ms, m0)
			return ok && m.Idle()
		})
		// Draining twice is not an error: a resumed rollout may repeat it.
		if err := f.Balancer.Drain(ctx(t), m0); err != nil {
			t.Errorf("second Drain(%s): %v", m0, err)
		}
		if err := f.Balancer.Enable(ctx(t), m0); err != nil {
			t.Fatalf("Enable(%s): %v", m0, err)
		}
		waitFor(t, f, m0+" serving again", func(ms []lb.Member) bool {
			m, ok := find(ms, m0)
			return ok && m.Serving() && !m.Idle()
		})
		if err := f.Balancer.Enable(ctx(t), m0); err != nil {
			t.Errorf("second Enable(%s): %v", m0, err)
		}
	})

	t.Run("UnknownMember", func(t *testing.T) {
		f := setup(t)
		const name = "no-such-member-9"
		if err := f.Balancer.Drain(ctx(t), name); !errors.Is(err, lb.ErrUnknownMember) {
			t.Errorf("Drain(%s) = %v, want an error wrapping lb.ErrUnknownMember", name, err)
		}
		if err := f.Balancer.Enable(ctx(t), name); !errors.Is(err, lb.ErrUnknownMember) {
			t.Errorf("Enable(%s) = %v, want an error wrapping lb.ErrUnknownMember", name, err)
		}
		ms, err := f.Balancer.Members(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != len(f.Members) {
			t.Errorf("after calls on an unknown member Members() has %d members, want %d", len(ms), len(f.Members))
		}
	})

	t.Run("DeadEndpoint", func(t *testing.T) {
		f := setup(t)
		f.Kill()
		calls := map[string]func(context.Context) error{
			"Members": func(c context.Context) error { _, err := f.Balancer.Members(c); return err },
			"Drain":   func(c context.Context) error { return f.Balancer.Drain(c, f.Members[0]) },
			"Enable":  func(c context.Context) error { return f.Balancer.Enable(c, f.Members[0]) },
		}
		for _, name := range []string{"Members", "Drain", "Enable"} {
			start := time.Now()
			// No deadline of our own: the backend must bound its calls.
			err := calls[name](context.Background())
			if err == nil {
				t.Errorf("%s on a dead load balancer returned no error", name)
			} else if took := time.Since(start); took > f.DeadWithin {
				t.Errorf("%s on a dead load balancer took %s (limit %s): %v", name, took, f.DeadWithin, err)
			} else {
				t.Logf("%s: %v", name, err)
			}
		}
	})
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return c
}

func find(ms []lb.Member, name string) (lb.Member, bool) {
	for _, m := range ms {
		if m.Name == name {
			return m, true
		}
	}
	return lb.Member{}, false
}

// waitFor polls Members until ok, failing the test after f.Within.
func waitFor(t *testing.T, f Fixture, what string, ok func([]lb.Member) bool) []lb.Member {
	t.Helper()
	deadline := time.Now().Add(f.Within)
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		ms, err := f.Balancer.Members(ctx(t))
		if err == nil && ok(ms) {
			return ms
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: not after %s; last Members() = %+v, %v", what, f.Within, ms, err)
		}
		<-tick.C
	}
}

// Member returns the member called name as b sees it now, failing the test
// when there is none.
func Member(t testing.TB, b lb.Balancer, name string) lb.Member {
	t.Helper()
	ms, err := b.Members(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	m, ok := find(ms, name)
	if !ok {
		t.Fatalf("no member %s in %+v", name, ms)
	}
	return m
}

// WaitMember polls b until ok holds for the member called name and returns
// it, failing the test after within.
func WaitMember(t testing.TB, b lb.Balancer, name string, within time.Duration, ok func(lb.Member) bool) lb.Member {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		m := Member(t, b, name)
		if ok(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("member %s: still %+v after %s", name, m, within)
		}
		<-tick.C
	}
}
