//go:build integration

package test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/apptest"
)

// TestCancelKeepsAppServing: Ctrl-C while after_activate hooks run, in the
// SSH session that just started the app, stops the hook but never the app.
// drover stops a cancelled session by killing every process carrying its
// DROVER_RUN_ID; the app must not carry it.
func TestCancelKeepsAppServing(t *testing.T) {
	hook := `  after_activate: ["touch @SHARED@/hook-$DROVER_RELEASE; i=0; while [ ! -f @SHARED@/go ] && [ $i -lt 600 ]; do i=$((i+1)); sleep 0.1; done"]` + "\n"
	p := newPush(t, appOptions{Hosts: 1, Hooks: hook})
	t.Cleanup(func() { stopApp(p, 0) })
	goFile := filepath.Join(p.shared, "go")
	writeFile(t, goFile, "")
	first, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	p.wantServing(first.Release)
	removeFile(t, goFile)

	p.commit("v2")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d := p.command(ctx, "deploy", env)
	var out bytes.Buffer
	d.Stdout, d.Stderr = &out, &out
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = d.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = d.Process.Kill()
		<-done
	})
	waitFor(t, 90*time.Second, "the deploy to reach its after_activate hook", func() bool {
		m, _ := filepath.Glob(filepath.Join(p.shared, "hook-*"))
		for _, f := range m {
			if !strings.HasSuffix(f, "hook-"+first.Release) {
				return true
			}
		}
		return false
	})
	if err := d.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("drover did not exit after SIGINT:\n%s", out.String())
	}
	t.Logf("cancelled deploy:\n%s", out.String())
	// The app serves, and keeps serving for a second: a SIGTERM by run id
	// lands asynchronously, so one good answer alone would prove little.
	for i := 0; i < 10; i++ {
		if body, err := p.get(0, webPort, "/"); err != nil {
			t.Fatalf("after the cancel the app does not serve (check %d): %v %s", i, err, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stopApp kills the processes host i's PID files name, as a crash would.
func stopApp(p *push, i int) {
	apptest.StopPIDs(p.fleet.Hosts[i].Path(deployTo + "/shared/pids"))
}
