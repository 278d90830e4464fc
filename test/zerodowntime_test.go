//go:build integration

package test

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/haproxytest"
)

// Zero-downtime tests: four hosts behind a real HAProxy, load through it
// for the whole deploy (see lbfleet_test.go). The app takes a second to
// boot, as real ones do (longer, mostly).

// appBoot is the example app's boot time in these tests.
const appBoot = time.Second

// TestTwoPhaseBehindHAProxyLosesRequests proves the harness can fail: a
// two-phase deploy names no load balancer, so it restarts every host's app
// at once while HAProxy still sends them requests, and the load through
// HAProxy sees failures. Afterwards every answer comes from the new release.
func TestTwoPhaseBehindHAProxyLosesRequests(t *testing.T) {
	f := newLBFleet(t, lbOptions{Boot: appBoot})
	// One restart of every app loses requests; should HAProxy's retries
	// hide every failure of one, restart again, up to three deploys.
	var last string
	lost := 0
	for i := 2; i <= 4 && lost == 0; i++ {
		f.commit(fmt.Sprintf("v%d", i))
		u := f.deployUnderLoad(t, fmt.Sprintf("two-phase deploy %d", i-1))
		if u.run.code != 0 {
			t.Fatalf("two-phase deploy v%d: %s", i, u.run)
		}
		last, lost = u.rep.Release, u.load.Failed()
		f.waitAllServing(t)
	}
	if lost == 0 {
		t.Errorf("three two-phase deploys behind haproxy lost no request: the harness cannot tell a zero-downtime rollout from a naive one")
	}
	f.wantServing(last)
	f.wantAnswers(t, last)
}

// TestSerialWithoutDrainFailsTheNoLossCheck: the same one-host-at-a-time
// deploy as rolling, batch 1, but with no load balancer named, so no drain
// (today's serial strategy): HAProxy keeps sending requests to each host
// while it restarts. Its retries and redispatches may hide the failures
// from the load, but not from its own counters: the check the rolling
// tests make (wantNoLoss) must fail.
func TestSerialWithoutDrainFailsTheNoLossCheck(t *testing.T) {
	f := newLBFleet(t, lbOptions{Boot: appBoot})
	f.commitEnv("v2", "{type: serial}", false, nil)
	u := f.deployUnderLoad(t, "the serial deploy without drain")
	if u.run.code != 0 {
		t.Fatalf("serial deploy: %s", u.run)
	}
	if u.load.Failed() == 0 && u.retries == 0 {
		t.Errorf("a serial deploy without drain behind haproxy neither lost a request nor made haproxy retry one: the rolling tests' check cannot fail: %s", u.load)
	}
	f.wantServing(u.rep.Release)
	f.wantAnswers(t, u.rep.Release)
}

// TestSerialWithHookDrainsLosesNothing calibrates the no-loss check the
// other way: the same serial deploy, with before_activate and
// after_activate hooks that drain the host in HAProxy, wait until its
// sessions reach zero, and after the restart set it ready and wait until
// HAProxy reports it UP (what a team does by hand today), passes it: no
// failure, no HAProxy retry.
func TestSerialWithHookDrainsLosesNothing(t *testing.T) {
	if _, err := exec.LookPath("socat"); err != nil {
		t.Skipf("socat not installed (make deps installs it): %v", err)
	}
	f := newLBFleet(t, lbOptions{Boot: appBoot})
	api := func(cmd string) string { return fmt.Sprintf(`echo "%s" | socat - UNIX-CONNECT:%s`, cmd, f.socket) }
	// "STATUS SESSIONS" of this host's server in show stat.
	state := api("show stat") + ` | awk -F, -v s="$DROVER_HOST" '$1=="` + lbBackend + `" && $2==s {print $18, $5}'`
	until := func(cond string) string {
		return `i=0; until ` + cond + `; do i=$((i+1)); if [ $i -gt 400 ]; then echo "haproxy: $(` + state + `)" >&2; exit 9; fi; sleep 0.05; done`
	}
	hooks := fmt.Sprintf("  before_activate: %s\n  after_activate: %s\n",
		yamlList([]string{api("set server " + lbBackend + "/$DROVER_HOST state drain"), until(`[ "$(` + state + `)" = "DRAIN 0" ]`)}),
		yamlList([]string{api("set server " + lbBackend + "/$DROVER_HOST state ready"), until(`[ "$(` + state + ` | cut -d' ' -f1)" = UP ]`)}))
	y := f.repo.Git("show", "HEAD:drover.yml")
	if !strings.Contains(y, "\nservices:\n") {
		t.Fatalf("drover.yml has no services: to add hooks before:\n%s", y)
	}
	y = strings.Replace(y, "\nservices:\n", "\n"+hooks+"services:\n", 1)
	f.repo.Commit("hooks drain", map[string]string{"drover.yml": y})
	f.commitEnv("v2", "{type: serial}", false, nil)

	u := f.deployUnderLoad(t, "the serial deploy with drain hooks")
	if u.run.code != 0 {
		t.Fatalf("serial deploy with drain hooks: %s", u.run)
	}
	wantNoLoss(t, "the serial deploy with drain hooks", u)
	f.wantServing(u.rep.Release)
	f.wantAnswers(t, u.rep.Release)
}

// rollingLB is the agreed rolling strategy of the zero-downtime tests.
const rollingLB = "{type: rolling, batch: 1, min_healthy: 3}"

// TestRollingBehindHAProxyLosesNothing: a rolling deploy v1→v2 that drains
// each host from HAProxy before restarting it loses no request, gets no
// non-2xx answer and makes HAProxy retry no connection; afterwards every
// answer comes from v2 and HAProxy sends requests to every host again.
func TestRollingBehindHAProxyLosesNothing(t *testing.T) {
	requireBalancerSupport(t)
	f := newLBFleet(t, lbOptions{Boot: appBoot})
	f.commitEnv("v2", rollingLB, true, nil)
	u := f.deployUnderLoad(t, "the rolling deploy")
	if u.run.code != 0 {
		t.Fatalf("rolling deploy: %s", u.run)
	}
	wantNoLoss(t, "the rolling deploy", u)
	if u.load.Releases[f.v1] == 0 || u.load.Releases[u.rep.Release] == 0 {
		t.Errorf("the load saw releases %v, want both %s and %s: it did not span the deploy", u.load.Releases, f.v1, u.rep.Release)
	}
	f.wantServing(u.rep.Release)
	f.waitAllServing(t)
	f.wantAnswers(t, u.rep.Release)
}

// TestRollingRefusesBelowMinHealthy: with h4 already DOWN in HAProxy (its
// app stopped), a rolling deploy with min_healthy 3 of 4 refuses to drain
// any serving host, says why, and moves none of them; with min_healthy 2
// it proceeds, the site stays up, and every host ends on the new release.
func TestRollingRefusesBelowMinHealthy(t *testing.T) {
	requireBalancerSupport(t)
	f := newLBFleet(t, lbOptions{Boot: appBoot})
	stopApp(f.push, 3)
	f.hap.WaitServers(t, 10*time.Second, "h4 DOWN in haproxy and the others UP", func(s haproxytest.Stat) bool {
		if s.Name == "h4" {
			return strings.HasPrefix(s.Status, "DOWN")
		}
		return s.Serving()
	})

	f.commitEnv("v2", "{type: rolling, batch: 1, min_healthy: 3}", true, nil)
	u := f.deployUnderLoad(t, "the rolling deploy with min_healthy 3")
	if u.run.code == 0 {
		t.Fatalf("rolling deploy with min_healthy 3 and one of 4 hosts down succeeded: %s", u.run)
	}
	if !strings.Contains(u.run.out(), "min_healthy") {
		t.Errorf("refusal does not say min_healthy stopped it: %s", u.run)
	}
	for i := range 3 {
		if got := f.current(i); got != f.v1 {
			t.Errorf("%s: current %s, want %s: a serving host moved although min_healthy forbade draining it", f.names[i], got, f.v1)
		}
	}
	wantNoLoss(t, "the refused deploy", u)
	for name, s := range f.hap.Stats(t) {
		if name != "h4" && !s.Serving() {
			t.Errorf("haproxy: %s is %s (weight %d) after the refused deploy, want it serving", name, s.Status, s.Weight)
		}
	}

	f.commitEnv("v3", "{type: rolling, batch: 1, min_healthy: 2}", true, nil)
	u = f.deployUnderLoad(t, "the rolling deploy with min_healthy 2")
	if u.run.code != 0 {
		t.Fatalf("rolling deploy with min_healthy 2: %s", u.run)
	}
	wantNoLoss(t, "the rolling deploy with min_healthy 2 and h4 down", u)
	f.wantServing(u.rep.Release)
	f.waitAllServing(t)
	f.wantAnswers(t, u.rep.Release)
}

// TestRollingHealthFailureOnNode2: a release whose app fails its health
// check on h2 only. h1 moves; h2 goes back to the previous release and is
// re-enabled; the rollout stops there; HAProxy ends with every host enabled
// and serving, and the site never failed a request. With
// rollback_on_failure h1 goes back too.
func TestRollingHealthFailureOnNode2(t *testing.T) {
	requireBalancerSupport(t)
	// A release holding BREAK_H2 gets, on h2 only, an app that exits at once.
	f := newLBFleet(t, lbOptions{Boot: appBoot, Prepare: []string{`if [ -f BREAK_H2 ] && [ "$DROVER_HOST" = h2 ]; then printf '#!/bin/sh\nexit 3\n' > bin/hello; fi`}})
	f.commitEnv("v2", rollingLB, true, map[string]string{"BREAK_H2": ""})
	u := f.deployUnderLoad(t, "the rolling deploy that fails on h2")
	if u.run.code == 0 {
		t.Fatalf("rolling deploy whose app fails on h2 succeeded: %s", u.run)
	}
	v2 := u.rep.Release
	if got, want := f.currents(), []string{v2, f.v1, f.v1, f.v1}; !slices.Equal(got, want) {
		t.Errorf("currents %v, want h1 on %s, h2 (rolled back), h3 and h4 (not reached) on %s", got, v2, f.v1)
	}
	wantNoLoss(t, "the rolling deploy that fails on h2", u)
	f.waitAllServing(t)
	f.wantAnswers(t, f.v1, v2)

	// Again with rollback_on_failure: h1 goes back (to v2) as well.
	f.commitEnv("v3", "{type: rolling, batch: 1, min_healthy: 3, rollback_on_failure: true}", true, map[string]string{"BREAK_H2": ""})
	u = f.deployUnderLoad(t, "the rolling deploy with rollback_on_failure")
	if u.run.code == 0 {
		t.Fatalf("rolling deploy whose app fails on h2 succeeded: %s", u.run)
	}
	if got, want := f.currents(), []string{v2, f.v1, f.v1, f.v1}; !slices.Equal(got, want) {
		t.Errorf("currents %v after rollback_on_failure, want every host back where it was: h1 on %s, the others on %s", got, v2, f.v1)
	}
	wantNoLoss(t, "the rolling deploy with rollback_on_failure", u)
	f.waitAllServing(t)
	f.wantAnswers(t, f.v1, v2)
}
