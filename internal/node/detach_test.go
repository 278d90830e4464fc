package node_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/transport/local"
)

// TestDeployerGoneMidHook kills the deployer's side of both sessions (the
// lock and a prepare whose hook prints slowly) while the hook runs, as
// kill -9 of the deployer or a dropped connection does: the hook finishes,
// the step is recorded, the next step does not start, the lock is freed
// only then, and resume continues with the step after it.
func TestDeployerGoneMidHook(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover")
	}
	dir := t.TempDir()
	log, doneFile := filepath.Join(dir, "hooks.log"), filepath.Join(dir, "slow-done")
	a := apptest.New(t, apptest.Options{NoService: true, Extra: "" +
		"  slow: {when: prepare, commands: ['echo slow >> " + log + "; for i in 1 2 3 4 5 6 7 8; do echo line $i; sleep 0.25; done; touch " + doneFile + "']}\n" +
		"  next: {when: prepare, commands: ['echo next >> " + log + "']}\n"})
	bin := apptest.DroverBinary(t)
	c := a.Repo.Head()
	id := release.NewID(time.Unix(1000, 0), c)
	base := func(op string) *node.Request {
		return &node.Request{Op: op, App: a.Config, Env: "test", Host: "local", Roles: []string{"web", "db"}, ID: id, Commit: c}
	}

	lockReq := base(node.OpLock)
	lockReq.Holder = &lock.Holder{Owner: "alice@laptop", PID: 4242, Lease: 5 * time.Second}
	ls := startSession(t, bin, lockReq)
	var held lock.Holder
	if err := json.Unmarshal(ls.next(t)["locked"], &held); err != nil || held.Token == 0 {
		t.Fatalf("no lock: %v", err)
	}
	prep := base(node.OpPrepare)
	prep.Token = held.Token
	ps := startSession(t, bin, prep)
	for {
		var ev release.Event
		m := ps.next(t)
		if m["event"] == nil {
			t.Fatalf("prepare ended before the slow hook: %s", m["result"])
		}
		if json.Unmarshal(m["event"], &ev) == nil && ev.Line == "line 1" {
			break
		}
	}
	// The deployer dies: every end it held closes.
	for _, s := range []*session{ls, ps} {
		s.stdin.Close()
		s.out.Close()
	}

	lk := &lock.File{Path: filepath.Join(a.DeployTo, ".drover", "lock")}
	waitFor(t, 30*time.Second, "the lock to be freed", func() bool {
		h, err := lk.Read()
		return err == nil && h == nil
	})
	if _, err := os.Stat(doneFile); err != nil {
		t.Fatalf("the lock was freed but the hook did not finish: %v", err)
	}
	select {
	case <-ps.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the detached prepare never ended")
	}
	resp := mustOK(t, &local.Conn{Binary: bin}, base(node.OpReleases))
	var rec *release.Record
	for _, r := range resp.Releases {
		if r.ID == id {
			rec = r
		}
	}
	if rec == nil {
		t.Fatalf("release %s not recorded: %+v", id, resp.Releases)
	}
	steps := map[string]bool{}
	for _, s := range rec.Steps {
		steps[s.Name] = s.OK
	}
	if !steps["hook:slow"] {
		t.Errorf("the finished hook is not recorded done: %+v", rec.Steps)
	}
	if b, _ := os.ReadFile(log); string(b) != "slow\n" {
		t.Errorf("after the deployer left, hooks ran: %q (want only the one in progress)", b)
	}

	// resume: the same prepare again continues after the recorded step.
	mustOK(t, &local.Conn{Binary: bin}, base(node.OpPrepare))
	if b, _ := os.ReadFile(log); string(b) != "slow\nnext\n" {
		t.Errorf("resume ran %q, want the next hook only", strings.TrimSpace(string(b)))
	}
}
