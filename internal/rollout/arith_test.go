package rollout

import (
	"testing"

	"github.com/drover/drover/internal/config"
)

// TestRollingArithmetic: batch and min_healthy round a percent up and are
// never below 1; max_fail rounds down; min_healthy's percent is of the
// whole environment, the others of the hosts this rollout reaches.
func TestRollingArithmetic(t *testing.T) {
	amount := func(s string) config.Amount {
		a, err := config.ParseAmount(s)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	tests := []struct {
		hosts, fleet                 int
		batch, minHealthy, maxFail   string
		wantBatch, wantMin, wantFail int
	}{
		{4, 4, "1", "0", "0", 1, 1, 0},
		{4, 4, "2", "3", "1", 2, 3, 1},
		{4, 4, "25%", "50%", "25%", 1, 2, 1},
		{5, 5, "25%", "50%", "25%", 2, 3, 1},   // 1.25 → 2, 2.5 → 3, 1.25 → 1
		{7, 7, "10%", "60%", "10%", 1, 5, 0},   // 0.7 → 1, 4.2 → 5, 0.7 → 0
		{3, 3, "100%", "1%", "34%", 3, 1, 1},   // 3, 0.03 → 1, 1.02 → 1
		{10, 10, "30%", "75%", "19%", 3, 8, 1}, // 3, 7.5 → 8, 1.9 → 1
		{3, 3, "9", "0", "0", 3, 1, 0},         // a batch larger than the hosts is all of them
		{2, 6, "50%", "50%", "50%", 1, 3, 1},   // --host chose 2 of 6: min_healthy is of the 6
	}
	for _, tc := range tests {
		s := config.Strategy{Type: config.StrategyRolling, Batch: amount(tc.batch), MinHealthy: amount(tc.minHealthy), MaxFail: amount(tc.maxFail)}
		r := newRolling(&Plan{Fleet: tc.fleet}, s, tc.hosts)
		if r.batch != tc.wantBatch || r.minHealthy != tc.wantMin || r.maxFail != tc.wantFail {
			t.Errorf("%d hosts of %d, batch %s min_healthy %s max_fail %s: got batch %d min %d maxFail %d, want %d %d %d",
				tc.hosts, tc.fleet, tc.batch, tc.minHealthy, tc.maxFail, r.batch, r.minHealthy, r.maxFail, tc.wantBatch, tc.wantMin, tc.wantFail)
		}
		var got []int
		targets := make([]Target, tc.hosts)
		for _, b := range r.batches(targets) {
			got = append(got, len(b))
		}
		total := 0
		for i, n := range got {
			total += n
			if n > r.batch || (n < r.batch && i != len(got)-1) {
				t.Errorf("%d hosts, batch %d: batches %v", tc.hosts, r.batch, got)
			}
		}
		if total != tc.hosts {
			t.Errorf("%d hosts, batch %d: batches %v cover %d hosts", tc.hosts, r.batch, got, total)
		}
	}
}
