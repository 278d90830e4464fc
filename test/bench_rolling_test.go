//go:build integration

package test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"
)

// benchMinHealthyTime is how long the rolling benchmark's nodes must stay
// healthy before they are re-enabled (strategy.min_healthy_time).
const benchMinHealthyTime = 500 * time.Millisecond

// BenchmarkRollingBehindHAProxy measures a rolling v(n)→v(n+1) deploy,
// batch 1, behind a real HAProxy under an open-loop load of 100
// requests a second, on 4 and 8 hosts. It reports the median wall time
// of the deploy, the waits the configuration imposes on it (per node:
// min_healthy_time; a drained node is never DOWN in HAProxy's checks, so
// rise × inter does not apply), wall time less those waits per node
// (drover's own cost per node with the app's restart, prepare included),
// and the requests failed of all sent. It skips
// while the drover binary refuses load_balancer.
func BenchmarkRollingBehindHAProxy(b *testing.B) {
	for _, n := range []int{4, 8} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			requireBalancerSupport(b)
			f := newLBFleet(b, lbOptions{Hosts: n})
			strategy := fmt.Sprintf("{type: rolling, batch: 1, min_healthy: %d, min_healthy_time: %s}", n-1, benchMinHealthyTime)
			// The first deploy naming the balancer is setup, not measured.
			f.commitEnv("adopt haproxy", strategy, true, nil)
			if _, r := f.deployJSON(); r.code != 0 {
				b.Fatalf("rolling deploy: %s", r)
			}
			// A drained node stays UP in HAProxy's checks (drain is not
			// down), so the only wait the configuration imposes per node
			// is min_healthy_time.
			waits := time.Duration(n) * benchMinHealthyTime
			var walls []time.Duration
			failed, total, retries := 0, 0, 0
			i := 0
			for b.Loop() {
				i++
				b.StopTimer()
				f.commitEnv(fmt.Sprintf("bench %d", i), strategy, true, nil)
				b.StartTimer()
				u := f.deployUnderLoad(b, fmt.Sprintf("rolling deploy %d to %d hosts", i, n))
				if u.run.code != 0 {
					b.Fatalf("rolling deploy: %s", u.run)
				}
				walls = append(walls, u.run.elapsed)
				failed += u.load.Failed()
				total += u.load.Total
				retries += u.retries
			}
			wall := median(walls)
			b.ReportMetric(wall.Seconds(), "s/deploy")
			b.ReportMetric(waits.Seconds(), "configured-waits-s")
			b.ReportMetric(float64((wall-waits).Milliseconds())/float64(n), "overhead-ms/node")
			b.ReportMetric(float64(failed), "failed-requests")
			b.ReportMetric(float64(total), "total-requests")
			b.ReportMetric(float64(retries), "haproxy-retries")
		})
	}
}

// BenchmarkAllAtOnceWindow measures an all-at-once (two-phase) deploy of
// the example app with its web service on 4 and 16 hosts: the median
// activation window drover reports (-o json activation_window: the first
// host's switch to the last host active), the median wall time, and the
// slowest host's prepare in the same deploys, to set the wall time
// against.
func BenchmarkAllAtOnceWindow(b *testing.B) {
	for _, n := range []int{4, 16} {
		b.Run(fmt.Sprintf("hosts=%d", n), func(b *testing.B) {
			p := newPush(b, appOptions{Hosts: n, Strategy: "all-at-once"})
			p.mustDrover("deploy", env) // setup: copies drover, clones the repository
			var windows, walls, prepares []time.Duration
			i := 0
			for b.Loop() {
				i++
				b.StopTimer()
				p.commit(fmt.Sprintf("bench %d", i))
				b.StartTimer()
				r := p.mustDrover("deploy", env, "-o", "json")
				window, slowest := activationFigures(b, r)
				windows = append(windows, window)
				walls = append(walls, r.elapsed)
				prepares = append(prepares, slowest)
			}
			b.ReportMetric(float64(median(windows).Microseconds())/1000, "window-ms")
			b.ReportMetric(median(walls).Seconds(), "s/deploy")
			b.ReportMetric(median(prepares).Seconds(), "slowest-prepare-s")
			b.ReportMetric(median(walls).Seconds()/median(prepares).Seconds(), "wall/slowest-prepare")
		})
	}
}

// activationFigures reads the activation window and the slowest host's
// prepare from a deploy's -o json report.
func activationFigures(b *testing.B, r result) (window, slowest time.Duration) {
	b.Helper()
	var rep struct {
		Window json.RawMessage `json:"activation_window"`
		Hosts  []struct {
			Prepare json.RawMessage `json:"prepare"`
		} `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		b.Fatalf("deploy -o json: %v\n%s", err, r)
	}
	window = jsonDuration(b, "activation_window", rep.Window)
	for _, h := range rep.Hosts {
		slowest = max(slowest, jsonDuration(b, "prepare", h.Prepare))
	}
	return window, slowest
}

// jsonDuration decodes a duration as a number of nanoseconds (Go's
// time.Duration) or a string ("1.5s").
func jsonDuration(b *testing.B, field string, raw json.RawMessage) time.Duration {
	b.Helper()
	if ns, err := strconv.ParseInt(string(raw), 10, 64); err == nil {
		return time.Duration(ns)
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		if d, err := time.ParseDuration(s); err == nil {
			return d
		}
	}
	b.Fatalf("deploy -o json: %s is %s, want nanoseconds or a duration string", field, raw)
	return 0
}
