package server_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/drover/drover/internal/api"
	"github.com/drover/drover/internal/server"
	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/dbtest"
)

func TestMain(m *testing.M) { dbtest.Main(m) }

// TestReplicasWakeEachOther runs two server replicas on one database: an
// agent long-polls replica A, a release is created through replica B, and
// A's long-poll answers with its rollout's task well before its wait ends.
func TestReplicasWakeEachOther(t *testing.T) {
	for _, backend := range []string{dbtest.Postgres, dbtest.MySQL} {
		t.Run(backend, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			url := dbtest.New(t, backend)
			replica := func() (*httptest.Server, store.Store) {
				st, err := store.Open(ctx, url)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close() })
				s := server.New(st, nil)
				if err := s.Start(ctx); err != nil {
					t.Fatal(err)
				}
				hs := httptest.NewServer(s.Handler())
				t.Cleanup(hs.Close)
				return hs, st
			}
			a, st := replica()
			b, _ := replica()
			dir := t.TempDir()
			if _, err := server.EnsureAdminToken(ctx, st, dir); err != nil {
				t.Fatal(err)
			}
			admin := readToken(t, dir)
			adminB, _ := api.NewClient(b.URL, admin, "")
			adminA, _ := api.NewClient(a.URL, admin, "")
			jt, err := adminA.CreateJoinToken(ctx, api.CreateJoinToken{Apps: []string{"hello"}})
			if err != nil {
				t.Fatal(err)
			}
			anon, _ := api.NewClient(a.URL, "", "")
			j, err := anon.Join(ctx, api.Join{JoinToken: jt.Token, Node: "web1", Hostname: "web1", Apps: []api.NodeApp{{App: "hello", Env: "prod"}}})
			if err != nil {
				t.Fatal(err)
			}
			agent, _ := api.NewClient(a.URL, j.Token, "")
			d, err := agent.Desired(ctx, -1, 0)
			if err != nil {
				t.Fatal(err)
			}
			type res struct {
				d   *api.Desired
				err error
			}
			got := make(chan res, 1)
			// The release's creation wakes the poll first (its rollout is
			// queued, nothing to do yet); the poll goes on until the
			// rollout's first task reaches the node.
			go func() {
				known := d.Version
				for {
					d2, err := agent.Desired(ctx, known, 20*time.Second)
					if err != nil || d2.Apps[0].Release != nil || d2.Version == known {
						got <- res{d2, err}
						return
					}
					known = d2.Version
				}
			}()
			// Let the poll reach replica A and subscribe, then create on B.
			deadline := time.Now().Add(300 * time.Millisecond)
			for time.Now().Before(deadline) {
				select {
				case r := <-got:
					t.Fatalf("long-poll returned before the release: %+v %v", r.d, r.err)
				case <-time.After(50 * time.Millisecond):
				}
			}
			start := time.Now()
			rel, err := adminB.CreateRelease(ctx, api.CreateRelease{App: "hello", Env: "prod", Spec: "tag:v1", Commit: sha})
			if err != nil {
				t.Fatal(err)
			}
			select {
			case r := <-got:
				if r.err != nil || r.d.Apps[0].Release == nil || r.d.Apps[0].Release.ID != rel.ID {
					t.Fatalf("replica A answered %+v %v", r.d, r.err)
				}
				t.Logf("%s: replica A woke %s after the release was created on B", backend, time.Since(start).Round(time.Millisecond))
				if time.Since(start) > 5*time.Second {
					t.Errorf("woke after %s", time.Since(start))
				}
			case <-time.After(15 * time.Second):
				t.Fatal("replica A's long-poll did not wake for a release created on replica B")
			}
		})
	}
}
