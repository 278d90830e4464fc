package node_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover/drover/internal/lock"
	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/testenv/apptest"
)

// TestStalledDeployerDoesNotStallHook: a deployer whose connection stays
// open but reads nothing (a laptop shut with its TCP connection alive) must
// not stall the hook running on the host. Its output fills every buffer on
// the way; the host drops what it cannot send and the hook runs to its end.
func TestStalledDeployerDoesNotStallHook(t *testing.T) {
	if testing.Short() {
		t.Skip("builds drover")
	}
	dir := t.TempDir()
	doneFile := filepath.Join(dir, "loud-done")
	// About 8 MB of output, far more than a pipe or socket buffer holds.
	a := apptest.New(t, apptest.Options{NoService: true, Extra: "" +
		"  loud: {when: prepare, commands: ['i=0; while [ $i -lt 100000 ]; do echo \"line $i of a hook that talks a lot, padded to make it long enough\"; i=$((i+1)); done; touch " + doneFile + "']}\n"})
	bin := apptest.DroverBinary(t)
	c := a.Repo.Head()
	id := release.NewID(time.Unix(1000, 0), c)
	base := func(op string) *node.Request {
		return &node.Request{Op: op, App: a.Config, Env: "test", Host: "local", Roles: []string{"web", "db"}, ID: id, Commit: c}
	}
	lockReq := base(node.OpLock)
	lockReq.Holder = &lock.Holder{Owner: "alice@laptop", PID: 4242, Lease: time.Minute}
	ls := startSession(t, bin, lockReq)
	var held lock.Holder
	if err := json.Unmarshal(ls.next(t)["locked"], &held); err != nil || held.Token == 0 {
		t.Fatalf("no lock: %v", err)
	}
	prep := base(node.OpPrepare)
	prep.Token = held.Token
	ps := startSession(t, bin, prep)
	// Read nothing from ps: its stdout fills and stays full.
	waitFor(t, 60*time.Second, "the loud hook to finish although nobody reads its output", func() bool {
		_, err := os.Stat(doneFile)
		return err == nil
	})
	// Once read again, the session ends with a result.
	for {
		m := ps.next(t)
		if m["result"] != nil {
			var resp node.Response
			if err := json.Unmarshal(m["result"], &resp); err != nil || !resp.OK {
				t.Fatalf("prepare: %s", m["result"])
			}
			break
		}
	}
}
