package store_test

// The conformance suite every backend runs (restic's internal/backend/test
// style): each test gets a fresh database from dbtest and exercises the
// Store interface only, so a backend passes exactly when it behaves like the
// others.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/store"
	"github.com/drover/drover/internal/testenv/dbtest"
)

type suite struct{ backend string }

func runSuite(t *testing.T, backend string) {
	s := suite{backend}
	dbtest.New(t, backend) // start the server once, or skip the whole backend with the reason
	for _, tc := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"Releases", s.testReleases},
		{"ResolveFirstWins", s.testResolveFirstWins},
		{"Versions", s.testVersions},
		{"Nodes", s.testNodes},
		{"Upgrades", s.testUpgrades},
		{"StepLogAppend", s.testStepLogAppend},
		{"Tokens", s.testTokens},
		{"TokenScope", s.testTokenScope},
		{"JoinTokenConsumedOnce", s.testJoinTokenRace},
		{"Audit", s.testAudit},
		{"MigrationsIdempotent", s.testMigrations},
		{"SchemaSQLInstall", s.testSchemaSQL},
		{"NoCreateRight", s.testNoCreateRight},
		{"WatchAcrossReplicas", s.testWatch},
		{"WatchSlowReceiverLosesNothing", s.testWatchSlowReceiver},
		{"QueueFIFO", s.testQueueFIFO},
		{"QueueOneHolder", s.testQueueOneHolder},
		{"QueueExpiry", s.testQueueExpiry},
		{"QueueSupersede", s.testQueueSupersede},
		{"QueueCancel", s.testQueueCancel},
		{"Environments", s.testEnvironments},
		{"Rollouts", s.testRollouts},
		{"RolloutNodes", s.testRolloutNodes},
		{"QueueResumable", s.testQueueResumable},
		{"TakeOverRace", s.testTakeOverRace},
		{"FenceAcrossReplicas", s.testFenceAcrossReplicas},
		{"UpgradeRolloutTask", s.testUpgradeRolloutTask},
		{"MigrateCurrentRelease", s.testMigrateCurrentRelease},
		{"AssignMany", s.testAssignMany},
	} {
		t.Run(tc.name, tc.fn)
	}
}

// open returns a Store on a fresh database, closed when the test ends, and
// the database's URL (to open a second replica).
func (s suite) open(t *testing.T) (store.Store, string) {
	t.Helper()
	url := dbtest.New(t, s.backend)
	return s.openURL(t, url), url
}

func (s suite) openURL(t *testing.T, url string) store.Store {
	t.Helper()
	st, err := store.Open(ctxT(t), url)
	if err != nil {
		t.Fatalf("open %s: %v", s.backend, err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	if st.Dialect() != s.backend {
		t.Fatalf("Dialect() = %q, want %q", st.Dialect(), s.backend)
	}
	return st
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("err = %v, want %v", err, target)
	}
}

// at is a fixed time with microseconds, to check times survive storage.
var at = time.Date(2026, 11, 22, 10, 15, 0, 123456000, time.UTC)

func (s suite) testReleases(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)

	_, err := st.LatestRelease(ctx, "shop", "production")
	wantErr(t, err, store.ErrNotFound)
	_, err = st.CreateRelease(ctx, store.Release{App: "shop", Env: "production"})
	wantErr(t, err, store.ErrInvalid)

	in := store.Release{App: "shop", Env: "production", Spec: "tag:v1.0", Commit: "3f9c2ab", CreatedBy: "alice", CreatedAt: at, Note: "first"}
	r1, err := st.CreateRelease(ctx, in)
	must(t, err)
	if r1.ID == 0 {
		t.Fatal("CreateRelease gave no ID")
	}
	in.ID = r1.ID
	got, err := st.GetRelease(ctx, r1.ID)
	must(t, err)
	if !reflect.DeepEqual(got, in) {
		t.Fatalf("GetRelease = %+v\nwant          %+v", got, in)
	}
	r2, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "branch:main", CreatedBy: "ci"})
	must(t, err)
	if r2.CreatedAt.IsZero() || time.Since(r2.CreatedAt) > time.Minute {
		t.Fatalf("zero CreatedAt became %v, want now", r2.CreatedAt)
	}
	r3, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "staging", Spec: "branch:staging"})
	must(t, err)
	r4, err := st.CreateRelease(ctx, store.Release{App: "blog", Env: "production", Spec: "tag:v9"})
	must(t, err)
	if !(r1.ID < r2.ID && r2.ID < r3.ID && r3.ID < r4.ID) {
		t.Fatalf("IDs not increasing: %d %d %d %d", r1.ID, r2.ID, r3.ID, r4.ID)
	}

	ids := func(rs []store.Release) []int64 {
		out := []int64{}
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	for _, tc := range []struct {
		f    store.ReleaseFilter
		want []int64
	}{
		{store.ReleaseFilter{}, []int64{r4.ID, r3.ID, r2.ID, r1.ID}},
		{store.ReleaseFilter{App: "shop"}, []int64{r3.ID, r2.ID, r1.ID}},
		{store.ReleaseFilter{App: "shop", Env: "production"}, []int64{r2.ID, r1.ID}},
		{store.ReleaseFilter{App: "shop", Limit: 1}, []int64{r3.ID}},
		{store.ReleaseFilter{App: "shop", BeforeID: r3.ID}, []int64{r2.ID, r1.ID}},
		{store.ReleaseFilter{App: "nope"}, []int64{}},
	} {
		rs, err := st.ListReleases(ctx, tc.f)
		must(t, err)
		if !reflect.DeepEqual(ids(rs), tc.want) {
			t.Errorf("ListReleases(%+v) = %v, want %v", tc.f, ids(rs), tc.want)
		}
	}
	latest, err := st.LatestRelease(ctx, "shop", "production")
	must(t, err)
	if latest.ID != r2.ID {
		t.Fatalf("LatestRelease = %d, want %d", latest.ID, r2.ID)
	}
	_, err = st.GetRelease(ctx, 999999)
	wantErr(t, err, store.ErrNotFound)

	envs, err := st.ListEnvironments(ctx, "")
	must(t, err)
	var names []string
	for _, e := range envs {
		names = append(names, e.App+"/"+e.Name)
	}
	if want := []string{"blog/production", "shop/production", "shop/staging"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("ListEnvironments = %v, want %v", names, want)
	}
	envs, err = st.ListEnvironments(ctx, "shop")
	must(t, err)
	if len(envs) != 2 || envs[0].Version != 2 || envs[1].Version != 1 {
		t.Fatalf("ListEnvironments(shop) = %+v, want production v2, staging v1", envs)
	}
}

func (s suite) testResolveFirstWins(t *testing.T) {
	st, url := s.open(t)
	replica := s.openURL(t, url)
	ctx := ctxT(t)
	r, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "branch:main"})
	must(t, err)
	if r.Commit != "" {
		t.Fatalf("unresolved release has commit %q", r.Commit)
	}
	// Many agents on two replicas resolve at once; all must agree.
	const n = 16
	results := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	startGate := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-startGate
			db := st
			if i%2 == 1 {
				db = replica
			}
			results[i], errs[i] = db.ResolveRelease(ctx, r.ID, fmt.Sprintf("commit%02d", i))
		}()
	}
	close(startGate)
	wg.Wait()
	for i := range n {
		must(t, errs[i])
		if results[i] != results[0] {
			t.Fatalf("resolver %d got %q, resolver 0 got %q: not one winner", i, results[i], results[0])
		}
	}
	got, err := st.GetRelease(ctx, r.ID)
	must(t, err)
	if got.Commit != results[0] || !strings.HasPrefix(got.Commit, "commit") {
		t.Fatalf("stored commit %q, resolvers got %q", got.Commit, results[0])
	}
	again, err := st.ResolveRelease(ctx, r.ID, "late")
	must(t, err)
	if again != results[0] {
		t.Fatalf("late resolver got %q, want the winner %q", again, results[0])
	}
	pre, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "commit:abc", Commit: "abc"})
	must(t, err)
	if c, err := st.ResolveRelease(ctx, pre.ID, "other"); err != nil || c != "abc" {
		t.Fatalf("resolving a resolved release = %q, %v; want abc", c, err)
	}
	_, err = st.ResolveRelease(ctx, 999999, "x")
	wantErr(t, err, store.ErrNotFound)
	_, err = st.ResolveRelease(ctx, r.ID, "")
	wantErr(t, err, store.ErrInvalid)
}

func (s suite) testVersions(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	version := func(app, env string) int64 {
		t.Helper()
		v, err := st.Version(ctx, app, env)
		must(t, err)
		return v
	}
	if v := version("shop", "production"); v != 0 {
		t.Fatalf("version of an unknown env = %d, want 0", v)
	}
	_, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1"})
	must(t, err)
	if v := version("shop", "production"); v != 1 {
		t.Fatalf("version after one release = %d, want 1", v)
	}
	_, err = st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v2"})
	must(t, err)
	v, err := st.BumpVersion(ctx, "shop", "production")
	must(t, err)
	if v != 3 || version("shop", "production") != 3 {
		t.Fatalf("BumpVersion = %d, Version = %d, want 3", v, version("shop", "production"))
	}
	if v := version("shop", "staging"); v != 0 {
		t.Fatalf("another env's version moved to %d", v)
	}
	v, err = st.BumpVersion(ctx, "new", "env")
	must(t, err)
	if v != 1 {
		t.Fatalf("BumpVersion of a new env = %d, want 1", v)
	}
	_, err = st.BumpVersion(ctx, "", "env")
	wantErr(t, err, store.ErrInvalid)
}

func (s suite) testNodes(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	n, err := st.RegisterNode(ctx, store.Node{Name: "web1", Hostname: "web1.internal", App: "shop", Env: "production",
		Roles: []string{"web", "db"}, AgentVersion: "0.1.0", LastSeen: at})
	must(t, err)
	if n.ID == 0 || n.Hostname != "web1.internal" || !reflect.DeepEqual(n.Roles, []string{"web", "db"}) ||
		!n.LastSeen.Equal(at) || !n.CreatedAt.Equal(at) || n.CurrentRelease != 0 {
		t.Fatalf("RegisterNode = %+v", n)
	}
	// Registering again updates in place.
	later := at.Add(time.Hour)
	n2, err := st.RegisterNode(ctx, store.Node{Name: "web1", Hostname: "web1.new", App: "shop", Env: "production",
		Roles: []string{"web"}, AgentVersion: "0.2.0", LastSeen: later})
	must(t, err)
	if n2.ID != n.ID || n2.Hostname != "web1.new" || !reflect.DeepEqual(n2.Roles, []string{"web"}) ||
		n2.AgentVersion != "0.2.0" || !n2.LastSeen.Equal(later) || !n2.CreatedAt.Equal(at) {
		t.Fatalf("re-RegisterNode = %+v, want same ID %d updated", n2, n.ID)
	}
	// The same agent in another app, and other nodes.
	other, err := st.RegisterNode(ctx, store.Node{Name: "web1", App: "blog", Env: "production"})
	must(t, err)
	if other.ID == n.ID || other.Roles == nil || len(other.Roles) != 0 {
		t.Fatalf("node in another app = %+v", other)
	}
	_, err = st.RegisterNode(ctx, store.Node{Name: "web2", App: "shop", Env: "production"})
	must(t, err)
	_, err = st.RegisterNode(ctx, store.Node{Name: "stage1", App: "shop", Env: "staging"})
	must(t, err)
	_, err = st.RegisterNode(ctx, store.Node{App: "shop", Env: "staging"})
	wantErr(t, err, store.ErrInvalid)

	list := func(f store.NodeFilter) []string {
		t.Helper()
		ns, err := st.ListNodes(ctx, f)
		must(t, err)
		out := []string{}
		for _, n := range ns {
			out = append(out, n.App+"/"+n.Env+"/"+n.Name)
		}
		return out
	}
	if got, want := list(store.NodeFilter{}), []string{"blog/production/web1", "shop/production/web1", "shop/production/web2", "shop/staging/stage1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("ListNodes = %v, want %v", got, want)
	}
	if got, want := list(store.NodeFilter{App: "shop", Env: "production"}), []string{"shop/production/web1", "shop/production/web2"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("ListNodes(shop/production) = %v, want %v", got, want)
	}
	if got, want := list(store.NodeFilter{Name: "web1"}), []string{"blog/production/web1", "shop/production/web1"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("ListNodes(web1) = %v, want %v", got, want)
	}

	found, err := st.FindNode(ctx, "web1", "shop", "production")
	must(t, err)
	if found.ID != n.ID {
		t.Fatalf("FindNode = %d, want %d", found.ID, n.ID)
	}
	_, err = st.FindNode(ctx, "web9", "shop", "production")
	wantErr(t, err, store.ErrNotFound)

	seen := at.Add(2 * time.Hour)
	must(t, st.TouchNode(ctx, n.ID, seen))
	wantErr(t, st.TouchNode(ctx, 999999, seen), store.ErrNotFound)

	r, err := st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1"})
	must(t, err)
	must(t, st.SetNodeRelease(ctx, n.ID, r.ID))
	wantErr(t, st.SetNodeRelease(ctx, 999999, r.ID), store.ErrNotFound)
	wantErr(t, st.SetNodeRelease(ctx, n.ID, 999999), store.ErrNotFound)
	got, err := st.GetNode(ctx, n.ID)
	must(t, err)
	if !got.LastSeen.Equal(seen) || got.CurrentRelease != r.ID {
		t.Fatalf("after touch and set release: %+v", got)
	}
	// Many at once (the server's batched last-seen times), 1,200 IDs so
	// that more than one transaction runs; gone IDs are skipped.
	touchedAt := seen.Add(time.Hour)
	many := map[int64]time.Time{n.ID: touchedAt}
	for id := int64(1_000_000); len(many) < 1200; id++ {
		many[id] = touchedAt
	}
	must(t, st.TouchNodes(ctx, many))
	if got, err = st.GetNode(ctx, n.ID); err != nil || !got.LastSeen.Equal(touchedAt) {
		t.Fatalf("after TouchNodes: %+v, %v; want last seen %v", got, err, touchedAt)
	}
	_, err = st.GetNode(ctx, 999999)
	wantErr(t, err, store.ErrNotFound)
}

// fixture makes a release and a node for upgrade tests.
func fixture(t *testing.T, st store.Store, app, env, node string) (store.Release, store.Node) {
	t.Helper()
	ctx := ctxT(t)
	r, err := st.CreateRelease(ctx, store.Release{App: app, Env: env, Spec: "tag:v1", Commit: "abc"})
	must(t, err)
	n, err := st.RegisterNode(ctx, store.Node{Name: node, App: app, Env: env})
	must(t, err)
	return r, n
}

func (s suite) testUpgrades(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	r, n := fixture(t, st, "shop", "production", "web1")
	r2, n2 := fixture(t, st, "shop", "staging", "stage1")

	u, err := st.CreateUpgrade(ctx, store.Upgrade{NodeID: n.ID, ReleaseID: r.ID, CreatedAt: at})
	must(t, err)
	if u.ID == 0 || u.Status != store.UpgradePending {
		t.Fatalf("CreateUpgrade = %+v, want an ID and status pending", u)
	}
	_, err = st.CreateUpgrade(ctx, store.Upgrade{NodeID: n.ID, ReleaseID: r.ID, Status: "dancing"})
	wantErr(t, err, store.ErrInvalid)
	_, err = st.CreateUpgrade(ctx, store.Upgrade{NodeID: 999999, ReleaseID: r.ID})
	wantErr(t, err, store.ErrNotFound)
	_, err = st.CreateUpgrade(ctx, store.Upgrade{NodeID: n.ID, ReleaseID: 999999})
	wantErr(t, err, store.ErrNotFound)

	u.Status, u.CurrentStep, u.StartedAt = store.UpgradePreparing, "fetch", at.Add(time.Second)
	must(t, st.UpdateUpgrade(ctx, u))
	must(t, st.SaveStep(ctx, store.Step{UpgradeID: u.ID, Name: "fetch", Status: "running", StartedAt: at.Add(time.Second)}))
	must(t, st.SaveStep(ctx, store.Step{UpgradeID: u.ID, Name: "checkout", Status: "running", StartedAt: at.Add(3 * time.Second)}))
	must(t, st.SaveStep(ctx, store.Step{UpgradeID: u.ID, Name: "fetch", Status: "ok", StartedAt: at.Add(time.Second), EndedAt: at.Add(2 * time.Second)}))
	must(t, st.AppendStepLog(ctx, u.ID, "fetch", "remote: counting objects\n"))
	must(t, st.AppendStepLog(ctx, u.ID, "fetch", "done\n"))
	err = st.SaveStep(ctx, store.Step{UpgradeID: 999999, Name: "fetch", Status: "ok"})
	wantErr(t, err, store.ErrNotFound)
	wantErr(t, st.AppendStepLog(ctx, 999999, "fetch", "x"), store.ErrNotFound)
	u.Status, u.CurrentStep, u.EndedAt, u.Error = store.UpgradeFailed, "checkout", at.Add(4*time.Second), "checkout: disk full"
	must(t, st.UpdateUpgrade(ctx, u))
	wantErr(t, st.UpdateUpgrade(ctx, store.Upgrade{ID: 999999, Status: store.UpgradeFailed}), store.ErrNotFound)
	wantErr(t, st.UpdateUpgrade(ctx, store.Upgrade{ID: u.ID, Status: "bogus"}), store.ErrInvalid)

	got, err := st.GetUpgrade(ctx, u.ID)
	must(t, err)
	want := store.Upgrade{ID: u.ID, NodeID: n.ID, ReleaseID: r.ID, Status: store.UpgradeFailed, CurrentStep: "checkout",
		CreatedAt: at, StartedAt: at.Add(time.Second), EndedAt: at.Add(4 * time.Second), Error: "checkout: disk full",
		Steps: []store.Step{
			{UpgradeID: u.ID, Name: "fetch", Status: "ok", StartedAt: at.Add(time.Second), EndedAt: at.Add(2 * time.Second), Log: "remote: counting objects\ndone\n"},
			{UpgradeID: u.ID, Name: "checkout", Status: "running", StartedAt: at.Add(3 * time.Second)},
		}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("GetUpgrade =\n%+v\nwant\n%+v", got, want)
	}
	_, err = st.GetUpgrade(ctx, 999999)
	wantErr(t, err, store.ErrNotFound)

	u2, err := st.CreateUpgrade(ctx, store.Upgrade{NodeID: n.ID, ReleaseID: r.ID})
	must(t, err)
	u3, err := st.CreateUpgrade(ctx, store.Upgrade{NodeID: n2.ID, ReleaseID: r2.ID, Status: store.UpgradeSucceeded})
	must(t, err)
	ids := func(f store.UpgradeFilter) []int64 {
		t.Helper()
		us, err := st.ListUpgrades(ctx, f)
		must(t, err)
		out := []int64{}
		for _, u := range us {
			if u.Steps != nil {
				t.Errorf("ListUpgrades filled Steps")
			}
			out = append(out, u.ID)
		}
		return out
	}
	for _, tc := range []struct {
		f    store.UpgradeFilter
		want []int64
	}{
		{store.UpgradeFilter{}, []int64{u3.ID, u2.ID, u.ID}},
		{store.UpgradeFilter{App: "shop", Env: "production"}, []int64{u2.ID, u.ID}},
		{store.UpgradeFilter{App: "shop", Env: "staging"}, []int64{u3.ID}},
		{store.UpgradeFilter{NodeID: n.ID, Limit: 1}, []int64{u2.ID}},
		{store.UpgradeFilter{ReleaseID: r2.ID}, []int64{u3.ID}},
		{store.UpgradeFilter{App: "blog"}, []int64{}},
	} {
		if got := ids(tc.f); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ListUpgrades(%+v) = %v, want %v", tc.f, got, tc.want)
		}
	}
}

// testStepLogAppend appends from many goroutines (an agent streaming output
// through two replicas) and checks nothing is lost.
func (s suite) testStepLogAppend(t *testing.T) {
	st, url := s.open(t)
	replica := s.openURL(t, url)
	ctx := ctxT(t)
	r, n := fixture(t, st, "shop", "production", "web1")
	u, err := st.CreateUpgrade(ctx, store.Upgrade{NodeID: n.ID, ReleaseID: r.ID})
	must(t, err)
	const writers, lines = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, writers*lines)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db := st
			if w%2 == 1 {
				db = replica
			}
			for i := range lines {
				// The first append of each writer may create the step.
				if err := db.AppendStepLog(ctx, u.ID, "prepare", fmt.Sprintf("w%d-l%d\n", w, i)); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got, err := st.GetUpgrade(ctx, u.ID)
	must(t, err)
	if len(got.Steps) != 1 || got.Steps[0].Status != "running" || got.Steps[0].StartedAt.IsZero() {
		t.Fatalf("steps = %+v, want one running step made by AppendStepLog", got.Steps)
	}
	log := got.Steps[0].Log
	for w := range writers {
		for i := range lines {
			if !strings.Contains(log, fmt.Sprintf("w%d-l%d\n", w, i)) {
				t.Fatalf("line w%d-l%d lost; log:\n%s", w, i, log)
			}
		}
	}
	if c := strings.Count(log, "\n"); c != writers*lines {
		t.Fatalf("log has %d lines, want %d", c, writers*lines)
	}
}

func (s suite) testTokens(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	admin, err := st.CreateToken(ctx, store.Token{Kind: store.TokenAdmin, Hash: "h-admin", Note: "ci", CreatedAt: at})
	must(t, err)
	agent, err := st.CreateToken(ctx, store.Token{Kind: store.TokenAgent, Node: "web1", Hash: "h-agent"})
	must(t, err)
	_, err = st.CreateToken(ctx, store.Token{Kind: store.TokenAdmin, Hash: "h-admin"})
	wantErr(t, err, store.ErrConflict)
	_, err = st.CreateToken(ctx, store.Token{Kind: "root", Hash: "h-x"})
	wantErr(t, err, store.ErrInvalid)
	_, err = st.CreateToken(ctx, store.Token{Kind: store.TokenAgent, Hash: "h-y"})
	wantErr(t, err, store.ErrInvalid)
	_, err = st.CreateToken(ctx, store.Token{Kind: store.TokenAdmin})
	wantErr(t, err, store.ErrInvalid)

	got, err := st.TokenByHash(ctx, "h-admin")
	must(t, err)
	if want := (store.Token{ID: admin.ID, Kind: store.TokenAdmin, Hash: "h-admin", Note: "ci", CreatedAt: at}); !reflect.DeepEqual(got, want) {
		t.Fatalf("TokenByHash = %+v, want %+v", got, want)
	}
	if err := got.Check(time.Now()); err != nil {
		t.Fatalf("fresh admin token: %v", err)
	}
	_, err = st.TokenByHash(ctx, "nope")
	wantErr(t, err, store.ErrNotFound)

	revokedTokens := func(want int64) {
		t.Helper()
		if n, err := st.RevokedTokens(ctx); err != nil || n != want {
			t.Fatalf("RevokedTokens = %d, %v; want %d", n, err, want)
		}
	}
	revokedTokens(0)
	must(t, st.RevokeToken(ctx, admin.ID))
	revokedTokens(1)
	must(t, st.RevokeToken(ctx, admin.ID)) // twice is fine
	revokedTokens(1)
	wantErr(t, st.RevokeToken(ctx, 999999), store.ErrNotFound)
	got, err = st.TokenByHash(ctx, "h-admin")
	must(t, err)
	if !got.Revoked {
		t.Fatal("revoked token not marked revoked")
	}
	wantErr(t, got.Check(time.Now()), store.ErrTokenRevoked)

	now := time.Now().UTC()
	join, err := st.CreateToken(ctx, store.Token{Kind: store.TokenJoin, Hash: "h-join", ExpiresAt: now.Add(time.Hour)})
	must(t, err)
	_, err = st.CreateToken(ctx, store.Token{Kind: store.TokenJoin, Hash: "h-expired", ExpiresAt: now.Add(-time.Second)})
	must(t, err)
	revoked, err := st.CreateToken(ctx, store.Token{Kind: store.TokenJoin, Hash: "h-revoked"})
	must(t, err)
	must(t, st.RevokeToken(ctx, revoked.ID))
	revokedTokens(2)

	used, err := st.ConsumeJoinToken(ctx, "h-join", now)
	must(t, err)
	if used.ID != join.ID || !used.UsedAt.Equal(now.Truncate(time.Microsecond)) {
		t.Fatalf("ConsumeJoinToken = %+v, want token %d used at %v", used, join.ID, now)
	}
	_, err = st.ConsumeJoinToken(ctx, "h-join", now)
	wantErr(t, err, store.ErrTokenUsed)
	_, err = st.ConsumeJoinToken(ctx, "h-expired", now)
	wantErr(t, err, store.ErrTokenExpired)
	_, err = st.ConsumeJoinToken(ctx, "h-revoked", now)
	wantErr(t, err, store.ErrTokenRevoked)
	_, err = st.ConsumeJoinToken(ctx, "h-agent", now)
	wantErr(t, err, store.ErrNotFound)
	_, err = st.ConsumeJoinToken(ctx, "nope", now)
	wantErr(t, err, store.ErrNotFound)

	kinds := func(k store.TokenKind) []int64 {
		t.Helper()
		ts, err := st.ListTokens(ctx, k)
		must(t, err)
		out := []int64{}
		for _, tk := range ts {
			out = append(out, tk.ID)
		}
		return out
	}
	if got := kinds(store.TokenAgent); !reflect.DeepEqual(got, []int64{agent.ID}) {
		t.Fatalf("ListTokens(agent) = %v", got)
	}
	if got := kinds(""); len(got) != 5 {
		t.Fatalf("ListTokens() = %v, want 5 tokens", got)
	}
}

// testTokenScope stores a join token's scope and replaced node, reads them
// back through every way a token is read, and copies them to an agent token.
func (s suite) testTokenScope(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	join, err := st.CreateToken(ctx, store.Token{Kind: store.TokenJoin, Hash: "h-join", Apps: []string{"shop", "blog"}, Envs: []string{"production"}, Replace: "web1"})
	must(t, err)
	wantScope := func(who string, got store.Token, apps, envs []string, replace string) {
		t.Helper()
		if !reflect.DeepEqual(got.Apps, apps) || !reflect.DeepEqual(got.Envs, envs) || got.Replace != replace {
			t.Fatalf("%s: apps %q envs %q replace %q, want %q %q %q", who, got.Apps, got.Envs, got.Replace, apps, envs, replace)
		}
	}
	got, err := st.TokenByHash(ctx, "h-join")
	must(t, err)
	wantScope("TokenByHash", got, []string{"shop", "blog"}, []string{"production"}, "web1")
	used, err := st.ConsumeJoinToken(ctx, "h-join", time.Time{})
	must(t, err)
	wantScope("ConsumeJoinToken", used, join.Apps, join.Envs, "web1")

	_, err = st.CreateToken(ctx, store.Token{Kind: store.TokenAgent, Node: "web1", Hash: "h-agent", Apps: used.Apps, Envs: used.Envs})
	must(t, err)
	_, err = st.CreateToken(ctx, store.Token{Kind: store.TokenAgent, Node: "web2", Hash: "h-any"})
	must(t, err)
	agents, err := st.ListTokens(ctx, store.TokenAgent)
	must(t, err)
	if len(agents) != 2 {
		t.Fatalf("ListTokens(agent) = %+v, want 2", agents)
	}
	wantScope("ListTokens, scoped agent", agents[0], []string{"shop", "blog"}, []string{"production"}, "")
	wantScope("ListTokens, unscoped agent", agents[1], nil, nil, "")
	web1, err := st.AgentTokens(ctx, "web1")
	must(t, err)
	if len(web1) != 1 || web1[0].ID != agents[0].ID {
		t.Fatalf("AgentTokens(web1) = %+v, want token %d only", web1, agents[0].ID)
	}
	wantScope("AgentTokens", web1[0], []string{"shop", "blog"}, []string{"production"}, "")
	if none, err := st.AgentTokens(ctx, "web9"); err != nil || len(none) != 0 {
		t.Fatalf("AgentTokens(web9) = %+v, %v; want none", none, err)
	}
	for _, tc := range []struct {
		tok      store.Token
		app, env string
		want     bool
	}{
		{agents[0], "shop", "production", true},
		{agents[0], "blog", "production", true},
		{agents[0], "shop", "staging", false},
		{agents[0], "admin", "production", false},
		{agents[1], "anything", "anywhere", true},
	} {
		if got := tc.tok.Allows(tc.app, tc.env); got != tc.want {
			t.Errorf("token %d (apps %q envs %q).Allows(%s, %s) = %v, want %v", tc.tok.ID, tc.tok.Apps, tc.tok.Envs, tc.app, tc.env, got, tc.want)
		}
	}

	_, err = st.CreateToken(ctx, store.Token{Kind: store.TokenJoin, Hash: "h-comma", Apps: []string{"a,b"}})
	wantErr(t, err, store.ErrInvalid)
	_, err = st.CreateToken(ctx, store.Token{Kind: store.TokenAgent, Node: "web3", Hash: "h-rep", Replace: "web1"})
	wantErr(t, err, store.ErrInvalid)
}

// testJoinTokenRace consumes each join token from many goroutines spread
// over two replicas at once: exactly one may win.
func (s suite) testJoinTokenRace(t *testing.T) {
	st, url := s.open(t)
	replica := s.openURL(t, url)
	ctx := ctxT(t)
	const rounds, racers = 5, 24
	for round := range rounds {
		hash := fmt.Sprintf("join-%d", round)
		_, err := st.CreateToken(ctx, store.Token{Kind: store.TokenJoin, Hash: hash})
		must(t, err)
		var wg sync.WaitGroup
		gate := make(chan struct{})
		errs := make([]error, racers)
		for i := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				db := st
				if i%2 == 1 {
					db = replica
				}
				<-gate
				_, errs[i] = db.ConsumeJoinToken(ctx, hash, time.Time{})
			}()
		}
		close(gate)
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrTokenUsed):
			default:
				t.Fatalf("round %d: unexpected error %v", round, err)
			}
		}
		if wins != 1 {
			t.Fatalf("round %d: %d of %d racers consumed the join token, want exactly 1", round, wins, racers)
		}
	}
}

func (s suite) testAudit(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	e1, err := st.AppendAudit(ctx, store.AuditEvent{At: at, Actor: "alice", Action: "release.create", Detail: json.RawMessage(`{"app":"shop","release":1}`)})
	must(t, err)
	e2, err := st.AppendAudit(ctx, store.AuditEvent{Actor: "bob", Action: "token.revoke"})
	must(t, err)
	e3, err := st.AppendAudit(ctx, store.AuditEvent{Actor: "alice", Action: "token.revoke", Detail: json.RawMessage(`["x"]`)})
	must(t, err)
	_, err = st.AppendAudit(ctx, store.AuditEvent{Actor: "alice", Action: "x", Detail: json.RawMessage(`{not json`)})
	wantErr(t, err, store.ErrInvalid)
	_, err = st.AppendAudit(ctx, store.AuditEvent{Action: "x"})
	wantErr(t, err, store.ErrInvalid)

	all, err := st.ListAudit(ctx, store.AuditFilter{})
	must(t, err)
	if len(all) != 3 || all[0].ID != e3.ID || all[1].ID != e2.ID || all[2].ID != e1.ID {
		t.Fatalf("ListAudit = %+v, want e3, e2, e1", all)
	}
	var detail map[string]any
	must(t, json.Unmarshal(all[2].Detail, &detail))
	if detail["app"] != "shop" || !all[2].At.Equal(at) || all[2].Actor != "alice" || all[2].Action != "release.create" {
		t.Fatalf("event 1 read back as %+v", all[2])
	}
	if string(all[1].Detail) != "{}" {
		t.Fatalf("empty detail stored as %q, want {}", all[1].Detail)
	}
	for _, tc := range []struct {
		f    store.AuditFilter
		want []int64
	}{
		{store.AuditFilter{Actor: "alice"}, []int64{e3.ID, e1.ID}},
		{store.AuditFilter{Action: "token.revoke"}, []int64{e3.ID, e2.ID}},
		{store.AuditFilter{Limit: 1}, []int64{e3.ID}},
		{store.AuditFilter{BeforeID: e2.ID}, []int64{e1.ID}},
	} {
		es, err := st.ListAudit(ctx, tc.f)
		must(t, err)
		got := []int64{}
		for _, e := range es {
			got = append(got, e.ID)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("ListAudit(%+v) = %v, want %v", tc.f, got, tc.want)
		}
	}
}

func (s suite) testMigrations(t *testing.T) {
	url := dbtest.New(t, s.backend)
	ctx := ctxT(t)
	applied, err := store.Migrate(ctx, url)
	must(t, err)
	if len(applied) == 0 {
		t.Fatal("Migrate on an empty database applied nothing")
	}
	applied, err = store.Migrate(ctx, url)
	must(t, err)
	if len(applied) != 0 {
		t.Fatalf("second Migrate applied %v, want nothing", applied)
	}
	first := s.openURL(t, url)
	r, err := first.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1"})
	must(t, err)
	must(t, first.Close())
	second := s.openURL(t, url) // opening again migrates nothing and keeps the data
	got, err := second.LatestRelease(ctx, "shop", "production")
	must(t, err)
	if got.ID != r.ID {
		t.Fatalf("after reopening: latest release %d, want %d", got.ID, r.ID)
	}
}

// testSchemaSQL installs the schema by hand from SchemaSQL, as an
// administrator would, and checks the store accepts it as current.
func (s suite) testSchemaSQL(t *testing.T) {
	url := dbtest.New(t, s.backend)
	ctx := ctxT(t)
	schema := store.SchemaSQL(s.backend)
	if s.backend == dbtest.SQLite {
		target, err := store.ParseURL(url)
		must(t, err)
		db, err := sql.Open("sqlite", target.DSN)
		must(t, err)
		_, err = db.ExecContext(ctx, schema)
		must(t, errors.Join(err, db.Close()))
	} else {
		dbtest.Exec(t, s.backend, url, schema)
	}
	applied, err := store.Migrate(ctx, url)
	must(t, err)
	if len(applied) != 0 {
		t.Fatalf("after installing SchemaSQL, Migrate applied %v, want nothing", applied)
	}
	st := s.openURL(t, url)
	_, err = st.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1"})
	must(t, err)
}

// testNoCreateRight opens as a user that may not create tables: on an empty
// database that is a clear PermissionError; once an administrator installed
// the schema, the same kind of user runs the store.
func (s suite) testNoCreateRight(t *testing.T) {
	if s.backend == dbtest.SQLite {
		t.Skip("SQLite has no database users; file permissions are the operator's")
	}
	url := dbtest.New(t, s.backend)
	ctx := ctxT(t)
	weak := dbtest.Unprivileged(t, s.backend, url)
	_, err := store.Open(ctx, weak)
	if err == nil {
		t.Fatal("Open as a user without CREATE succeeded on an empty database")
	}
	var perr *store.PermissionError
	if !errors.Is(err, store.ErrPermission) || !errors.As(err, &perr) {
		t.Fatalf("Open as a user without CREATE: %v; want a *store.PermissionError", err)
	}
	msg := err.Error()
	for _, want := range []string{"CREATE", "--print-sql", "GRANT"} {
		if !strings.Contains(msg, want) {
			t.Errorf("permission error does not mention %q: %s", want, msg)
		}
	}
	t.Logf("error shown to the operator: %s", msg)

	dbtest.Exec(t, s.backend, url, store.SchemaSQL(s.backend))
	weak = dbtest.Unprivileged(t, s.backend, url) // granted on the tables that now exist
	st := s.openURL(t, weak)
	r, n := fixture(t, st, "shop", "production", "web1")
	_, err = st.CreateUpgrade(ctx, store.Upgrade{NodeID: n.ID, ReleaseID: r.ID})
	must(t, err)
}

// testWatch runs two Store instances on one database, as two server
// replicas, and checks a release made on either wakes watchers on both.
func (s suite) testWatch(t *testing.T) {
	a, url := s.open(t)
	b := s.openURL(t, url)
	ctx := ctxT(t)
	watchCtx, stopWatch := context.WithCancel(ctx)
	wa, err := a.Watch(watchCtx)
	must(t, err)
	wb, err := b.Watch(watchCtx)
	must(t, err)

	expect := func(who string, ch <-chan store.Change, want store.Change) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case c, ok := <-ch:
				if !ok {
					t.Fatalf("%s: watch channel closed", who)
				}
				if c == want {
					return
				}
				if c.App != "" && c.App == want.App && c.Env == want.Env && c.Version > want.Version {
					t.Fatalf("%s: got %+v, skipped %+v", who, c, want)
				}
			case <-deadline:
				t.Fatalf("%s: no %+v within 10s", who, want)
			}
		}
	}
	startedAt := time.Now()
	_, err = a.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v1"})
	must(t, err)
	expect("replica a (own write)", wa, store.Change{App: "shop", Env: "production", Version: 1})
	expect("replica b", wb, store.Change{App: "shop", Env: "production", Version: 1})
	t.Logf("release on a reached b's watcher in %s", time.Since(startedAt).Round(time.Millisecond))

	_, err = b.CreateRelease(ctx, store.Release{App: "shop", Env: "production", Spec: "tag:v2"})
	must(t, err)
	expect("replica a", wa, store.Change{App: "shop", Env: "production", Version: 2})
	expect("replica b (own write)", wb, store.Change{App: "shop", Env: "production", Version: 2})

	_, err = b.BumpVersion(ctx, "shop", "staging")
	must(t, err)
	expect("replica a, bump", wa, store.Change{App: "shop", Env: "staging", Version: 1})

	// A second watcher on the same store sees later changes too.
	wa2, err := a.Watch(ctx)
	must(t, err)
	_, err = b.CreateRelease(ctx, store.Release{App: "blog", Env: "production", Spec: "tag:v1"})
	must(t, err)
	expect("replica a, second watcher", wa2, store.Change{App: "blog", Env: "production", Version: 1})

	// Cancelling the context closes the channel.
	stopWatch()
	closed := time.After(5 * time.Second)
	for open := true; open; {
		select {
		case _, open = <-wa:
		case <-closed:
			t.Fatal("watch channel not closed after its context was cancelled")
		}
	}
	// Closing the store closes the rest, and Watch then fails.
	must(t, a.Close())
	for open := true; open; {
		select {
		case _, open = <-wa2:
		case <-time.After(5 * time.Second):
			t.Fatal("watch channel not closed by Close")
		}
	}
	if _, err := a.Watch(ctx); err == nil {
		t.Fatal("Watch after Close succeeded")
	}
}

// testWatchSlowReceiver changes one environment more times than a watch
// channel buffers while its receiver does not read, then another
// environment once: the receiver must still learn of both, with the latest
// version of each (changes may be coalesced, never lost).
func (s suite) testWatchSlowReceiver(t *testing.T) {
	st, _ := s.open(t)
	ctx := ctxT(t)
	w, err := st.Watch(ctx)
	must(t, err)
	const bumps = 300 // more than any buffer a receiver is given
	var last int64
	for range bumps {
		last, err = st.BumpVersion(ctx, "shop", "busy")
		must(t, err)
	}
	quiet, err := st.BumpVersion(ctx, "shop", "quiet")
	must(t, err)
	want := map[string]int64{"busy": last, "quiet": quiet}
	got := map[string]int64{}
	deadline := time.After(10 * time.Second)
	for got["busy"] != want["busy"] || got["quiet"] != want["quiet"] {
		select {
		case c, ok := <-w:
			if !ok {
				t.Fatal("watch channel closed")
			}
			if c.App == "" { // "anything may have changed" covers every environment
				got = want
				continue
			}
			got[c.Env] = max(got[c.Env], c.Version)
		case <-deadline:
			t.Fatalf("after %d changes to shop/busy and one to shop/quiet, the slow receiver saw %v, want %v", bumps, got, want)
		}
	}
}
