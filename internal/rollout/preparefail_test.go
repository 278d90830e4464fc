package rollout_test

import (
	"context"
	"strings"
	"testing"
)

// TestRollingGoesOnPastPrepareFailuresWithinMaxFail: in a rolling (or
// serial, or canary) rollout a host that fails to prepare is a failed
// host like any other, counted against max_fail over the whole rollout:
// within it the other hosts roll on and the report is OK and names it;
// past it no host activates. all-at-once never goes on (its barrier needs
// every host).
func TestRollingGoesOnPastPrepareFailuresWithinMaxFail(t *testing.T) {
	for _, tc := range []struct {
		name, strategy string
		fail           []int
		wantOK         bool
		want           string
	}{
		{"rolling within", "{type: rolling, batch: 1, max_fail: 1}", []int{2}, true, "h1=R2 h2=R2 h3=R1 h4=R2"},
		{"serial within", "{type: serial, max_fail: 1}", []int{1}, true, "h1=R2 h2=R1 h3=R2 h4=R2"},
		{"canary within", "{type: canary, batch: 1, max_fail: 1}", []int{3}, true, "h1=R2 h2=R2 h3=R2 h4=R1"},
		{"rolling past", "{type: rolling, batch: 1, max_fail: 1}", []int{1, 2}, false, "h1=R1 h2=R1 h3=R1 h4=R1"},
		{"rolling max_fail 0", "{type: rolling, batch: 1}", []int{2}, false, "h1=R1 h2=R1 h3=R1 h4=R1"},
		{"all-at-once", "{type: all-at-once}", []int{2}, false, "h1=R1 h2=R1 h3=R1 h4=R1"},
		{"the only db host", "{type: rolling, batch: 1, max_fail: 1}", []int{0}, false, "h1=R1 h2=R1 h3=R1 h4=R1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newMemFleet(t, 4, tc.strategy)
			for _, i := range tc.fail {
				f.hosts[i].FailPrepare = "disk full"
			}
			if strings.Contains(tc.strategy, "canary") {
				f.plan.Gate = gateFunc(func(context.Context, []string) error { return nil })
			}
			rep := f.deploy(t)
			if rep.OK() != tc.wantOK {
				t.Errorf("report OK %v (%q), want %v", rep.OK(), rep.Err, tc.wantOK)
			}
			if got := f.actives(); got != tc.want {
				t.Errorf("hosts run %s, want %s\n%s", got, tc.want, f.journal)
			}
			if tc.wantOK && !strings.Contains(strings.Join(rep.Notes, "\n"), "failed to prepare") {
				t.Errorf("notes %q do not name the host that failed to prepare", rep.Notes)
			}
			if got := f.journal.Matching("hook migrate"); tc.wantOK && len(got) != 1 || !tc.wantOK && len(got) != 0 {
				t.Errorf("migrate ran %v", got)
			}
		})
	}
}
