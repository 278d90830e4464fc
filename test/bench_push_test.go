//go:build integration

package test

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkPushDeploy measures a push deploy of a trivial app (no
// services, a prepare hook that does nothing) with the real binary, to 1
// host and to 8 hosts in the same run, each iteration deploying a new
// commit so a release is really made. It reports the median seconds per
// deploy for each, their ratio (target ≤ 1.5: hosts are driven in
// parallel), drover's cost per extra host, (t8 - t1) / 7, and the
// deployer process's own CPU time per host.
func BenchmarkPushDeploy(b *testing.B) {
	fleets := map[int]*push{}
	for _, n := range []int{1, 8} {
		p := newPush(b, appOptions{Hosts: n, NoService: true, NoHello: true})
		// The first deploy copies drover to each host and clones the
		// repository there; that is setup, not what is measured.
		p.mustDrover("deploy", env)
		fleets[n] = p
	}
	var t1, t8, c1, c8, m1s, m8s []time.Duration
	i := 0
	for b.Loop() {
		i++
		for _, n := range []int{1, 8} {
			p := fleets[n]
			b.StopTimer()
			p.commit(fmt.Sprintf("bench %d", i))
			b.StartTimer()
			busy := machineBusy(b)
			r := p.mustDrover("deploy", env)
			busy = machineBusy(b) - busy
			if n == 1 {
				t1, c1, m1s = append(t1, r.elapsed), append(c1, r.cpu), append(m1s, busy)
			} else {
				t8, c8, m8s = append(t8, r.elapsed), append(c8, r.cpu), append(m8s, busy)
			}
		}
	}
	m1, m8 := median(t1), median(t8)
	b.ReportMetric(m1.Seconds(), "s/deploy-1host")
	b.ReportMetric(m8.Seconds(), "s/deploy-8hosts")
	b.ReportMetric(m8.Seconds()/m1.Seconds(), "ratio-8/1")
	b.ReportMetric((m8-m1).Seconds()/7*1000, "ms/extra-host")
	// The deployer's own CPU per host: what drover costs on the machine
	// that deploys, apart from the hosts' work (which, here, shares the
	// same two cores as the deployer and every other host).
	b.ReportMetric(float64(median(c1).Milliseconds()), "deployer-cpu-ms-1host")
	b.ReportMetric(float64(median(c8).Milliseconds())/8, "deployer-cpu-ms/host-8hosts")
	// The whole machine's busy CPU per deploy (deployer, sshd, git and drover
	// on every host): when it approaches cores × wall time, the 8-host run is
	// bound by this machine's CPUs, not by drover driving hosts one by one.
	b.ReportMetric(float64(median(m1s).Milliseconds()), "machine-cpu-ms-1host")
	b.ReportMetric(float64(median(m8s).Milliseconds()), "machine-cpu-ms-8hosts")
	b.ReportMetric(median(m8s).Seconds()/(float64(runtime.NumCPU())*m8.Seconds()), "cpu-saturation-8hosts")
}

// machineBusy is the CPU time the whole machine spent busy since boot: the
// cpu line of /proc/stat less idle and iowait.
func machineBusy(tb testing.TB) time.Duration {
	tb.Helper()
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		tb.Fatal(err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	var ticks int64
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		if i != 3 && i != 4 && i < 8 {
			ticks += v
		}
	}
	return time.Duration(ticks) * 10 * time.Millisecond // USER_HZ is 100 on Linux
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
