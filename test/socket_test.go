//go:build integration

package test

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/drover/drover/internal/testenv/httpload"
)

// TestAllAtOnceNoBalancer: an all-at-once (two-phase) push deploy to 4
// hosts with no load balancer in front, under load on every host: with
// socket: true no request fails; with a plain restart some do, so the load
// can tell. The supervisor each host's drover starts outlives the SSH
// session that started it.
func TestAllAtOnceNoBalancer(t *testing.T) {
	for _, socket := range []bool{true, false} {
		t.Run(fmt.Sprintf("socket=%v", socket), func(t *testing.T) {
			p := newPush(t, appOptions{Hosts: 4, Socket: socket})
			p.mustDrover("deploy", env)
			sups := p.supervisors()
			if socket && slices.Contains(sups, 0) {
				t.Fatalf("supervisors after the first deploy: %v; want one running on every host", sups)
			}
			loads := p.loadEveryHost()
			p.commit("v2")
			rep, r := p.deployJSON()
			var sent, failed int64
			var first []string
			for i, l := range loads {
				l.Stop()
				sent, failed = sent+l.Sent(), failed+l.Failed()
				if errs := l.Errors(); len(errs) > 0 && first == nil {
					first = []string{p.names[i], errs[0]}
				}
			}
			t.Logf("deploy to 4 hosts under load: %d of %d requests failed (first: %v)", failed, sent, first)
			if r.code != 0 {
				t.Fatalf("deploy: %s", r)
			}
			p.wantServing(rep.Release)
			if after := p.supervisors(); socket && fmt.Sprint(after) != fmt.Sprint(sups) {
				t.Errorf("supervisors %v after the second deploy; want the first deploy's %v, still running", after, sups)
			}
			switch {
			case sent < 100:
				t.Errorf("the load sent only %d requests", sent)
			case socket && failed != 0:
				t.Errorf("socket: true: %d of %d requests failed (first: %v)", failed, sent, first)
			case !socket && failed == 0:
				t.Errorf("plain restarts lost no request of %d: the load cannot tell", sent)
			}
		})
	}
}

// supervisors returns the pid of each host's live web supervisor (0: none).
func (p *push) supervisors() []int {
	out := make([]int, len(p.fleet.Hosts))
	for i, h := range p.fleet.Hosts {
		data, err := os.ReadFile(h.Path(deployTo + "/shared/pids/web.supervisor.pid"))
		if err != nil {
			continue
		}
		pid, _ := strconv.Atoi(strings.SplitN(string(data), "\n", 2)[0])
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			out[i] = pid
		}
	}
	return out
}

// loadEveryHost starts a load on every host's web port from inside its
// namespace (SSH direct-tcpip): 2 workers per host, one over a kept-alive
// connection and one on a new connection each time; at most 50,000
// requests or 3 minutes per host.
func (p *push) loadEveryHost() []*httpload.Load {
	var loads []*httpload.Load
	for i := range p.fleet.Hosts {
		c := p.ssh(i)
		l := httpload.Start(httpload.Options{
			URL: fmt.Sprintf("http://127.0.0.1:%d/", webPort), Workers: 2, Max: 50_000, Limit: 3 * time.Minute,
			Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return c.DialContext(ctx, network, addr)
			},
		})
		p.t.Cleanup(func() { l.Stop(); c.Close() })
		loads = append(loads, l)
	}
	return loads
}
