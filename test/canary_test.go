//go:build integration

package test

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"
)

// canaryLB is a canary of one host behind HAProxy that waits for an
// operator: no check.
const canaryLB = "{type: canary, batch: 1, min_healthy: 3}"

// startDeploy runs `drover deploy test` in the background; wait returns
// what it did once it ended. It is killed if the test ends first.
func (f *lbFleet) startDeploy(t *testing.T) (wait func() result) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	cmd := f.command(ctx, "deploy", env)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return func() result {
		<-done
		return result{code: cmd.ProcessState.ExitCode(), stdout: stdout.String(), stderr: stderr.String()}
	}
}

// waitPaused polls `drover releases` until it shows a paused canary and
// returns that line.
func (f *lbFleet) waitPaused(t *testing.T) string {
	t.Helper()
	var line string
	waitFor(t, 2*time.Minute, "drover releases to show the paused canary", func() bool {
		for _, l := range strings.Split(f.drover("releases", env).stdout, "\n") {
			if strings.HasPrefix(l, "canary of ") {
				line = l
				return true
			}
		}
		return false
	})
	return line
}

// TestCanaryPromoteBehindHAProxy: a canary deploy with no check pauses on
// h1 (holding the lock, saying so) until `drover promote` from another
// process; then every host serves v2, all enabled in HAProxy.
func TestCanaryPromoteBehindHAProxy(t *testing.T) {
	requireBalancerSupport(t)
	f := newLBFleet(t, lbOptions{})
	f.commitEnv("v2", canaryLB, true, nil)
	wait := f.startDeploy(t)
	if line := f.waitPaused(t); !strings.Contains(line, "paused on h1 since") || !strings.Contains(line, "drover promote test or drover abort test") {
		t.Errorf("drover releases says %q", line)
	}
	if got := f.currents(); got[0] == f.v1 || !slices.Equal(got[1:], []string{f.v1, f.v1, f.v1}) {
		t.Errorf("currents while paused %v: want h1 on the canary, the others on %s", got, f.v1)
	}
	if r := f.drover("promote", env); r.code != 0 {
		t.Fatalf("drover promote: %s", r)
	}
	r := wait()
	if r.code != 0 || !strings.Contains(r.out(), "promoted by ") {
		t.Fatalf("deploy after promote: %s", r)
	}
	f.wantServing(f.current(0))
	f.waitAllServing(t)
}

// TestCanaryAbortBehindHAProxy: `drover abort` while the canary is paused
// puts h1 back on v1, enabled in HAProxy; no other host moved; the deploy
// exits non-zero naming who aborted.
func TestCanaryAbortBehindHAProxy(t *testing.T) {
	requireBalancerSupport(t)
	f := newLBFleet(t, lbOptions{})
	f.commitEnv("v2", canaryLB, true, nil)
	wait := f.startDeploy(t)
	f.waitPaused(t)
	if r := f.drover("abort", env); r.code != 0 {
		t.Fatalf("drover abort: %s", r)
	}
	r := wait()
	if r.code == 0 || !strings.Contains(r.out(), "canary aborted by ") {
		t.Fatalf("deploy after abort: %s", r)
	}
	f.wantServing(f.v1)
	f.waitAllServing(t)
	f.wantAnswers(t, f.v1)
	if r := f.drover("promote", env); r.code != 2 {
		t.Errorf("promote after the rollout ended: %s", r)
	}
}
