package rollout_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/drover/drover/internal/node"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/testenv/apptest"
	"github.com/drover/drover/internal/transport"
)

// inProcessConn serves node requests with a real node.Server in this
// process, each host with its own deploy root: many hosts at the cost of
// none, so `go test -race` sees the rollout's goroutines interleave.
type inProcessConn struct {
	root string
}

func (t *inProcessConn) Serve(ctx context.Context, stdin io.Reader, stdout io.Writer) error {
	br := bufio.NewReader(stdin)
	line, err := br.ReadBytes('\n')
	if err != nil {
		return err
	}
	var req node.Request
	if err := json.Unmarshal(line, &req); err != nil {
		return err
	}
	app := *req.App
	app.DeployTo = t.root
	req.App = &app
	if req.Op == node.OpLock {
		// A host far away: every lock request is on its way before the
		// first answer comes back, as over SSH.
		time.Sleep(20 * time.Millisecond)
	}
	out, _ := json.Marshal(&req)
	srv := &node.Server{Version: "test"}
	return srv.Serve(ctx, io.MultiReader(bytes.NewReader(append(out, '\n')), br), stdout)
}

// TestLockPhaseNoRace locks many hosts at once (prepare only, so the work
// after the lock phase is small). Under -race it failed before the lock
// phase's tokens were guarded by the run's own mutex.
func TestLockPhaseNoRace(t *testing.T) {
	const n = 12
	hosts := ""
	for i := range n {
		hosts += fmt.Sprintf("      - {name: h%d, transport: local, roles: [web]}\n", i)
	}
	a := apptest.New(t, apptest.Options{NoService: true, Hosts: hosts})
	env := a.Config.Environments["test"]
	var targets []rollout.Target
	for _, h := range env.Hosts {
		targets = append(targets, transport.NewNode(&inProcessConn{root: filepath.Join(t.TempDir(), h.Name)}, h))
	}
	f := &fleet{app: a, env: env}
	for round := range 3 {
		plan := f.plan(a.Repo.Head(), round+1)
		plan.PrepareOnly = true
		rep, err := rollout.Deploy(context.Background(), plan, targets, &nopObserver{})
		if err != nil || !rep.OK() {
			t.Fatalf("round %d: %v %+v", round, err, rep)
		}
	}
}
