package release_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

// hotfixHooks is a hooks block where each hook touches a file named after
// itself and the release in shared/ran: three of them are marked
// hotfix: skip, one in each stage, one of them run_once; plain and
// hotfix: run hooks run always. gate fails while shared/fail exists.
const hotfixHooks = `  collect: {when: prepare, hotfix: skip, commands: ['mkdir -p $DROVER_SHARED_DIR/ran && touch $DROVER_SHARED_DIR/ran/collect-$DROVER_RELEASE']}
  build: {when: prepare, hotfix: run, commands: ['mkdir -p $DROVER_SHARED_DIR/ran && touch $DROVER_SHARED_DIR/ran/build-$DROVER_RELEASE']}
  gate: {when: prepare, commands: ['test ! -f $DROVER_SHARED_DIR/fail']}
  migrate: {when: before_activate, run_once: true, role: db, hotfix: skip, commands: ['touch $DROVER_SHARED_DIR/ran/migrate-$DROVER_RELEASE']}
  warm: {when: before_activate, hotfix: skip, commands: ['touch $DROVER_SHARED_DIR/ran/warm-$DROVER_RELEASE']}
  purge: {when: after_activate, hotfix: skip, commands: ['touch $DROVER_SHARED_DIR/ran/purge-$DROVER_RELEASE']}
  after_activate: [touch $DROVER_SHARED_DIR/ran/notify-$DROVER_RELEASE]
`

// ran returns the hooks that ran for release rid, by the files they touched.
func ran(t *testing.T, a *apptest.App, rid string) []string {
	t.Helper()
	var out []string
	for _, h := range []string{"collect", "build", "migrate", "warm", "purge", "notify"} {
		if _, err := os.Stat(filepath.Join(a.DeployTo, "shared", "ran", h+"-"+rid)); err == nil {
			out = append(out, h)
		}
	}
	return out
}

// deployHotfix prepares rid (a hotfix when hotfix is set), runs its
// run_once hook as the rollout would on this host, and activates it.
func deployHotfix(t *testing.T, e *release.Engine, rid, commit string, hotfix bool) {
	t.Helper()
	ctx := context.Background()
	if _, err := e.Prepare(ctx, release.PrepareOptions{ID: rid, Commit: commit, Hotfix: hotfix}); err != nil {
		t.Fatalf("prepare %s: %v", rid, err)
	}
	if err := e.RunHooks(ctx, rid, "before_activate", []string{"migrate"}); err != nil {
		t.Fatalf("run_once hooks of %s: %v", rid, err)
	}
	if err := e.Activate(ctx, rid); err != nil {
		t.Fatalf("activate %s: %v", rid, err)
	}
}

// TestHotfixSkipsMarkedHooks: a hotfix release runs no hook marked
// hotfix: skip, in any stage, run_once or not, and records that it is a
// hotfix; a normal release of the same commit runs every hook.
func TestHotfixSkipsMarkedHooks(t *testing.T) {
	a := apptest.New(t, apptest.Options{NoService: true, Extra: hotfixHooks})
	e := engine(a)
	var events []release.Event
	e.Emit = func(ev release.Event) { events = append(events, ev) }
	c := a.Repo.Head()

	r1 := id(1, c)
	deployHotfix(t, e, r1, c, false)
	if got, want := ran(t, a, r1), []string{"collect", "build", "migrate", "warm", "purge", "notify"}; !slices.Equal(got, want) {
		t.Fatalf("a normal release ran hooks %v, want %v", got, want)
	}

	r2 := id(2, c)
	deployHotfix(t, e, r2, c, true)
	if got, want := ran(t, a, r2), []string{"build", "notify"}; !slices.Equal(got, want) {
		t.Fatalf("a hotfix release ran hooks %v, want only %v (the others say hotfix: skip)", got, want)
	}
	if current(t, a) != r2 {
		t.Fatalf("current is %s, want the hotfix %s", current(t, a), r2)
	}
	if rec := record(t, e, r2); !rec.Hotfix {
		t.Errorf("release %s is not recorded as a hotfix: %+v", r2, rec)
	}
	if rec := record(t, e, r1); rec.Hotfix {
		t.Errorf("release %s is recorded as a hotfix", r1)
	}
	// Each skip is said, where the hook would have run.
	var said []string
	for _, ev := range events {
		if ev.Kind == release.EventInfo && ev.Line == "hook "+strings.TrimPrefix(ev.Step, "hook:")+" "+release.HotfixSkipped {
			said = append(said, ev.Step)
		}
	}
	if want := []string{"hook:collect", "hook:migrate", "hook:warm", "hook:purge"}; !slices.Equal(said, want) {
		t.Errorf("skips announced for %v, want %v", said, want)
	}
}

// TestHotfixResumeStillSkips: a hotfix prepare that fails is resumed by a
// prepare that does not say hotfix (as after a lost deployer): the
// release's record decides, and the marked hooks stay skipped through
// activation.
func TestHotfixResumeStillSkips(t *testing.T) {
	a := apptest.New(t, apptest.Options{NoService: true, Extra: hotfixHooks})
	e := engine(a)
	c := a.Repo.Head()
	fail := filepath.Join(a.DeployTo, "shared", "fail")
	if err := os.MkdirAll(filepath.Dir(fail), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(fail, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	r1 := id(1, c)
	if _, err := e.Prepare(context.Background(), release.PrepareOptions{ID: r1, Commit: c, Hotfix: true}); err == nil {
		t.Fatal("prepare passed its failing gate hook")
	}
	if err := os.Remove(fail); err != nil {
		t.Fatal(err)
	}
	deployHotfix(t, e, r1, c, false)
	if got, want := ran(t, a, r1), []string{"build", "notify"}; !slices.Equal(got, want) {
		t.Fatalf("the resumed hotfix ran hooks %v, want only %v", got, want)
	}
	if rec := record(t, e, r1); !rec.Hotfix || rec.Status != release.StatusActive {
		t.Errorf("resumed hotfix record: hotfix %v, status %s", rec.Hotfix, rec.Status)
	}
}

func record(t *testing.T, e *release.Engine, rid string) *release.Record {
	t.Helper()
	recs, _, err := e.Releases()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.ID == rid {
			return r
		}
	}
	t.Fatalf("release %s is not recorded", rid)
	return nil
}
