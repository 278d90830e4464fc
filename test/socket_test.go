//go:build integration

package test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
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
			l := p.loadEveryHost()
			p.commit("v2")
			rep, r := p.deployJSON()
			sent, failed, first := l.stop()
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

// hostLoad sends requests to every host's web port from inside its
// namespace (SSH direct-tcpip), two workers per host, one over a kept-alive
// connection and one on a new connection each time; at most 50,000
// requests or 3 minutes.
type hostLoad struct {
	sent, failed atomic.Int64
	mu           sync.Mutex
	first        error
	cancel       context.CancelFunc
	wg           sync.WaitGroup
}

func (p *push) loadEveryHost() *hostLoad {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	l := &hostLoad{cancel: cancel}
	for i := range p.fleet.Hosts {
		c := p.ssh(i)
		for w := range 2 {
			tr := &http.Transport{
				DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
					return c.DialContext(ctx, network, addr)
				},
				DisableKeepAlives: w == 1,
			}
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				defer tr.CloseIdleConnections()
				url := fmt.Sprintf("http://127.0.0.1:%d/", webPort)
				for ctx.Err() == nil && l.sent.Add(1) <= 50_000 {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
					resp, err := client.Do(req)
					if err == nil {
						_, err = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if err == nil && resp.StatusCode != http.StatusOK {
							err = fmt.Errorf("%s", resp.Status)
						}
					}
					switch {
					case err != nil && ctx.Err() != nil:
						l.sent.Add(-1) // cut short by stop
					case err != nil:
						l.failed.Add(1)
						l.mu.Lock()
						if l.first == nil {
							l.first = fmt.Errorf("%s: %w", p.names[i], err)
						}
						l.mu.Unlock()
					}
				}
			}()
		}
		p.t.Cleanup(func() { c.Close() })
	}
	p.t.Cleanup(func() { l.stop() })
	return l
}

func (l *hostLoad) stop() (sent, failed int64, first error) {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return min(l.sent.Load(), 50_000), l.failed.Load(), l.first
}
