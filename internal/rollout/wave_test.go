package rollout_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/drover/drover/internal/release"
	"github.com/drover/drover/internal/rollout"
	"github.com/drover/drover/internal/rollout/rollouttest"
)

// waveTarget records the Call.Wave of each operation asked of it.
type waveTarget struct {
	rollout.Target
	mu    *sync.Mutex
	waves map[string][]int // operation → waves seen
}

func (w *waveTarget) note(op string, c rollout.Call) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.waves[op] = append(w.waves[op], c.Wave)
}

func (w *waveTarget) Prepare(ctx context.Context, c rollout.Call, runOnce []string, keepFor time.Duration) (*release.Record, error) {
	w.note("prepare", c)
	return w.Target.Prepare(ctx, c, runOnce, keepFor)
}

func (w *waveTarget) Activate(ctx context.Context, c rollout.Call, keep int) (*release.Serving, error) {
	w.note("activate", c)
	return w.Target.Activate(ctx, c, keep)
}

// TestCallWave: operations started together on every host carry the size
// of their wave (a control server writes their tasks in one batch); with a
// parallelism limit, or one host at a time, the wave is not known (0).
func TestCallWave(t *testing.T) {
	for _, tc := range []struct {
		strategy  string
		parallel  int
		prepare   int // every prepare's wave
		activates map[int]int
	}{
		{strategy: "{type: all-at-once}", prepare: 4, activates: map[int]int{4: 4}},
		{strategy: "{type: all-at-once}", parallel: 2, prepare: 0, activates: map[int]int{4: 4}},
		{strategy: "{type: rolling, batch: 1}", prepare: 4, activates: map[int]int{0: 4}},
	} {
		f := newMemFleet(t, 4, tc.strategy)
		f.plan.Parallel = tc.parallel
		var mu sync.Mutex
		waves := map[string][]int{}
		var targets []rollout.Target
		for _, tg := range rollouttest.Targets(f.hosts) {
			targets = append(targets, &waveTarget{Target: tg, mu: &mu, waves: waves})
		}
		rep, err := rollout.Deploy(context.Background(), f.plan, targets, &nopObserver{})
		if err != nil || !rep.OK() {
			t.Fatalf("%s: deploy: %v %+v", tc.strategy, err, rep)
		}
		for _, w := range waves["prepare"] {
			if w != tc.prepare {
				t.Errorf("%s parallel %d: prepare waves %v, want all %d", tc.strategy, tc.parallel, waves["prepare"], tc.prepare)
				break
			}
		}
		got := map[int]int{}
		for _, w := range waves["activate"] {
			got[w]++
		}
		if len(got) != len(tc.activates) || got[4] != tc.activates[4] || got[0] != tc.activates[0] {
			t.Errorf("%s parallel %d: activate waves %v, want %v", tc.strategy, tc.parallel, waves["activate"], tc.activates)
		}
	}
}
