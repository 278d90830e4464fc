//go:build integration

package test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestInterruptDuringHealthCheck: Ctrl-C while every host waits for the
// new release's health check leaves every host serving the release it ran
// before, restarted and healthy, and the summary says so per host.
func TestInterruptDuringHealthCheck(t *testing.T) {
	// A release holding HANG starts a server that stays up, never listens,
	// and says on which host it started.
	hang := `if [ -f HANG ]; then printf '#!/bin/sh\necho up > @SHARED@/hang-$DROVER_HOST\nexec sleep 300\n' > bin/hello; fi`
	interruptWhileHealthWaits(t, appOptions{Prepare: []string{hang}}, 90*time.Second)
}

// TestInterruptWithSlowRevert: Ctrl-C while the new release waits for
// health, where switching back takes longer than the transport's kill
// grace (the new process ignores SIGTERM and gets its whole stop_grace).
// The deployer must never kill `drover node serve` mid-revert (a SIGKILL
// there leaves the host with nothing listening) and must wait for the
// hosts' answers, so the summary says what each host serves.
func TestInterruptWithSlowRevert(t *testing.T) {
	hang := `if [ -f HANG ]; then printf '#!/bin/sh\ntrap "" TERM\necho up > @SHARED@/hang-$DROVER_HOST\nexec sleep 300\n' > bin/hello; fi`
	interruptWhileHealthWaits(t, appOptions{Hosts: 2, Prepare: []string{hang}, StopGrace: "12s"}, 150*time.Second)
}

// interruptWhileHealthWaits deploys a first release, then one whose
// process never listens (HANG), sends the deployer SIGINT once it started
// on every host, and checks that it exits within exitWithin, non-zero,
// with every host serving the first release and the summary saying so.
func interruptWhileHealthWaits(t *testing.T, o appOptions, exitWithin time.Duration) {
	t.Helper()
	p := newPush(t, o)
	first, r := p.deployJSON()
	if r.code != 0 {
		t.Fatal(r)
	}
	p.repo.Commit("hangs", map[string]string{"HANG": "yes"})
	ctx, cancel := context.WithTimeout(context.Background(), exitWithin+time.Minute)
	defer cancel()
	d := p.command(ctx, "deploy", env)
	var out bytes.Buffer
	d.Stdout, d.Stderr = &out, &out
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- d.Wait() }()
	waitFor(t, 60*time.Second, "the new release to start on every host", func() bool {
		for _, n := range p.names {
			if _, err := os.Stat(filepath.Join(p.shared, "hang-"+n)); err != nil {
				return false
			}
		}
		return true
	})
	if err := d.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(exitWithin):
		t.Fatalf("drover did not exit within %s of Ctrl-C:\n%s", exitWithin, out.String())
	}
	t.Logf("interrupted deploy:\n%s", out.String())
	if d.ProcessState.ExitCode() == 0 {
		t.Errorf("an interrupted deploy exited 0")
	}
	p.wantServing(first.Release)
	for _, n := range p.names {
		if !strings.Contains(out.String(), n+" serves "+first.Release+" (healthy)") {
			t.Errorf("the summary does not say %s serves %s (healthy)", n, first.Release)
		}
	}
}
