//go:build integration

package test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/apptest"
)

// BenchmarkAllAtOnceNoBalancer: an all-at-once deploy of a new commit to 4
// namespace hosts with no load balancer in front, a bounded load on every
// host (loadEveryHost) from just before the deploy until every host answers
// again after it. Each iteration does it three times on fresh fleets, in
// the same run: drover with `socket: true`, drover with a plain restart,
// and Capistrano 3 (bench/capistrano: the stock git deploy and a parallel
// pid-file restart), and reports the failed share of requests of each and
// the ratios socket/plain and socket/capistrano, and how long the load ran
// (the deploy plus the wait for every host). The timer is stopped: ns/op
// means nothing here. Capistrano comes from
// scripts/bench-deps.sh; without `cap` its part is skipped.
func BenchmarkAllAtOnceNoBalancer(b *testing.B) {
	kinds := []string{"socket", "plain", "capistrano"}
	if _, err := exec.LookPath("cap"); err != nil {
		b.Logf("no cap (scripts/bench-deps.sh installs it): Capistrano not measured")
		kinds = kinds[:2]
	}
	failed := map[string]int64{}
	sent := map[string]int64{}
	window := map[string]time.Duration{}
	for b.Loop() {
		for _, k := range kinds {
			f, s, w := allAtOnceUnderLoad(b, k)
			failed[k] += f
			sent[k] += s
			window[k] += w
		}
	}
	pct := func(k string) float64 { return 100 * float64(failed[k]) / float64(max(sent[k], 1)) }
	for _, k := range kinds {
		b.ReportMetric(pct(k), k+"-failed-%")
		b.ReportMetric(float64(sent[k])/float64(b.N), k+"-requests/op")
		b.ReportMetric(window[k].Seconds()/float64(b.N), k+"-load-s/op")
	}
	if pct("plain") > 0 {
		b.ReportMetric(pct("socket")/pct("plain"), "socket/plain")
	}
	if pct("capistrano") > 0 {
		b.ReportMetric(pct("socket")/pct("capistrano"), "socket/capistrano")
		b.ReportMetric(pct("plain")/pct("capistrano"), "plain/capistrano")
	}
}

// allAtOnceUnderLoad deploys v1 to a fresh 4-host fleet the way kind says
// (socket, plain or capistrano), starts the load on every host, deploys v2
// and keeps the load on until every host answers again; it returns the
// failed and sent requests of the v2 deploy and how long the load ran.
func allAtOnceUnderLoad(b *testing.B, kind string) (failed, sent int64, window time.Duration) {
	b.StopTimer()
	defer b.StartTimer()
	p := newPush(b, appOptions{Hosts: 4, Socket: kind == "socket"})
	deploy := func() {
		if kind == "capistrano" {
			p.capDeploy()
			return
		}
		if _, r := p.deployJSON(); r.code != 0 {
			b.Fatalf("%s deploy: %s", kind, r)
		}
	}
	if kind == "capistrano" {
		b.Cleanup(p.capStop)
	}
	deploy()
	p.waitAnswering(kind)
	began := time.Now()
	loads := p.loadEveryHost()
	p.commit("v2")
	deploy()
	p.waitAnswering(kind)
	var first string
	for i, l := range loads {
		l.Stop()
		window = max(window, time.Since(began))
		sent, failed = sent+l.Sent(), failed+l.Failed()
		if errs := l.Errors(); len(errs) > 0 && first == "" {
			first = p.names[i] + ": " + errs[0]
		}
	}
	b.Logf("%s: %d of %d requests failed in %v (first: %s)", kind, failed, sent, window.Round(time.Millisecond), first)
	if sent < 100 {
		b.Fatalf("%s: the load sent only %d requests", kind, sent)
	}
	return failed, sent, window
}

// waitAnswering waits until the app answers on every host.
func (p *push) waitAnswering(kind string) {
	for i := range p.fleet.Hosts {
		waitFor(p.t, 30*time.Second, kind+": the app answering on "+p.names[i], func() bool {
			_, err := p.get(i, webPort, "/healthz")
			return err == nil
		})
	}
}

// capDeploy runs `cap production deploy` from bench/capistrano against the
// fleet, with the fleet's key and known_hosts, the push's repository and
// the example app's binary.
func (p *push) capDeploy() {
	p.t.Helper()
	var hosts []string
	for _, h := range p.fleet.Hosts {
		hosts = append(hosts, h.Address())
	}
	dir, err := filepath.Abs("../bench/capistrano")
	if err != nil {
		p.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "cap", "production", "deploy")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"CAP_HOSTS="+strings.Join(hosts, " "), "CAP_USER="+p.fleet.User,
		"CAP_KEY="+p.fleet.KeyFile, "CAP_KNOWN_HOSTS="+p.known,
		"CAP_REPO="+p.repo.Dir, "CAP_DEPLOY_TO="+deployTo,
		"CAP_HELLO="+apptest.HelloBinary(p.t), "CAP_PORT="+strconv.Itoa(webPort),
		"CAP_LOG="+filepath.Join(p.shared, "capistrano.log"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(p.shared, "capistrano.log"))
		p.t.Fatalf("cap production deploy in %s: %v\n%s\nlog:\n%s", dir, err, out, log)
	}
}

// capStop stops the app Capistrano started on every host (its pid file).
func (p *push) capStop() {
	for _, h := range p.fleet.Hosts {
		data, err := os.ReadFile(h.Path(deployTo + "/shared/pids/hello.pid"))
		if err != nil {
			continue
		}
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(data))); pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
